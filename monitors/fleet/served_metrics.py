"""The monitor's registry as ``/metrics`` serves it: no model's series while this process's leases may have lapsed.

A monitor that lost touch with Redis (or was paused, SIGSTOP, past the lease TTL) no longer knows it owns its models:
another monitor may have taken them and export their series too, and Prometheus would hold two values of one model's
ECE or drift score. Past the last renewal's TTL the series with a ``model`` label are left out of the scrape (they come
back with the next renewal, or go with the models given up), and so are those of a model being dropped (its lease
lost or handed back); the process's own series stay.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric


class ServedMetrics:
    """What ``prometheus_client``'s HTTP server reads (``collect``, ``restricted_registry``) over ``registry``.
    ``exported`` says whether a model's series are shown (its lease surely held, the model not being dropped); it is
    set once the process exists (until then no model has series)."""

    def __init__(self, registry: CollectorRegistry, exported: Callable[[str], bool] = lambda model: True) -> None:
        self.registry = registry
        self.exported = exported

    def collect(self) -> Iterator[Metric]:
        shown: dict[str, bool] = {}
        for metric in self.registry.collect():
            kept = [sample for sample in metric.samples if self._shown(sample.labels.get("model"), shown)]
            if len(kept) == len(metric.samples):
                yield metric
                continue
            trimmed = copy.copy(metric)
            trimmed.samples = kept
            yield trimmed

    def _shown(self, model: str | None, shown: dict[str, bool]) -> bool:
        if model is None:
            return True
        if model not in shown:
            shown[model] = self.exported(model)
        return shown[model]

    def restricted_registry(self, names: Iterable[str]) -> ServedMetrics:
        """The same, for a scrape that names the series it wants (``?name[]=…``)."""
        return ServedMetrics(self.registry.restricted_registry(names), self.exported)  # type: ignore[arg-type]
