"""Sliding windows of labelled predictions, one per (model, version, cohort slice).

Each window keeps the predictions appended in the last ``horizon_s`` seconds
(by the store's clock at append time, so late labels are not dropped on
arrival) and at most ``max_items`` of them; the oldest go first. A slice has a
window of its own, so a small cohort is not crowded out by a large one. Windows
that empty out are forgotten, so retired versions drop out of the metrics.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from monitors.cohorts import CohortGuard
from monitors.records import LabelledPrediction

DEFAULT_HORIZON_S = 3600.0
DEFAULT_MAX_ITEMS = 10_000


@dataclass(frozen=True, slots=True, order=True)
class SeriesKey:
    """One window: a model version and a cohort slice (``all`` or ``key=value``)."""

    model: str
    version: str
    cohort: str


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    key: SeriesKey
    records: tuple[LabelledPrediction, ...]
    """Predictions in the window, oldest first."""
    labelled_total: int
    """Predictions ever appended to this series since the process started."""


class WindowStore:
    """Bounded sliding windows of labelled predictions; every method is thread-safe.

    ``append`` is O(number of slices of the event) and never scans a window.
    """

    def __init__(
        self,
        *,
        guard: CohortGuard,
        horizon_s: float = DEFAULT_HORIZON_S,
        max_items: int = DEFAULT_MAX_ITEMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if horizon_s <= 0 or max_items < 1:
            raise ValueError(f"horizon_s must be > 0 and max_items >= 1, got {horizon_s} and {max_items}")
        self._guard = guard
        self._horizon_s = horizon_s
        self._max_items = max_items
        self._clock = clock
        self._windows: dict[SeriesKey, deque[tuple[float, LabelledPrediction]]] = {}
        self._totals: dict[SeriesKey, int] = {}
        self._lock = threading.Lock()

    def append(self, record: LabelledPrediction) -> None:
        """Add a labelled prediction to its (model, version) window and its cohort slices."""
        keys = [SeriesKey(record.model, record.version, label) for label in self._guard.slices(record.cohort)]
        now = self._clock()
        with self._lock:
            for key in keys:
                window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = deque(maxlen=self._max_items)
                window.append((now, record))
                self._totals[key] = self._totals.get(key, 0) + 1
                self._evict(window, now)

    def forget(self, model: str) -> None:
        """Drop every window of ``model``."""
        with self._lock:
            for key in [key for key in self._windows if key.model == model]:
                del self._windows[key]
                self._totals.pop(key, None)

    def snapshots(self) -> list[SeriesSnapshot]:
        """Every non-empty window after evicting expired predictions, sorted by key."""
        now = self._clock()
        with self._lock:
            for key in list(self._windows):
                window = self._windows[key]
                self._evict(window, now)
                if not window:
                    del self._windows[key]
            return [
                SeriesSnapshot(key=key, records=tuple(r for _, r in window), labelled_total=self._totals[key])
                for key, window in sorted(self._windows.items())
            ]

    def _evict(self, window: deque[tuple[float, LabelledPrediction]], now: float) -> None:
        cutoff = now - self._horizon_s
        while window and window[0][0] < cutoff:
            window.popleft()
