"""What the sliding windows of :mod:`monitors.window` and :mod:`monitors.prediction_window` share: the key of a
series, the cut of a model's series to one span, and the hold of what carries a cohort value the fleet has not
decided yet.

With a fleet :class:`CohortGuard` (the monitor's), an item carrying an undecided value waits (tens of
milliseconds) in a :class:`Holding` and joins its windows, ``all`` and every slice at once, when the value is
decided (``release``, called by ``monitors.cohort_admission``): placed by the time it was appended at, so it
leaves when it would have, and a snapshot never shows it in ``all`` but not in its slice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from monitors.cohorts import ALL, CohortGuard


@dataclass(frozen=True, slots=True, order=True)
class SeriesKey:
    """One window: a model version and a cohort slice (``all`` or ``key=value``)."""

    model: str
    version: str
    cohort: str


def check_bounds(horizon_s: float, max_items: int) -> None:
    if horizon_s <= 0 or max_items < 1:
        raise ValueError(f"horizon_s must be > 0 and max_items >= 1, got {horizon_s} and {max_items}")


class Series(Protocol):
    """A window of one series, its items in the order of their (store clock) times."""

    @property
    def size(self) -> int: ...

    def evict(self, cutoff: float) -> None:
        """Drop the items timed before ``cutoff``."""

    def oldest(self) -> float: ...


SeriesT = TypeVar("SeriesT", bound=Series)


def cut(series: dict[SeriesKey, SeriesT], model: str, cutoff: float) -> dict[SeriesKey, SeriesT]:
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


ItemT = TypeVar("ItemT")


@dataclass(frozen=True, slots=True)
class Held(Generic[ItemT]):
    """An item waiting for the fleet's decision of a cohort value, with the time it was appended at."""

    at: float
    model: str
    cohort: Mapping[str, str]
    item: ItemT


@dataclass(frozen=True, slots=True)
class Released(Generic[ItemT]):
    """A held item whose cohort values are decided: its time and the slices of ``model`` it joins."""

    at: float
    model: str
    slices: tuple[str, ...]
    item: ItemT


class Holding(Generic[ItemT]):
    """Items held until the fleet decides their cohort values. Not thread-safe: its owner calls it under the lock
    that guards its windows."""

    def __init__(self, guard: CohortGuard) -> None:
        self._guard = guard
        self._held: list[Held[ItemT]] = []

    def hold(self, at: float, model: str, cohort: Mapping[str, str], item: ItemT) -> None:
        self._held.append(Held(at, model, cohort, item))

    def release(self, *, give_up: bool) -> list[Released[ItemT]]:
        """The held items whose values are decided now (with ``give_up``, every one: undecided values as
        ``__other__``), in the order they came; the others stay held."""
        held, self._held = self._held, []
        released = []
        for entry in held:
            slices = self._guard.slices(entry.model, entry.cohort, give_up=give_up)
            if slices is None:
                self._held.append(entry)
            else:
                released.append(Released(entry.at, entry.model, slices, entry.item))
        return released

    def forget(self, model: str) -> None:
        self._held = [entry for entry in self._held if entry.model != model]
