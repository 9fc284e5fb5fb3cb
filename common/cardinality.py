"""Keep metric label sets closed: a bounded number of values, the rest as ``__other__``.

The one rule for every labelled metric (the sidecar's versions and cohort values, the
monitor's versions and cohort slices): the first ``limit`` distinct values are kept for
the life of the process, later ones become ``__other__``, and a value that *is* the
literal ``__other__`` is never kept as a value of its own (it would merge with the rest).

Who decides which values come first is the caller's: by default the order this process
sees them in (:meth:`BoundedLabel.__call__`); cohort values are decided once for the
whole fleet (``monitors.cohort_admission``) and handed in with :meth:`BoundedLabel.keep`,
while :meth:`BoundedLabel.known` says what is decided so far.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

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
    """The first ``limit`` distinct values pass through; later ones (and ``__other__``) become ``__other__``.

    Thread-safe; a value already kept costs one set lookup, no lock. A value once kept stays kept, and once
    ``limit`` values are kept every other value is ``__other__`` for good.
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
        """``value``'s label if it is decided already: its own once kept, ``__other__`` once ``limit`` values are
        kept (and always for the literal ``__other__``); ``None`` while it could still take a slot."""
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
                if len(self._values) >= self._limit:
                    return
                if value != OTHER:
                    self._values.add(value)

    @property
    def kept(self) -> list[str]:
        """The values kept so far (in no particular order)."""
        with self._lock:
            return list(self._values)
