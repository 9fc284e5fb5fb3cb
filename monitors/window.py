"""Sliding windows of labelled predictions, one per (model, version, cohort slice), and of the
confidences of every recent prediction (:class:`PredictionWindow`, behind accuracy estimates).

Each window keeps the predictions appended in the last ``horizon_s`` seconds
(by the store's clock at append time, so late labels are not dropped on
arrival; a replayed one is stamped with the time it first arrived) and at most
``max_items`` of them; the oldest go first. Every slice has a window of its own,
and a snapshot cuts each cohort slice to the span of its version's ``all``
window, which ``max_items`` shortens first (it takes every event): a slice and
the whole it is shown beside cover one period. Windows that empty out are
forgotten, so retired versions drop out of the metrics.

With a fleet :class:`CohortGuard` (the monitor's), a prediction carrying a cohort value the fleet has
not decided yet waits (tens of milliseconds) and joins its windows, ``all`` and every slice at once,
when the value is decided (:meth:`WindowStore.release`, called by ``monitors.cohort_admission``):
placed by the time it was appended at, so it leaves when it would have, and a snapshot never shows it
in ``all`` but not in its slice.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from monitors.cohorts import ALL, CohortGuard
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


class _Series(Protocol):
    """A window of one series, its items in the order of their (store clock) times."""

    @property
    def size(self) -> int: ...

    def evict(self, cutoff: float) -> None:
        """Drop the items timed before ``cutoff``."""

    def oldest(self) -> float: ...


_SeriesT = TypeVar("_SeriesT", bound=_Series)


def _cut(series: dict[SeriesKey, _SeriesT], model: str, cutoff: float) -> dict[SeriesKey, _SeriesT]:
    """``model``'s non-empty windows, sorted by key, after evicting what is timed before ``cutoff``; each cohort
    slice cut to the span of its version's ``all`` window, which the cap shortens first (it takes every event): a
    slice reaching further back would mix older traffic into what is shown beside the whole. Windows that empty
    out are removed from ``series``. Call it under the lock that guards ``series``."""
    found = {key: series[key] for key in sorted(k for k in series if k.model == model)}
    for window in found.values():
        window.evict(cutoff)
    starts = {key.version: window.oldest() for key, window in found.items() if key.cohort == ALL and window.size}
    for key, window in list(found.items()):
        if key.cohort != ALL and key.version in starts:
            window.evict(starts[key.version])
        if not window.size:
            del series[key], found[key]
    return found


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
        if horizon_s <= 0 or max_items < 1:
            raise ValueError(f"horizon_s must be > 0 and max_items >= 1, got {horizon_s} and {max_items}")
        self._guard = guard
        self._horizon_s = horizon_s
        self._max_items = max_items
        self._clock = clock
        self._windows: dict[SeriesKey, _Labelled] = {}
        self._totals: dict[SeriesKey, int] = {}
        self._held: list[tuple[float, LabelledPrediction]] = []
        """Predictions (with the time they were appended at) waiting for the fleet's decision of a cohort value."""
        self._lock = threading.Lock()

    def append(self, record: LabelledPrediction, *, age_s: float = 0.0) -> None:
        """Add a labelled prediction to its (model, version) window and its cohort slices, timed ``age_s`` seconds
        before now (a label replayed by a new owner keeps the time it arrived at, so it leaves on time). One
        carrying a cohort value the fleet has not decided yet waits for the decision (:meth:`release`)."""
        slices = self._guard.slices(record.model, record.cohort)
        now = self._clock()
        at = now - max(age_s, 0.0)
        with self._lock:
            if slices is None:
                self._held.append((at, record))
            else:
                self._place(slices, at, record, now - self._horizon_s)

    def release(self, *, give_up: bool) -> None:
        """Place the held predictions whose values are decided now (with ``give_up``, every one: undecided values
        as ``__other__``), each at the time it was appended."""
        with self._lock:
            held, self._held = self._held, []
            cutoff = self._clock() - self._horizon_s
            for at, record in held:
                slices = self._guard.slices(record.model, record.cohort, give_up=give_up)
                if slices is None:
                    self._held.append((at, record))
                else:
                    self._place(slices, at, record, cutoff)

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
            self._held = [(at, record) for at, record in self._held if record.model != model]
        self._guard.forget(model)

    def snapshots(self, model: str) -> list[SeriesSnapshot]:
        """The non-empty windows of ``model`` after evicting expired predictions, sorted by key; each cohort slice
        cut to the span of its version's ``all`` window. Only ``model``'s windows are read or copied."""
        cutoff = self._clock() - self._horizon_s
        with self._lock:
            return [
                SeriesSnapshot(key=key, records=window.records(), labelled_total=self._totals[key])
                for key, window in _cut(self._windows, model, cutoff).items()
            ]


DEFAULT_RECENT_HORIZON_S = 900.0
DEFAULT_RECENT_MAX_ITEMS = 5_000


@dataclass(frozen=True, slots=True)
class RecentSeries:
    """One ring of a :class:`PredictionWindow` as exported to another process: how long before the export each
    prediction was appended, and its confidence, oldest first."""

    version: str
    cohort: str
    ages_s: NDArray[np.float64]
    confidence: NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ConfidenceSnapshot:
    key: SeriesKey
    confidence: NDArray[np.float64]
    """Top-1 probabilities of the recent predictions, oldest first."""


class _Ring:
    """Append times and confidences into fixed arrays; the oldest go first."""

    def __init__(self, capacity: int) -> None:
        self.times = np.zeros(capacity, dtype=np.float64)
        self.confidence = np.zeros(capacity, dtype=np.float64)
        self.start = 0
        self.size = 0

    def append(self, now: float, confidence: float) -> None:
        capacity = self.times.size
        at = (self.start + self.size) % capacity
        self.times[at], self.confidence[at] = now, confidence
        if self.size < capacity:
            self.size += 1
        else:
            self.start = (self.start + 1) % capacity

    def evict(self, cutoff: float) -> None:
        while self.size and self.times[self.start] < cutoff:
            self.start = (self.start + 1) % self.times.size
            self.size -= 1

    def insert(self, now: float, confidence: float) -> None:
        """Add an item timed ``now`` in time order (a held one comes late, near the end)."""
        capacity = self.times.size
        if not self.size or now >= self.times[(self.start + self.size - 1) % capacity]:
            self.append(now, confidence)
            return
        if self.size == capacity:
            if now < self.times[self.start]:
                return  # older than every item kept: the first to go
            self.start = (self.start + 1) % capacity
            self.size -= 1
        position = self.size
        while position and self.times[(self.start + position - 1) % capacity] > now:
            here, before = (self.start + position) % capacity, (self.start + position - 1) % capacity
            self.times[here], self.confidence[here] = self.times[before], self.confidence[before]
            position -= 1
        at = (self.start + position) % capacity
        self.times[at], self.confidence[at] = now, confidence
        self.size += 1

    def oldest(self) -> float:
        return float(self.times[self.start])

    def values(self) -> NDArray[np.float64]:
        return np.asarray(self.confidence[self._order()], dtype=np.float64)

    def stamped(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Times and confidences, oldest first (copies)."""
        order = self._order()
        return np.asarray(self.times[order], dtype=np.float64), np.asarray(self.confidence[order], dtype=np.float64)

    def _order(self) -> NDArray[np.intp]:
        return (self.start + np.arange(self.size)) % self.times.size


class PredictionWindow:
    """Top-1 probabilities of every prediction the monitor examined, labelled or not: one ring per
    (model, version, cohort slice), the slices given by the same :class:`CohortGuard` as the labelled
    windows. Each ring keeps the last ``horizon_s`` seconds (store clock), at most ``max_items``
    (float64 time and confidence: 16 bytes each; the confidence exactly as the labelled windows hold it, so
    one at an ATC threshold counts as it did when the threshold was fitted). The accuracy estimates are
    shares of these. Thread-safe.
    """

    def __init__(
        self,
        *,
        guard: CohortGuard,
        horizon_s: float = DEFAULT_RECENT_HORIZON_S,
        max_items: int = DEFAULT_RECENT_MAX_ITEMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if horizon_s <= 0 or max_items < 1:
            raise ValueError(f"horizon_s must be > 0 and max_items >= 1, got {horizon_s} and {max_items}")
        self._guard = guard
        self._horizon_s = horizon_s
        self._max_items = max_items
        self._clock = clock
        self._rings: dict[SeriesKey, _Ring] = {}
        self._held: list[tuple[float, str, str, Mapping[str, str], float]] = []
        """(time, model, version, cohort, confidence) waiting for the fleet's decision of a cohort value."""
        self._lock = threading.Lock()

    def append(self, model: str, version: str, cohort: Mapping[str, str], confidence: float) -> None:
        """Add a prediction's confidence to its version's ring and its cohort slices (one carrying an undecided
        cohort value waits for the decision: :meth:`release`)."""
        slices = self._guard.slices(model, cohort)
        now = self._clock()
        with self._lock:
            if slices is None:
                self._held.append((now, model, version, cohort, confidence))
                return
            for label in slices:
                self._ring(SeriesKey(model, version, label)).append(now, confidence)

    def release(self, *, give_up: bool) -> None:
        """As :meth:`WindowStore.release`."""
        with self._lock:
            held, self._held = self._held, []
            for entry in held:
                at, model, version, cohort, confidence = entry
                slices = self._guard.slices(model, cohort, give_up=give_up)
                if slices is None:
                    self._held.append(entry)
                    continue
                for label in slices:
                    self._ring(SeriesKey(model, version, label)).insert(at, confidence)

    def _ring(self, key: SeriesKey) -> _Ring:
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(self._max_items)
        return ring

    def forget(self, model: str) -> None:
        with self._lock:
            for key in [key for key in self._rings if key.model == model]:
                del self._rings[key]
            self._held = [entry for entry in self._held if entry[1] != model]

    def export(self, model: str) -> list[RecentSeries]:
        """``model``'s rings as :meth:`snapshots` cuts them, each prediction with its age (for a new owner:
        :meth:`restore`)."""
        now = self._clock()
        with self._lock:
            stamped = [(key, ring.stamped()) for key, ring in _cut(self._rings, model, now - self._horizon_s).items()]
        return [RecentSeries(key.version, key.cohort, now - times, conf) for key, (times, conf) in stamped]

    def restore(self, model: str, series: Iterable[RecentSeries], *, version: Callable[[str], str] = str) -> int:
        """Put back rings another process exported (a previous owner's), each prediction timed its age before now,
        among what the rings hold already; those past the horizon are left out. ``version`` maps a stored version
        label to this process's (``BoundedLabel``). Returns the predictions put back."""
        now = self._clock()
        cutoff = now - self._horizon_s
        restored = 0
        with self._lock:
            for one in series:
                ring = self._ring(SeriesKey(model, version(one.version), one.cohort))
                for age_s, confidence in zip(one.ages_s.tolist(), one.confidence.tolist(), strict=True):
                    if now - age_s >= cutoff:
                        ring.insert(now - age_s, confidence)
                        restored += 1
        return restored

    def snapshots(self, model: str) -> list[ConfidenceSnapshot]:
        """The non-empty rings of ``model`` after evicting expired predictions, sorted by key. Each slice is cut
        to the span of its version's ``all`` ring, which ``max_items`` shortens first (it takes every event): a
        slice reaching further back would mix older traffic into its estimate, and the whole could then lie
        outside the range of its parts."""
        cutoff = self._clock() - self._horizon_s
        with self._lock:
            return [
                ConfidenceSnapshot(key=key, confidence=ring.values())
                for key, ring in _cut(self._rings, model, cutoff).items()
            ]
