"""A labelled Prometheus histogram that takes a request's observations at once."""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

_FEW = 8
"""Up to this many values are binned in plain Python (a single-event request has one)."""
_go_float = cast(Callable[[float], str], floatToGoString)  # untyped upstream


class BatchHistogram:
    """Bucket counts per label set, filled by numpy once per request and exposed at scrape time.

    prometheus_client's ``Histogram.observe`` takes a lock and walks the buckets for every value
    (~1.3 µs); a request of 100 events observes 200 values. The exposition is the same:
    ``_bucket{le=...}`` (cumulative, ``+Inf`` included), ``_count`` and ``_sum``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(set(bounds)) or not bounds:
            raise ValueError(f"{name}: buckets must be a non-empty increasing sequence, got {buckets}")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._bounds = np.array(bounds)
        self._bound_list = bounds
        self._les = [_go_float(bound) for bound in bounds]  # the ``le`` labels prometheus_client would write
        self._series: dict[tuple[str, ...], tuple[npt.NDArray[np.int64], list[float]]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Sequence[float]) -> None:
        """Count ``values`` (finite numbers) under ``labels``."""
        if len(labels) != len(self._labelnames):
            raise ValueError(f"{self._name}: expected labels {self._labelnames}, got {labels}")
        if len(values) <= _FEW:  # numpy's per-call cost is more than a few bisections
            with self._lock:
                counts, sum_ = self._series_locked(labels)
                for value in values:
                    counts[bisect_left(self._bound_list, value)] += 1
                    sum_[0] += value
            return
        array = np.asarray(values, dtype=np.float64)
        found = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=self._bounds.size)
        with self._lock:
            counts, sum_ = self._series_locked(labels)
            counts += found
            sum_[0] = sum(values, sum_[0])  # in order, as prometheus_client adds them

    def remove(self, labels: tuple[str, ...]) -> None:
        """Stop exporting the series of ``labels`` (as ``Histogram.remove``); nothing happens if it has none."""
        with self._lock:
            self._series.pop(labels, None)

    def _series_locked(self, labels: tuple[str, ...]) -> tuple[npt.NDArray[np.int64], list[float]]:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = (np.zeros(self._bounds.size, dtype=np.int64), [0.0])
        return series

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            snapshot = [
                (labels, counts.cumsum().tolist(), total[0]) for labels, (counts, total) in self._series.items()
            ]
        for labels, cumulative, total in snapshot:
            family.add_metric(list(labels), list(zip(self._les, cumulative, strict=True)), total)
        yield family
