"""The owner's window of recent prediction confidences (behind the accuracy estimates) kept in Redis for the next owner.

The records a monitor examined have left the prediction feed, and most carry no label, so the labelled feed
cannot rebuild the window: the owner writes it whole under ``keys.recent_predictions(model)`` with each quality
report (lease-fenced, one ``SET … PX`` of the window's horizon, so an unowned model's copy goes with the data it
could still serve). Versioned JSON (:class:`StoredWindow`): per (version, cohort slice) ring, as
:meth:`PredictionWindow.snapshots` cuts it, each prediction's age at the write (float32 seconds) and its
confidence (float64, exactly as the estimates compare it with a threshold). At most ``VAI_ESTIMATE_WINDOW_MAX``
predictions per ring, 12 bytes each before base64: a slice of a cohort key holds part of its version's ring, so a
model stores at most versions × (1 + cohort keys) × ``VAI_ESTIMATE_WINDOW_MAX`` × 16 bytes, ~160 KB per version
and key at the defaults. A new owner restores it before it reads the feed, each prediction aged by the time
since the write (Redis's clock at both ends): the estimates are answered at once, over as many predictions as
its predecessor's at its last report (what it examined after that report is missing). A copy that does not read
back (another format) is ignored, logged.

With the rings, read in the same step (:meth:`PredictionWindow.export`), it stores the ids of the feed entries
counted in them and not yet acknowledged (format 2): those its predecessor read and never acknowledged, the new
owner claims and examines again, and does not count them again; those read after the write it counts. Their
number is bounded by what the owner holds unexamined, at most ``VAI_DRIFT_BUFFER_EVENTS`` (~20 bytes each). A
copy of format 1 (the previous release's) has none: what it counted and left pending is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, StringConstraints
from redis.asyncio import Redis

from common import keys
from common.codec import EncodedArray
from common.redis import execute, queue_script, text
from monitors.fleet.lease import Leases
from monitors.prediction_window import PredictionWindow, RecentSeries, WindowCopy

log = logging.getLogger(__name__)

_SAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""


class StoredSeries(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    cohort: str
    ages_s: EncodedArray
    """Seconds between each prediction's arrival and :attr:`StoredWindow.at`, float32, oldest first."""
    confidence: EncodedArray
    """Top-1 probabilities, float64, in the same order."""


EntryId = Annotated[str, StringConstraints(pattern=r"^[0-9]+-[0-9]+$", max_length=41)]
"""A stream entry's id (``milliseconds-sequence``)."""


class StoredWindow(BaseModel):
    """A model's window of recent prediction confidences (format version 2; version 1, without ``entries``, is
    read as having none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1, 2] = 2
    owner: str
    at: float
    """Redis's clock when it was written (epoch seconds)."""
    series: tuple[StoredSeries, ...] = ()
    entries: tuple[EntryId, ...] = ()
    """Ids of the feed entries counted in ``series`` and not acknowledged at the write, in id order (format 2)."""


def encode(copy: WindowCopy, *, owner: str, at: float) -> str:
    """The JSON of ``copy`` (:meth:`PredictionWindow.export`) written at ``at`` (Redis's clock)."""
    stored = tuple(
        StoredSeries(
            version=s.version,
            cohort=s.cohort,
            ages_s=EncodedArray.of(np.asarray(s.ages_s, dtype=np.float32)),
            confidence=EncodedArray.of(np.asarray(s.confidence, dtype=np.float64)),
        )
        for s in copy.series
    )
    entries = tuple(sorted((entry.decode() for entry in copy.entries), key=_id_order))
    return StoredWindow(owner=owner, at=at, series=stored, entries=entries).model_dump_json()


def decode(body: str, *, now: float) -> WindowCopy:
    """The rings of a stored window, aged to ``now`` (Redis's clock), and its feed entries; ``ValueError`` when it
    does not read back."""
    stored = StoredWindow.model_validate_json(body)
    elapsed = max(now - stored.at, 0.0)
    found = []
    for s in stored.series:
        ages, confidence = s.ages_s.decode().astype(np.float64), s.confidence.decode().astype(np.float64)
        if ages.ndim != 1 or ages.shape != confidence.shape:
            raise ValueError(f"series {s.version}/{s.cohort}: {ages.shape} ages for {confidence.shape} confidences")
        if not np.all((confidence >= 0.0) & (confidence <= 1.0)):
            raise ValueError(f"series {s.version}/{s.cohort}: confidences outside [0, 1]")
        found.append(RecentSeries(s.version, s.cohort, ages + elapsed, confidence))
    return WindowCopy(found, frozenset(entry.encode() for entry in stored.entries))


def _id_order(entry: str) -> tuple[int, int]:
    milliseconds, sequence = entry.split("-")
    return int(milliseconds), int(sequence)


class RecentStore:
    """Writes (as the owner) and reads a model's stored window of recent predictions."""

    def __init__(self, redis: Redis, leases: Leases, *, horizon_s: float) -> None:
        self._redis = redis
        self._leases = leases
        self._ttl_ms = max(int(horizon_s * 1000), 1)

    async def save(self, model: str, body: str) -> bool:
        """Store ``body`` (:func:`encode`) if this process owns ``model``."""
        pipe = self._redis.pipeline(transaction=False)
        names = [keys.monitor_lease(model), keys.recent_predictions(model)]
        queue_script(pipe, _SAVE, names, [self._leases.owner, body, self._ttl_ms])
        (written,) = await execute(pipe)
        return bool(written)

    async def restore(self, model: str, window: PredictionWindow, *, version: Callable[[str], str] = str) -> int:
        """Put the stored window of ``model`` back into ``window``; returns the predictions put back."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.recent_predictions(model))
        pipe.time()
        body, (seconds, microseconds) = await execute(pipe)
        if body is None:
            return 0
        try:
            copy = await asyncio.to_thread(decode, text(body), now=seconds + microseconds / 1e6)
        except ValueError as error:  # pydantic's ValidationError is one
            log.warning("ignoring the stored window of recent predictions of %s: %s", model, error)
            return 0
        restored = window.restore(model, copy, version=version)
        log.info("window of recent predictions of %s restored from Redis: %d predictions", model, restored)
        return restored
