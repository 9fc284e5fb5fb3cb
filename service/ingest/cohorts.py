"""``vai_cohort_events_total``: accepted events per model and cohort value, each model's values bounded."""

from __future__ import annotations

from common.cardinality import OTHER
from monitors.cohorts import CohortGuard
from service.events.schemas import EventIn
from service.metrics import IngestMetrics


class CohortCounts:
    """Counts a request's events per (model, cohort key, value) for the allowlisted keys (``VAI_COHORT_KEYS``).

    The values are bounded per model and key by the monitor's own rule, :class:`monitors.cohorts.CohortGuard`
    (``VAI_MAX_COHORT_VALUES``, later ones as ``__other__``). Models are the sidecar's known ones (bounded by
    ``VAI_MAX_MODELS``) by the time their events are counted.

    With a fleet guard (the sidecar's), the admitted values are the fleet's (``monitors.cohort_admission``):
    an event whose value is decided counts at once; one whose value is not waits here, as a count per
    (model, key, value), until a decision round (every 50 ms, off the request path) has decided it, or has
    given up on an unreachable Redis (``__other__``): every event counts once, under a label every process
    agrees on. The guard bounds the values that can wait.
    """

    def __init__(self, metrics: IngestMetrics, guard: CohortGuard) -> None:
        self._metrics = metrics
        self._guard = guard
        self._held: dict[tuple[str, str, str], int] = {}
        """Events waiting for the decision of their value, per (model, key, value)."""

    @property
    def guard(self) -> CohortGuard:
        return self._guard

    def count(self, events: list[EventIn]) -> None:
        if not self._guard.keys:
            return
        cohorts: dict[tuple[str, str, str], int] = {}
        for event in events:
            if event.cohort:
                for key, value in self._guard.values(event.model, event.cohort):
                    if value is None:  # undecided: held for the next decision round
                        waiting = (event.model, key, event.cohort[key])
                        self._held[waiting] = self._held.get(waiting, 0) + 1
                        continue
                    labels = (event.model, key, value)
                    cohorts[labels] = cohorts.get(labels, 0) + 1
        self._add(cohorts)

    def release(self, *, give_up: bool) -> None:
        """Count the held events whose value is decided now; with ``give_up``, the others as ``__other__``."""
        if not self._held:
            return
        placed: dict[tuple[str, str, str], int] = {}
        for (model, key, value), count in list(self._held.items()):
            label = self._guard.label(model, key, value)
            if label is None and give_up:
                label = OTHER
            if label is not None:
                del self._held[model, key, value]
                labels = (model, key, label)
                placed[labels] = placed.get(labels, 0) + count
        self._add(placed)

    def _add(self, cohorts: dict[tuple[str, str, str], int]) -> None:
        for labels, count in cohorts.items():
            self._metrics.child(self._metrics.cohort_events, *labels).inc(count)
