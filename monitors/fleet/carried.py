"""The detectors' latest verdicts, kept in Redis by a model's owner and carried on by the next one.

The verdicts live in the drift monitor's memory: an owner killed takes them along, and its successor, which
adopts the stored calibration, would have none until new traffic completes its detectors' windows (an ongoing
alarm, its ``since`` and ``vai_drift_detected`` gone meanwhile). So the owner writes, with every status it
publishes and in the same lease-fenced call, :class:`StoredVerdicts` under ``keys.drift_verdicts(model)``: the
verdicts ``/drift`` shows, the records examined and the calibration they are of (``vai:drift-version``'s value).
One key per model of a few hundred bytes per detector (a closed set of seven), replaced, never appended to; and
replaced by an empty record of the new calibration in the very call that stores a new calibrated state
(:meth:`DriftStates.store`), so a verdict of another calibration (a reference replaced, settings changed) is never
there to carry.

A new owner that adopts the stored calibration without recalibrating reads the record once and carries it on
only when it is of that calibration (:func:`load`). Each detector then shows the carried verdict (``carried``)
until the owner's own first result of it replaces it; an alarm that goes on under the new owner keeps its
``since`` for as long as every one of the new owner's results of that detector is drift (followed result by
result, :meth:`CarriedVerdicts.observe`). The gauges are set from the carried verdicts at the takeover
(:class:`FleetDriftMetrics`), without counting any test or alarm: the counters count the tests each owner ran.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Literal

from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from common import keys
from common.redis import text
from monitors.drift.base import DriftResult
from monitors.drift.metrics import DriftMetrics
from monitors.fleet.results import CarriedOver, DetectorVerdict, DriftStatus

log = logging.getLogger(__name__)


class StoredVerdicts(BaseModel):
    """The latest verdicts of a model's detectors under one calibration (format version 1)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Literal[1] = 1
    calibration: str
    """The calibrated state the verdicts are of (``vai:drift-version``: an upload id or ``warmup-…``)."""
    owner: str
    updated_at: float
    """When the owner wrote it (epoch seconds, Redis's clock as the status's ``updated_at``)."""
    examined: int = 0
    verdicts: tuple[DetectorVerdict, ...] = ()

    @classmethod
    def of(cls, status: DriftStatus, calibration: str) -> StoredVerdicts:
        return cls(
            calibration=calibration,
            owner=status.owner,
            updated_at=status.updated_at,
            examined=status.examined,
            verdicts=tuple(v.model_copy(update={"carried": False}) for v in status.detectors),
        )


def verdict(result: DriftResult, *, since: float | None = None) -> DetectorVerdict:
    """The published form of a detector's result (``since`` in place of its own, when given)."""
    return DetectorVerdict(
        name=result.name,
        score=result.score,
        threshold=result.threshold,
        drift=result.drift,
        since=result.since if since is None else since,
        p_value=result.p_value,
    )


class CarriedVerdicts:
    """The verdicts a new owner carried over, merged with its own results as they come. Thread-safe: the detection
    thread reports results (:meth:`observe`) while the event loop publishes (:meth:`merge`)."""

    def __init__(self, stored: StoredVerdicts) -> None:
        self.stored = stored
        self._carried = {v.name: v for v in stored.verdicts}
        self._first: dict[str, float | None] = {}
        """Per carried detector this owner has a result of: the ``since`` of its run of drift results if the run began
        with its first result of the detector (a carried alarm went on), ``None`` once one of them was not drift."""
        self._lock = threading.Lock()

    @property
    def verdicts(self) -> tuple[DetectorVerdict, ...]:
        return self.stored.verdicts

    @property
    def examined(self) -> int:
        return self.stored.examined

    @property
    def over(self) -> CarriedOver:
        return CarriedOver(owner=self.stored.owner, updated_at=self.stored.updated_at, examined=self.stored.examined)

    def observe(self, result: DriftResult) -> None:
        """One of this owner's results, in the order the monitor reached them."""
        if result.name not in self._carried:
            return
        with self._lock:
            if result.name not in self._first:
                self._first[result.name] = result.since if result.drift else None
            elif not result.drift:
                self._first[result.name] = None

    def seen(self, name: str) -> bool:
        with self._lock:
            return name in self._first

    def merge(self, own: Sequence[DriftResult]) -> tuple[DetectorVerdict, ...]:
        """The verdicts to publish: this owner's results, each alarm that went on since the takeover with the
        carried ``since``, and the carried verdicts of the detectors it has no result of yet."""
        mine = {r.name: r for r in own}
        merged = []
        with self._lock:
            for name in sorted(mine.keys() | self._carried.keys()):
                result, carried = mine.get(name), self._carried.get(name)
                if result is None:
                    if carried is not None:  # always: one of the two holds every name
                        merged.append(carried.model_copy(update={"carried": True}))
                    continue
                since = None
                if carried is not None and carried.drift and result.drift:
                    first = self._first.get(name, result.since)  # not observed yet: its first result, this one
                    since = carried.since if first is not None and first == result.since else None
                merged.append(verdict(result, since=since))
        return tuple(merged)


async def load(redis: Redis, model: str, *, calibration: str) -> CarriedVerdicts | None:
    """The verdicts stored for ``model`` if they are of ``calibration`` (the state a new owner adopted)."""
    body = text(await redis.get(keys.drift_verdicts(model)))
    if body is None:
        return None
    try:
        stored = StoredVerdicts.model_validate_json(body)
    except ValidationError as error:
        log.warning("drift verdicts of %s stored in Redis not carried over (unreadable: %s)", model, error)
        return None
    if stored.calibration != calibration:
        log.info(
            "drift verdicts of %s not carried over: they are of calibration %s, the adopted one is %s",
            model,
            stored.calibration,
            calibration,
        )
        return None
    if not stored.verdicts and not stored.examined:
        return None
    log.info("drift verdicts of %s carried over from %s (%d detectors)", model, stored.owner, len(stored.verdicts))
    return CarriedVerdicts(stored)


class FleetDriftMetrics(DriftMetrics):
    """The drift metrics of a monitor process, which also show the verdicts an owner carried over (the gauges alone)
    and report each of the owner's own results to them."""

    def __init__(self, *, registry: CollectorRegistry) -> None:
        super().__init__(registry=registry)
        self._carried: dict[str, CarriedVerdicts] = {}

    def carry(self, model: str, carried: CarriedVerdicts | None) -> None:
        """Show ``carried`` as ``model``'s latest verdicts until its own results replace them (``None``: none)."""
        if carried is None:
            self._carried.pop(model, None)
            return
        self._carried[model] = carried
        for v in carried.verdicts:
            if carried.seen(v.name):
                continue  # an own result already replaced it
            self.show(model, v.name, score=v.score, threshold=v.threshold, drift=v.drift, p_value=v.p_value)

    def record(self, model: str, result: DriftResult) -> None:
        super().record(model, result)
        carried = self._carried.get(model)
        if carried is not None:
            carried.observe(result)

    def forget(self, model: str) -> None:
        self._carried.pop(model, None)
        super().forget(model)
