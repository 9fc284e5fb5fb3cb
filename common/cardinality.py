"""Keep metric label sets closed: a bounded number of values, the rest as ``__other__``.

The one rule for every labelled metric (the sidecar's versions and cohort values, the
monitor's versions and cohort slices): at most ``limit`` distinct values are kept at a
time, further ones become ``__other__``, and a value that *is* the literal ``__other__``
is never kept as a value of its own (it would merge with the rest). A kept value stays
kept, unless its keeper lets it go (:meth:`ReleasableLabel.release`): model versions are
let go once idle, so the newest version takes a retired one's slot; cohort values never
are (the fleet's decision, ``monitors.cohort_admission``), and pay nothing per event for it.

Who decides which values come first is the caller's: by default the order this process
sees them in (:meth:`BoundedLabel.__call__`); cohort values are decided once for the
whole fleet (``monitors.cohort_admission``) and handed in with :meth:`BoundedLabel.keep`,
while :meth:`BoundedLabel.known` says what is decided so far.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Iterable

OTHER = "__other__"
"""The label standing for every value past the limit."""
WHOLE = "all"
"""The cohort slice of a whole model version (``cohort="all", value="all"``): no cohort key may be named so."""


def cohort_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a cohort key (``None`` when it can): the slice name ``key=value`` and the whole-model
    slice ``all`` must stay unambiguous."""
    if not key or "=" in key or key == WHOLE:
        return (
            f"cohort key {key!r} must be non-empty, contain no '=' and not be {WHOLE!r} (the whole-model slice's "
            "label): rename it in VAI_COHORT_KEYS"
        )
    return None


class BoundedLabel:
    """At most ``limit`` distinct values pass through at a time; others (and ``__other__``) become ``__other__``.

    Thread-safe; a value already kept costs one set lookup, no lock. A value once kept stays kept (cohort values: the
    fleet decides them once); :class:`ReleasableLabel` lets idle values go.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a label needs room for at least 1 value, got {limit}")
        self._limit = limit
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        """``value``'s label, keeping it now if there is room (first come in this process, first kept)."""
        if value in self._values:
            return value
        with self._lock:
            if value in self._values or (len(self._values) < self._limit and value != OTHER):
                self._values.add(value)
                return value
        return OTHER

    def known(self, value: str) -> str | None:
        """``value``'s label if it is decided already: its own while kept, ``__other__`` while ``limit`` values
        are kept (and always for the literal ``__other__``); ``None`` while it could still take a slot."""
        if value in self._values:
            return value
        if value == OTHER or len(self._values) >= self._limit:
            return OTHER
        return None

    def keep(self, values: Iterable[str]) -> None:
        """Keep ``values`` decided elsewhere (first come, first kept), within the limit: values already kept stay
        and count towards it, those past it and the literal ``__other__`` are not kept."""
        with self._lock:
            for value in values:
                if value not in self._values:
                    if len(self._values) >= self._limit:
                        return
                    if value != OTHER:
                        self._values.add(value)

    @property
    def full(self) -> bool:
        """Whether ``limit`` values are kept (a new one is ``__other__`` unless one is let go)."""
        return len(self._values) >= self._limit

    @property
    def kept(self) -> list[str]:
        """The values kept now (in no particular order)."""
        with self._lock:
            return list(self._values)


class ReleasableLabel(BoundedLabel):
    """A :class:`BoundedLabel` whose kept values remember when they were last asked for (``clock``, monotonic
    seconds), so that values gone unused can be let go (:meth:`release`) and their slots taken by the next new
    values: a model that rolls out a version a week is not blind to its current version after ``limit`` weeks. A
    value let go and seen again is a new admission. Who lets values go, and when, is the caller's: the sidecar after
    an idle time, the monitor once its windows hold nothing of it.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(limit)
        self._clock = clock
        self._used: dict[str, float] = {}
        """When each value kept was last asked for (written without the lock: see :meth:`release`)."""

    def __call__(self, value: str) -> str:
        """As :meth:`BoundedLabel.__call__`, noting the use: a value already kept costs a set lookup, a clock read
        and a dict store, no lock."""
        label = super().__call__(value)
        if label == value:
            self._used[value] = self._clock()
        return label

    def keep(self, values: Iterable[str]) -> None:
        """As :meth:`BoundedLabel.keep`; each value kept is used now."""
        values = list(values)
        super().keep(values)
        now = self._clock()
        with self._lock:
            for value in values:
                if value in self._values:
                    self._used[value] = now

    def release(self, keep: Collection[str] = (), *, unused_since: float) -> list[str]:
        """Let go of every kept value not in ``keep`` and not asked for since ``unused_since`` (by :meth:`now`);
        returns them (sorted), so that the caller removes their series. Their slots take the next new values.

        A value asked for at the very moment it is let go may still be answered as its own label once (the kept
        value's fast path takes no lock); it never takes a slot beyond ``limit``."""
        with self._lock:
            used = self._used
            freed = sorted(v for v in self._values if used.get(v, -math.inf) < unused_since and v not in keep)
            self._values.difference_update(freed)
            for value in list(used):  # one C call: a concurrent store cannot change it mid-way
                if value not in self._values:
                    used.pop(value, None)
        return freed

    def now(self) -> float:
        """The clock the last uses are read on (for :meth:`release`)."""
        return self._clock()
