"""Cohort slices: which ``cohort`` label each labelled prediction counts under.

Every labelled prediction belongs to the slice ``all`` of its (model, version)
and, for each allowlisted cohort key it carries, to the slice ``key=value``.
Each model's values of each key are kept closed by :class:`common.cardinality.BoundedLabel`
(the rule of every labelled metric): later values share the slice ``key=__other__``. The
bound is per model, so one model's values never take another's slots.
Keys outside the allowlist are ignored. These strings are the ``cohort`` label of the metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from common.cardinality import BoundedLabel

ALL = "all"
"""The slice holding every event of a (model, version)."""


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
        self._models: dict[str, dict[str, BoundedLabel]] = {}
        self._lock = threading.Lock()

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    def slices(self, model: str, cohort: Mapping[str, str]) -> tuple[str, ...]:
        """Slice labels of an event of ``model``: ``all`` first, then one per allowlisted key it carries."""
        return (ALL, *(slice_label(key, value) for key, value in self.values(model, cohort)))

    def values(self, model: str, cohort: Mapping[str, str]) -> list[tuple[str, str]]:
        """The allowlisted keys ``cohort`` carries, each with its value as ``model``'s bound lets it through (its
        own, or ``__other__``), in the allowlist's order."""
        if not self._keys:
            return []
        bounds = self._models.get(model) or self._values_of(model)
        return [(key, bounded(cohort[key])) for key, bounded in bounds.items() if key in cohort]

    def forget(self, model: str) -> None:
        """Free ``model``'s slots (it is no longer owned: a later owner admits values anew)."""
        with self._lock:
            self._models.pop(model, None)

    def _values_of(self, model: str) -> dict[str, BoundedLabel]:
        with self._lock:
            return self._models.setdefault(model, {key: BoundedLabel(self._max_values) for key in self._keys})
