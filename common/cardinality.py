"""Keep metric label sets closed: a bounded number of values, the rest as ``__other__``."""

from __future__ import annotations

OTHER = "__other__"


class BoundedLabel:
    """The first ``limit`` distinct values pass through; later ones become ``__other__``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._values: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._values:
            return value
        if len(self._values) < self._limit:
            self._values.add(value)
            return value
        return OTHER
