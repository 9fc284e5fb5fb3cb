"""Cohort slices: which slice each labelled prediction counts under, and the labels a slice has in the metrics.

Every labelled prediction belongs to the slice ``all`` of its (model, version)
and, for each allowlisted cohort key it carries, to the slice ``key=value``.
Each model's values of each key are kept closed by :class:`common.cardinality.BoundedLabel`
(the rule of every labelled metric): later values share the slice ``key=__other__``. The
bound is per model, so one model's values never take another's slots.
Keys outside the allowlist are ignored; ``all`` is no key (it names the whole-model slice).

``key=value`` names a slice inside the monitor (its windows, its reports, the API's ``cohort`` field). A metric
spells it with two labels, as the sidecar's ``vai_cohort_events_total`` does (:func:`slice_labels`):
``cohort="region", value="eu"``, and the whole-model slice ``cohort="all", value="all"``, so PromQL joins the
monitor's series and the sidecar's counter ``on(model, cohort, value)``.

A guard built with ``fleet=True`` (every sidecar's and monitor's) does not pick values in the order
its own process sees them: the fleet decides once, in Redis (``monitors.cohort_admission``), and the
guard keeps what it is told (:meth:`CohortGuard.admit`). Until then a value is *undecided*: the guard
notes it for the next decision round (at most :data:`UNDECIDED_PER_KEY` per model and key, or the cap
if larger; further ones are ``__other__`` at once), and its callers hold what carries it until then.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping

from common.cardinality import OTHER, WHOLE, BoundedLabel, cohort_key_problem
from common.errors import InvalidInput

ALL = WHOLE
"""The slice holding every event of a (model, version)."""
UNDECIDED_PER_KEY = 256
"""Most undecided values a fleet guard notes per model and key (or ``max_values_per_key`` if larger); further
values are ``__other__`` at once. A decision round (every 50 ms) empties them, and once a key's cap is reached
every value is decided in the process: only a burst of new values before the first answer reaches this."""


LABELS = ("cohort", "value")
"""The labels of a slice in every metric: the key, and the value (``all`` and ``all`` for the whole model)."""


def slice_label(key: str, value: str) -> str:
    """The name of one slice: ``key=value``."""
    return f"{key}={value}"


def slice_labels(name: str) -> tuple[str, str]:
    """The ``cohort`` and ``value`` labels of the slice ``name``: ``(key, value)`` for ``key=value`` (the pair
    the sidecar counts the event's value under in ``vai_cohort_events_total``), ``("all", "all")`` for ``all``."""
    if name == ALL:
        return ALL, ALL
    key, separated, value = name.partition("=")
    if not separated:
        raise ValueError(f"{name!r} is no cohort slice: expected {ALL!r} or key=value")
    return key, value


def parse_slice(text: str, cohort_keys: Collection[str] = ()) -> tuple[str, str] | None:
    """The ``(key, value)`` of a cohort as a client names it in a ``cohort`` query parameter; ``None`` for ``all``
    (the whole model). 422 naming ``cohort`` for anything else. Both the calibration views and the explanations'
    filter read their parameter here.

    A key never holds ``=`` but may hold ``:``, and a value may hold either. ``key=value`` is split at the first
    ``=``: unambiguous, the spelling to prefer. ``key:value`` is split at a ``:``: the first one whose key is one of
    ``cohort_keys`` (this process's ``VAI_COHORT_KEYS``), else the first. Text holding both (``device:a=b``) is
    read as ``key:value`` only when that reading's key is one of ``cohort_keys`` and the ``=`` reading's is not.
    So ``k8s:zone:eu`` names the key ``k8s:zone`` only where ``k8s:zone`` is an allowlisted key (``k8s:zone=eu``
    names it everywhere)."""
    if text == ALL:
        return None
    key, equals, value = text.partition("=")
    colon = _colon_reading(key if equals else text, cohort_keys)
    if colon is not None and (not equals or (colon[0] in cohort_keys and key not in cohort_keys)):
        key, value = colon[0], f"{colon[1]}{equals}{value}"
    if not (key and value):
        raise InvalidInput(f"cohort: {text!r} is no cohort: use all, key=value or key:value", field="cohort")
    return key, value


def _colon_reading(text: str, cohort_keys: Collection[str]) -> tuple[str, str] | None:
    """``text`` split at its first ``:`` whose key is one of ``cohort_keys``, else at its first ``:``; ``None``
    without one."""
    first: tuple[str, str] | None = None
    at = text.find(":")
    while at >= 0:
        reading = text[:at], text[at + 1 :]
        if reading[0] in cohort_keys:
            return reading
        first = first or reading
        at = text.find(":", at + 1)
    return first


def slice_name(text: str, cohort_keys: Collection[str] = ()) -> str:
    """The name of the slice a client names (see :func:`parse_slice`): ``key=value``, or ``all``."""
    found = parse_slice(text, cohort_keys)
    return ALL if found is None else slice_label(*found)


class CohortGuard:
    """Maps raw cohort attributes to a bounded set of slice labels; thread-safe."""

    def __init__(self, *, keys: Iterable[str], max_values_per_key: int, fleet: bool = False) -> None:
        if max_values_per_key < 1:
            raise ValueError(f"max_values_per_key must be at least 1, got {max_values_per_key}")
        self._keys = tuple(dict.fromkeys(keys))
        for key in self._keys:
            problem = cohort_key_problem(key)
            if problem is not None:
                raise ValueError(problem)
        self._max_values = max_values_per_key
        self._fleet = fleet
        self._models: dict[str, dict[str, BoundedLabel]] = {}
        self._undecided: dict[tuple[str, str], dict[str, None]] = {}
        """Per (model, key), the values waiting for the fleet's decision, in the order first seen."""
        self._lock = threading.Lock()

    @property
    def keys(self) -> tuple[str, ...]:
        return self._keys

    @property
    def max_values(self) -> int:
        return self._max_values

    def slices(self, model: str, cohort: Mapping[str, str], *, give_up: bool = False) -> tuple[str, ...] | None:
        """Slice labels of an event of ``model``: ``all`` first, then one per allowlisted key it carries. ``None``
        while a fleet guard waits for the decision of one of its values (see :meth:`values`); with ``give_up``,
        such a value counts as ``__other__`` instead."""
        labels = [ALL]
        for key, value in self.values(model, cohort):
            if value is None:
                if not give_up:
                    return None
                value = OTHER
            labels.append(slice_label(key, value))
        return tuple(labels)

    def values(self, model: str, cohort: Mapping[str, str]) -> list[tuple[str, str | None]]:
        """The allowlisted keys ``cohort`` carries, each with its value as ``model``'s bound lets it through (its
        own, or ``__other__``), in the allowlist's order. A fleet guard gives ``None`` for a value the fleet has
        not decided yet, and notes it for the next decision round (:meth:`undecided`)."""
        if not self._keys:
            return []
        bounds = self._models.get(model) or self._values_of(model)
        if not self._fleet:
            return [(key, bounded(cohort[key])) for key, bounded in bounds.items() if key in cohort]
        found: list[tuple[str, str | None]] = []
        for key, bounded in bounds.items():
            if key in cohort:
                value = cohort[key]
                label = bounded.known(value)
                found.append((key, label if label is not None else self._wait(model, key, value)))
        return found

    def label(self, model: str, key: str, value: str) -> str | None:
        """The label of one value of ``model``'s ``key`` if it is decided (``None`` while it is not)."""
        bounds = self._models.get(model)
        return None if bounds is None or key not in bounds else bounds[key].known(value)

    def undecided(self) -> dict[tuple[str, str], list[str]]:
        """Per (model, key), the values waiting for a decision, in the order first seen."""
        with self._lock:
            return {pair: list(values) for pair, values in self._undecided.items()}

    def kept(self) -> dict[tuple[str, str], list[str]]:
        """Per (model, key), the values kept so far (those that have any)."""
        with self._lock:
            models = list(self._models.items())
        return {
            (model, key): kept for model, bounds in models for key, bounded in bounds.items() if (kept := bounded.kept)
        }

    def admit(self, model: str, key: str, values: Iterable[str]) -> None:
        """Keep ``values``, the fleet's admitted values of ``model``'s ``key`` (at most the cap): each keeps its
        own label for good; once the cap is reached every other value is ``__other__``. The undecided values this
        settles are no longer waited for."""
        if key not in self._keys:
            return
        bounded = (self._models.get(model) or self._values_of(model))[key]
        bounded.keep(values)
        with self._lock:
            waiting = self._undecided.get((model, key))
            if waiting:
                for value in [value for value in waiting if bounded.known(value) is not None]:
                    del waiting[value]
                if not waiting:
                    del self._undecided[(model, key)]

    def forget(self, model: str) -> None:
        """Free ``model``'s slots (it is no longer owned); a fleet guard learns its values from the fleet again."""
        with self._lock:
            self._models.pop(model, None)
            for key in self._keys:
                self._undecided.pop((model, key), None)

    def _wait(self, model: str, key: str, value: str) -> str | None:
        """Note an undecided value: ``None`` (wait for the decision), or ``__other__`` when too many wait."""
        with self._lock:
            waiting = self._undecided.setdefault((model, key), {})
            if value in waiting or len(waiting) < max(self._max_values, UNDECIDED_PER_KEY):
                waiting[value] = None
                return None
        return OTHER

    def _values_of(self, model: str) -> dict[str, BoundedLabel]:
        with self._lock:
            return self._models.setdefault(model, {key: BoundedLabel(self._max_values) for key in self._keys})
