"""Sliding windows of labelled predictions, one per (model, version, cohort slice); the confidences of every
recent prediction are in :mod:`monitors.prediction_window`.

Each window keeps the predictions appended in the last ``horizon_s`` seconds
(by the store's clock at append time, so late labels are not dropped on
arrival; a replayed one is stamped with the time it first arrived) and at most
``max_items`` of them; the oldest go first. Every slice has a window of its own,
and a snapshot cuts each cohort slice to the span of its version's ``all``
window, which ``max_items`` shortens first (it takes every event): a slice and
the whole it is shown beside cover one period. Windows that empty out are
forgotten, so retired versions drop out of the metrics.

With a fleet :class:`CohortGuard` (the monitor's), a prediction carrying a cohort value the fleet has
not decided yet is held until it is (:class:`monitors.series.Holding`, released by
:meth:`WindowStore.release`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from monitors.cohorts import CohortGuard
from monitors.records import LabelledPrediction
from monitors.series import Holding, SeriesKey, check_bounds, cut

DEFAULT_HORIZON_S = 3600.0
DEFAULT_MAX_ITEMS = 10_000


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    key: SeriesKey
    records: tuple[LabelledPrediction, ...]
    """Predictions in the window, oldest first."""
    labelled_total: int
    """Predictions ever appended to this series since the process started."""


class _Labelled:
    """The labelled predictions of one series with the time each was appended at, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.items: deque[tuple[float, LabelledPrediction]] = deque(maxlen=capacity)

    @property
    def size(self) -> int:
        return len(self.items)

    def evict(self, cutoff: float) -> None:
        while self.items and self.items[0][0] < cutoff:
            self.items.popleft()

    def oldest(self) -> float:
        return self.items[0][0]

    def insert(self, at: float, record: LabelledPrediction) -> None:
        """Add an item appended at ``at``, in time order (a held one comes late, near the end)."""
        items = self.items
        if not items or at >= items[-1][0]:
            items.append((at, record))
            return
        if len(items) == items.maxlen:
            if at < items[0][0]:
                return  # older than every item kept: the first to go
            items.popleft()
        position = len(items)
        while position and items[position - 1][0] > at:
            position -= 1
        items.insert(position, (at, record))

    def records(self) -> tuple[LabelledPrediction, ...]:
        return tuple(record for _, record in self.items)


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
        check_bounds(horizon_s, max_items)
        self._guard = guard
        self._horizon_s = horizon_s
        self._max_items = max_items
        self._clock = clock
        self._windows: dict[SeriesKey, _Labelled] = {}
        self._totals: dict[SeriesKey, int] = {}
        self._held: Holding[LabelledPrediction] = Holding(guard)
        """Predictions waiting for the fleet's decision of a cohort value."""
        self._changes: dict[str, int] = {}
        """Per model, how many times a prediction was put into its windows (see :meth:`changes`)."""
        self._lock = threading.Lock()

    def append(self, record: LabelledPrediction, *, age_s: float = 0.0) -> None:
        """Add a labelled prediction to its (model, version) window and its cohort slices, timed ``age_s`` seconds
        before now (a label replayed by a new owner keeps the time it arrived at, so it leaves on time). One
        carrying a cohort value the fleet has not decided yet waits for the decision (:meth:`release`)."""
        slices = self._guard.slices(record.model, record.cohort)
        now = self._clock()
        at = now - max(age_s, 0.0)
        with self._lock:
            self._changes[record.model] = self._changes.get(record.model, 0) + 1
            if slices is None:
                self._held.hold(at, record.model, record.cohort, record)
            else:
                self._place(slices, at, record, now - self._horizon_s)

    def changes(self, model: str) -> int:
        """A count that grows whenever a prediction of ``model`` is appended (or released into its windows): the
        same count as at the last measure, and nothing but the passing of time has changed them since."""
        return self._changes.get(model, 0)

    def release(self, *, give_up: bool) -> None:
        """Place the held predictions whose values are decided now (with ``give_up``, every one: undecided values
        as ``__other__``), each at the time it was appended."""
        with self._lock:
            cutoff = self._clock() - self._horizon_s
            for released in self._held.release(give_up=give_up):
                self._changes[released.model] = self._changes.get(released.model, 0) + 1
                self._place(released.slices, released.at, released.item, cutoff)

    def _place(self, slices: tuple[str, ...], at: float, record: LabelledPrediction, cutoff: float) -> None:
        """Add ``record`` to the windows of its version's ``slices`` (under the lock)."""
        for label in slices:
            key = SeriesKey(record.model, record.version, label)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Labelled(self._max_items)
            window.insert(at, record)
            self._totals[key] = self._totals.get(key, 0) + 1
            window.evict(cutoff)

    def forget(self, model: str) -> None:
        """Drop every window of ``model``, what waits for a decision, and its cohort slots."""
        with self._lock:
            for key in [key for key in self._windows if key.model == model]:
                del self._windows[key]
                self._totals.pop(key, None)
            self._held.forget(model)
            self._changes.pop(model, None)
        self._guard.forget(model)

    def versions(self, model: str) -> set[str]:
        """The versions of ``model`` its windows hold a prediction of (after evicting expired ones); nothing copied."""
        cutoff = self._clock() - self._horizon_s
        with self._lock:
            return {key.version for key in cut(self._windows, model, cutoff)}

    def snapshots(self, model: str) -> list[SeriesSnapshot]:
        """The non-empty windows of ``model`` after evicting expired predictions, sorted by key; each cohort slice
        cut to the span of its version's ``all`` window. Only ``model``'s windows are read or copied."""
        cutoff = self._clock() - self._horizon_s
        with self._lock:
            return [
                SeriesSnapshot(key=key, records=window.records(), labelled_total=self._totals[key])
                for key, window in cut(self._windows, model, cutoff).items()
            ]
