"""Keep metric label sets closed: a bounded number of values, the rest as ``__other__``.

The one rule for every labelled metric (the sidecar's versions and cohort values, the
monitor's versions and cohort slices): the first ``limit`` distinct values are kept for
the life of the process, later ones become ``__other__``, and a value that *is* the
literal ``__other__`` is never kept as a value of its own (it would merge with the rest).
"""

from __future__ import annotations

import threading

OTHER = "__other__"
"""The label standing for every value past the limit."""


class BoundedLabel:
    """The first ``limit`` distinct values pass through; later ones (and ``__other__``) become ``__other__``.

    Thread-safe; a value already kept costs one set lookup, no lock.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a label needs room for at least 1 value, got {limit}")
        self._limit = limit
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._values:
            return value
        with self._lock:
            if value in self._values or (len(self._values) < self._limit and value != OTHER):
                self._values.add(value)
                return value
        return OTHER
