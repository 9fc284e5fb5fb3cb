"""``vai_cohort_events_total``: accepted events per model and cohort value, each model's values bounded."""

from __future__ import annotations

from collections.abc import Iterable

from common.cardinality import BoundedLabel
from service.metrics import IngestMetrics
from service.schemas import EventIn


class CohortCounts:
    """Counts a request's events per (model, cohort key, value) for the allowlisted keys (``VAI_COHORT_KEYS``).

    Each model's values of a key are bounded by :class:`common.cardinality.BoundedLabel` (``VAI_MAX_COHORT_VALUES``,
    later ones as ``__other__``): one model's values never take another's slots. Models are the sidecar's known
    ones (bounded by ``VAI_MAX_MODELS``) by the time their events are counted.
    """

    def __init__(self, metrics: IngestMetrics, *, keys: Iterable[str], max_values: int) -> None:
        self._metrics = metrics
        self._keys = tuple(keys)
        self._max_values = max_values
        self._values: dict[tuple[str, str], BoundedLabel] = {}

    def count(self, events: list[EventIn]) -> None:
        if not self._keys:
            return
        cohorts: dict[tuple[str, str, str], int] = {}
        for event in events:
            if event.cohort:
                for key in self._keys:
                    value = event.cohort.get(key)
                    if value is not None:
                        labels = (event.model, key, self._value(event.model, key, value))
                        cohorts[labels] = cohorts.get(labels, 0) + 1
        for labels, count in cohorts.items():
            self._metrics.child(self._metrics.cohort_events, *labels).inc(count)

    def _value(self, model: str, key: str, value: str) -> str:
        bounded = self._values.get((model, key))
        if bounded is None:
            bounded = self._values[(model, key)] = BoundedLabel(self._max_values)
        return bounded(value)
