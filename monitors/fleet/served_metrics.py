"""The monitor's registry as ``/metrics`` serves it: no model's series while this process's leases may have lapsed.

A monitor that lost touch with Redis (or was paused, SIGSTOP, past the lease TTL) no longer knows it owns its models:
another monitor may have taken them and export their series too, and Prometheus would hold two values of one model's
ECE or drift score. Past the last renewal's TTL the series with a ``model`` label are left out of the scrape (they come
back with the next renewal, or go with the models given up); the process's own series stay.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric


class ServedMetrics:
    """What ``prometheus_client``'s HTTP server reads (``collect``, ``restricted_registry``) over ``registry``.
    ``fresh`` says whether the leases are surely still held; it is set once the process exists (until then no model
    has series)."""

    def __init__(self, registry: CollectorRegistry, fresh: Callable[[], bool] = lambda: True) -> None:
        self.registry = registry
        self.fresh = fresh

    def collect(self) -> Iterator[Metric]:
        if self.fresh():
            yield from self.registry.collect()
            return
        for metric in self.registry.collect():
            kept = [sample for sample in metric.samples if "model" not in sample.labels]
            if len(kept) == len(metric.samples):
                yield metric
                continue
            shown = copy.copy(metric)
            shown.samples = kept
            yield shown

    def restricted_registry(self, names: Iterable[str]) -> ServedMetrics:
        """The same, for a scrape that names the series it wants (``?name[]=…``)."""
        return ServedMetrics(self.registry.restricted_registry(names), self.fresh)  # type: ignore[arg-type]
