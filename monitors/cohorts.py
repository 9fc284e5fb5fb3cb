"""Cohort slices and the cardinality guard that keeps them a closed set.

Every labelled prediction belongs to the slice ``all`` of its (model, version)
and, for each allowlisted cohort key it carries, to the slice ``key=value``.
The first ``max_values_per_key`` distinct values of a key are kept for the life
of the process; later ones share the slice ``key=__other__``. Keys outside the
allowlist are ignored. These strings are the ``cohort`` label of the metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

ALL = "all"
"""The slice holding every event of a (model, version)."""
OTHER = "__other__"
"""The value standing for every cohort value past the per-key limit."""


def slice_label(key: str, value: str) -> str:
    """The ``cohort`` label of one slice: ``key=value``."""
    return f"{key}={value}"


class CohortGuard:
    """Maps raw cohort attributes to a bounded set of slice labels; thread-safe."""

    def __init__(self, *, keys: Iterable[str], max_values_per_key: int) -> None:
        if max_values_per_key < 1:
            raise ValueError(f"max_values_per_key must be at least 1, got {max_values_per_key}")
        self._keys = tuple(dict.fromkeys(keys))
        for key in self._keys:
            if not key or "=" in key:
                raise ValueError(f"cohort key {key!r} must be non-empty and contain no '='")
        self._max_values = max_values_per_key
        self._seen: dict[str, set[str]] = {key: set() for key in self._keys}
        self._lock = threading.Lock()

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    def slices(self, cohort: Mapping[str, str]) -> tuple[str, ...]:
        """Slice labels of an event: ``all`` first, then one per allowlisted key it carries."""
        labels = [ALL]
        with self._lock:
            for key in self._keys:
                value = cohort.get(key)
                if value is not None:
                    labels.append(slice_label(key, self._admit(key, value)))
        return tuple(labels)

    def _admit(self, key: str, value: str) -> str:
        seen = self._seen[key]
        if value in seen:
            return value
        if len(seen) < self._max_values and value != OTHER:
            seen.add(value)
            return value
        return OTHER
