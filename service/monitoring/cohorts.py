"""Which cohort slices of a model the monitors know, read from what the fleet stored, and the errors that say a
slice is unknown or has no labelled predictions yet. No HTTP here.

A slice is known when the owning monitor's published report names it, or when the fleet admitted its value
(``monitors.cohort_admission``: one set per model and cohort key, every value some replica saw, up to
``VAI_MAX_COHORT_VALUES``): a value seen in traffic whose labels have not come yet is known, not a typo. Each key
in use also has its shared slice ``key=__other__``, where values past the cap count.
"""

from __future__ import annotations

from redis.asyncio import Redis

from common import keys
from common.cardinality import OTHER
from common.errors import NotFound, RedisUnavailable
from common.redis import REDIS_FAILED, execute, text
from monitors.cohorts import ALL, slice_label
from monitors.fleet.results import QualityReport

LISTED = 30
"""Most known slices an error names (the rest are counted)."""


class KnownCohorts:
    """Checks a slice asked of the calibration routes against the slices the monitors know."""

    def __init__(self, redis: Redis, *, cohort_keys: tuple[str, ...]) -> None:
        self._redis = redis
        self._keys = cohort_keys
        """This sidecar's ``VAI_COHORT_KEYS``, the keys whose admitted values are listed in an error."""

    async def check(self, model: str, cohort: str, report: QualityReport | None) -> None:
        """``NotFound`` naming ``cohort`` (``key=value``) and the known slices unless the monitors know it; Redis is
        read only when ``report`` does not name it."""
        if report is not None and cohort in _named(report):
            return
        known = await self.known(model, cohort.partition("=")[0], report)
        if cohort not in known:
            raise _unknown(model, cohort, known)

    async def known(self, model: str, key: str, report: QualityReport | None) -> list[str]:
        """Every slice of ``model`` the monitors know, ``all`` first: those ``report`` names and, for each of this
        sidecar's cohort keys and ``key``, the values the fleet admitted and ``key=__other__``."""
        asked = list(dict.fromkeys((*self._keys, key)))
        pipe = self._redis.pipeline(transaction=False)
        for name in asked:
            pipe.smembers(keys.cohort_values(model, name))
        try:
            admitted = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: cohorts not read") from None
        found = set() if report is None else _named(report)
        for name, values in zip(asked, admitted, strict=True):
            if values or name in self._keys:
                found.add(slice_label(name, OTHER))
                found.update(slice_label(name, text(value)) for value in values)
        found.discard(ALL)
        return [ALL, *sorted(found)]


def no_labels_yet(model: str, *, version: str | None, cohort: str) -> NotFound:
    """A known model, version and cohort without one labelled prediction in the monitors' window."""
    field = "cohort" if cohort != ALL else "version" if version is not None else "model"
    where = "".join(
        (f" of version {version!r}" if version is not None else "", f" in {cohort}" if cohort != ALL else "")
    )
    return NotFound(
        f"{field}: no labelled predictions of {model!r}{where} in the calibration window yet "
        "(labels join predictions through POST /v1/labels)",
        field=field,
    )


def _named(report: QualityReport) -> set[str]:
    return {series.cohort for series in report.series} | {estimate.cohort for estimate in report.estimates}


def listed(known: list[str]) -> str:
    """``known`` as an error names them: the first ``LISTED``, the rest counted."""
    return ", ".join(known[:LISTED]) + (f" and {len(known) - LISTED} more" if len(known) > LISTED else "")


def _unknown(model: str, cohort: str, known: list[str]) -> NotFound:
    return NotFound(
        f"cohort: the monitors know no cohort {cohort!r} of {model!r} (known: {listed(known)}); a cohort is all or "
        "key=value, its key one of VAI_COHORT_KEYS, and values past VAI_MAX_COHORT_VALUES count as key=__other__",
        field="cohort",
    )
