"""``vai_cohort_events_total``: accepted events per model and cohort value, each model's values bounded."""

from __future__ import annotations

from monitors.cohorts import CohortGuard
from service.metrics import IngestMetrics
from service.schemas import EventIn


class CohortCounts:
    """Counts a request's events per (model, cohort key, value) for the allowlisted keys (``VAI_COHORT_KEYS``).

    The values are bounded per model and key by the monitor's own rule, :class:`monitors.cohorts.CohortGuard`
    (``VAI_MAX_COHORT_VALUES``, later ones as ``__other__``). Models are the sidecar's known ones (bounded by
    ``VAI_MAX_MODELS``) by the time their events are counted.
    """

    def __init__(self, metrics: IngestMetrics, guard: CohortGuard) -> None:
        self._metrics = metrics
        self._guard = guard

    def count(self, events: list[EventIn]) -> None:
        if not self._guard.keys:
            return
        cohorts: dict[tuple[str, str, str], int] = {}
        for event in events:
            if event.cohort:
                for key, value in self._guard.values(event.model, event.cohort):
                    labels = (event.model, key, value)
                    cohorts[labels] = cohorts.get(labels, 0) + 1
        for labels, count in cohorts.items():
            self._metrics.child(self._metrics.cohort_events, *labels).inc(count)
