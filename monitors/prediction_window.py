"""The confidences of every recent prediction, one ring per (model, version, cohort slice): behind the accuracy
estimates (:mod:`monitors.estimates`), sliced and held as the labelled windows of :mod:`monitors.window` are.

A monitor that owns a model passes on its window to the next owner (:meth:`PredictionWindow.export`, then
:meth:`PredictionWindow.restore`), and the next owner claims again the feed entries its predecessor read and never
acknowledged. So that none of them is counted twice, the window keeps, per model, the ids of the feed entries
whose predictions it counted and which are not acknowledged yet (:meth:`PredictionWindow.settle`), exports them
with the rings, and does not count again a restored one delivered again."""

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
class WindowCopy:
    """A model's window as exported to another process (a next owner)."""

    series: list[RecentSeries]
    entries: frozenset[bytes] = frozenset()
    """The feed entries counted in ``series`` (or counted before and since gone past the horizon or the cap) and not
    acknowledged at the export: the next owner claims them again, and must not count them again. An entry whose
    prediction waits for a cohort decision is not among them (nor in ``series``)."""


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


class _Entries:
    """The feed entries behind one model's rings that a next owner may be delivered again (not acknowledged)."""

    def __init__(self) -> None:
        self.counted: set[bytes] = set()
        """In the rings (or gone from them since): counted."""
        self.held: set[bytes] = set()
        """Waiting for a cohort decision: counted once released."""
        self.restored: set[bytes] = set()
        """Counted by a previous owner, in the rings restored from it, and not delivered to this one (yet)."""


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
        self._held: Holding[tuple[str, float, bytes | None]] = Holding(guard)
        """(version, confidence, feed entry) waiting for the fleet's decision of a cohort value."""
        self._entries: dict[str, _Entries] = {}
        self._changes: dict[str, int] = {}
        """Per model, how many times a prediction was put into its rings (see :meth:`changes`)."""
        self._settled: dict[str, int] = {}
        """Per model, how many times feed entries it names were acknowledged (see :meth:`export_changes`)."""
        self._lock = threading.Lock()

    def changes(self, model: str) -> int:
        """A count that grows whenever a prediction of ``model`` is appended, released or restored: the same count
        as at the last measure, and nothing but the passing of time has changed its rings since."""
        return self._changes.get(model, 0)

    def export_changes(self, model: str) -> int:
        """As :meth:`changes`, growing also when the feed entries :meth:`export` names change (acknowledged): the
        same count as at the last export, and nothing but the passing of time has changed what it would export."""
        return self._changes.get(model, 0) + self._settled.get(model, 0)

    def append(
        self, model: str, version: str, cohort: Mapping[str, str], confidence: float, *, entry: bytes | None = None
    ) -> None:
        """Add a prediction's confidence to its version's ring and its cohort slices (one carrying an undecided
        cohort value waits for the decision: :meth:`release`). ``entry``: the id of the feed entry it came from,
        remembered until :meth:`settle`; one a previous owner counted (:meth:`restore`) is not counted again."""
        slices = self._guard.slices(model, cohort)
        now = self._clock()
        with self._lock:
            self._changes[model] = self._changes.get(model, 0) + 1
            if entry is not None:
                entries = self._entries.setdefault(model, _Entries())
                if entry in entries.restored:  # in the rings already: now this owner's to acknowledge
                    entries.restored.discard(entry)
                    entries.counted.add(entry)
                    return
                (entries.counted if slices is not None else entries.held).add(entry)
            if slices is None:
                self._held.hold(now, model, cohort, (version, confidence, entry))
                return
            for label in slices:
                self._ring(SeriesKey(model, version, label)).append(now, confidence)

    def release(self, *, give_up: bool) -> None:
        """As :meth:`monitors.window.WindowStore.release`."""
        with self._lock:
            for released in self._held.release(give_up=give_up):
                self._changes[released.model] = self._changes.get(released.model, 0) + 1
                version, confidence, entry = released.item
                entries = self._entries.get(released.model)
                if entry is not None and entries is not None and entry in entries.held:  # not acknowledged since
                    entries.held.discard(entry)
                    entries.counted.add(entry)
                for label in released.slices:
                    self._ring(SeriesKey(released.model, version, label)).insert(released.at, confidence)

    def settle(self, model: str, entries: Iterable[bytes]) -> None:
        """The feed entries acknowledged (``XACK`` answered): never delivered again, they are forgotten."""
        with self._lock:
            found = self._entries.get(model)
            if found is not None:
                done = set(entries)
                before = len(found.counted) + len(found.held) + len(found.restored)
                found.counted -= done
                found.held -= done
                found.restored -= done
                if len(found.counted) + len(found.held) + len(found.restored) != before:  # the export changes
                    self._settled[model] = self._settled.get(model, 0) + 1

    def claimed(self, model: str) -> None:
        """A pass claiming every entry left pending in the group is over (after the last page was appended): the
        restored entries it did not deliver had been acknowledged, and never will be; they are forgotten."""
        with self._lock:
            found = self._entries.get(model)
            if found is not None:
                found.restored.clear()

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
            self._entries.pop(model, None)
            self._changes.pop(model, None)
            self._settled.pop(model, None)

    def export(self, model: str) -> WindowCopy:
        """``model``'s rings as :meth:`snapshots` cuts them, each prediction with its age, and the feed entries
        counted in them and not acknowledged, read in one step (for a new owner: :meth:`restore`)."""
        now = self._clock()
        with self._lock:
            stamped = [(key, ring.stamped()) for key, ring in cut(self._rings, model, now - self._horizon_s).items()]
            found = self._entries.get(model)
            entries = frozenset() if found is None else frozenset(found.counted | found.restored)
        series = [RecentSeries(key.version, key.cohort, now - times, conf) for key, (times, conf) in stamped]
        return WindowCopy(series, entries)

    def restore(self, model: str, copy: WindowCopy, *, version: Callable[[str], str] = str) -> int:
        """Put back rings another process exported (a previous owner's), each prediction timed its age before now,
        among what the rings hold already; those past the horizon are left out. ``version`` maps a stored version
        label to this process's (``BoundedLabel``). Its feed entries delivered again are not counted again (until
        :meth:`claimed`). Returns the predictions put back."""
        now = self._clock()
        cutoff = now - self._horizon_s
        restored = 0
        with self._lock:
            self._changes[model] = self._changes.get(model, 0) + 1
            self._entries.setdefault(model, _Entries()).restored.update(copy.entries)
            for one in copy.series:
                ring = self._ring(SeriesKey(model, version(one.version), one.cohort))
                for age_s, confidence in zip(one.ages_s.tolist(), one.confidence.tolist(), strict=True):
                    if now - age_s >= cutoff:
                        ring.insert(now - age_s, confidence)
                        restored += 1
        return restored

    def versions(self, model: str) -> set[str]:
        """The versions of ``model`` its rings hold a prediction of (after evicting expired ones); nothing copied."""
        cutoff = self._clock() - self._horizon_s
        with self._lock:
            return {key.version for key in cut(self._rings, model, cutoff)}

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
