"""The confidences of every recent prediction, one ring per (model, version, cohort slice): behind the accuracy
estimates (:mod:`monitors.estimates`), sliced and held as the labelled windows of :mod:`monitors.window` are."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from monitors.cohorts import CohortGuard
from monitors.series import Holding, SeriesKey, check_bounds, cut

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
        check_bounds(horizon_s, max_items)
        self._guard = guard
        self._horizon_s = horizon_s
        self._max_items = max_items
        self._clock = clock
        self._rings: dict[SeriesKey, _Ring] = {}
        self._held: Holding[tuple[str, float]] = Holding(guard)
        """(version, confidence) waiting for the fleet's decision of a cohort value."""
        self._lock = threading.Lock()

    def append(self, model: str, version: str, cohort: Mapping[str, str], confidence: float) -> None:
        """Add a prediction's confidence to its version's ring and its cohort slices (one carrying an undecided
        cohort value waits for the decision: :meth:`release`)."""
        slices = self._guard.slices(model, cohort)
        now = self._clock()
        with self._lock:
            if slices is None:
                self._held.hold(now, model, cohort, (version, confidence))
                return
            for label in slices:
                self._ring(SeriesKey(model, version, label)).append(now, confidence)

    def release(self, *, give_up: bool) -> None:
        """As :meth:`monitors.window.WindowStore.release`."""
        with self._lock:
            for released in self._held.release(give_up=give_up):
                version, confidence = released.item
                for label in released.slices:
                    self._ring(SeriesKey(released.model, version, label)).insert(released.at, confidence)

    def _ring(self, key: SeriesKey) -> _Ring:
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(self._max_items)
        return ring

    def forget(self, model: str) -> None:
        with self._lock:
            for key in [key for key in self._rings if key.model == model]:
                del self._rings[key]
            self._held.forget(model)

    def export(self, model: str) -> list[RecentSeries]:
        """``model``'s rings as :meth:`snapshots` cuts them, each prediction with its age (for a new owner:
        :meth:`restore`)."""
        now = self._clock()
        with self._lock:
            stamped = [(key, ring.stamped()) for key, ring in cut(self._rings, model, now - self._horizon_s).items()]
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
                for key, ring in cut(self._rings, model, cutoff).items()
            ]
