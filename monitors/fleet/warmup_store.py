"""A model's drift warm-up kept in Redis as its owner collects it, so that the next owner resumes it.

A warm-up's rows leave the feed once examined, so they live on only here: a hash under
``keys.drift_warmup(model)`` of chunks appended as the owner collects them (never the whole
warm-up again, except after a fresh start), each field named by the first row it holds, and
``next``, the rows stored. A chunk is a header (``<BII``: format version, rows, embedding width,
0 for none) then the rows' predicted classes (``<i8``), top-1 probabilities (``<f8``) and
embeddings (``<f4``), raw little-endian bytes, no pickle. At most ``reference_events`` rows ×
(16 + 4 × width) bytes: 5,000 × 768-d float32 ≈ 15 MB per warming model.

Only the lease holder writes (each write checks the lease in the same Lua call, as
``Leases.set_if_owner`` does). Every write sets a TTL of :data:`TTL_S`, and the owner refreshes
it while it holds the model, so a warm-up nobody owns goes after that long. The owner deletes it
once its monitor collects no warm-up any more (the state calibrated on it stored, a reference
uploaded). A copy that does not read back whole (a missing chunk, more rows than
``reference_events``, another format) is dropped, logged once, and the warm-up starts afresh; one
whose embeddings turn out to have another width than the feed's is let go by the monitor that
resumed it (``DriftMonitor.resume_warmup``), and the copy replaced by its fresh warm-up.
"""

from __future__ import annotations

import logging
import struct
import time

import numpy as np
from redis.asyncio import Redis

from common import keys
from common.redis import execute, queue_script
from monitors.drift.base import DriftBatch
from monitors.drift.monitor import DriftMonitor
from monitors.drift.tumbling import concat
from monitors.drift.warmup import WarmupMark
from monitors.fleet.lease import Leases

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TTL_S = 24 * 3600
"""A warm-up in Redis outlives its last owner by this long (a day: a model whose monitors all stopped, or that is
no longer monitored, does not keep ~15 MB for ever)."""
TOUCH_EVERY_S = 3600.0
"""The owner of a model whose warm-up collects nothing new refreshes its TTL this often."""
_HEADER = struct.Struct("<BII")
_NEXT = b"next"

_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then redis.call('DEL', KEYS[2])
elseif (redis.call('HGET', KEYS[2], 'next') or '0') ~= ARGV[3] then return -1 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5], 'next', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
"""Append the chunk of rows ``ARGV[3]`` (0: the first, replacing what is stored) if this process owns the model
and the stored rows end where it starts; 0 when it does not own it, -1 when the stored rows do not end there."""
_DELETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""
_TOUCH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[2], ARGV[2])
"""


class WarmupFormatError(ValueError):
    """A stored warm-up that does not read back whole."""


def encode_chunk(batch: DriftBatch) -> bytes:
    """Rows of a warm-up (every one with its embedding row, or none with one) as one chunk."""
    if batch.embedded is not None:
        raise ValueError("a warm-up chunk holds whole events: every one with its embedding row, or none with one")
    width = 0 if batch.embeddings is None else int(batch.embeddings.shape[1])
    parts = [
        _HEADER.pack(FORMAT_VERSION, len(batch), width),
        np.ascontiguousarray(batch.predicted, dtype="<i8").tobytes(),
        np.ascontiguousarray(batch.confidence, dtype="<f8").tobytes(),
    ]
    if batch.embeddings is not None:
        parts.append(np.ascontiguousarray(batch.embeddings, dtype="<f4").tobytes())
    return b"".join(parts)


def decode_chunk(blob: bytes) -> DriftBatch:
    if len(blob) < _HEADER.size:
        raise WarmupFormatError(f"a chunk of {len(blob)} bytes")
    version, rows, width = _HEADER.unpack_from(blob)
    if version != FORMAT_VERSION or rows < 1:
        raise WarmupFormatError(f"a chunk of format {version} with {rows} rows")
    if len(blob) != _HEADER.size + rows * (16 + 4 * width):
        raise WarmupFormatError(f"a chunk of {len(blob)} bytes for {rows} rows of width {width}")
    at = _HEADER.size
    predicted = np.frombuffer(blob, dtype="<i8", count=rows, offset=at).astype(np.int64)
    confidence = np.frombuffer(blob, dtype="<f8", count=rows, offset=at + 8 * rows).astype(np.float64)
    embeddings = None
    if width:
        flat = np.frombuffer(blob, dtype="<f4", count=rows * width, offset=at + 16 * rows)
        embeddings = flat.reshape(rows, width).astype(np.float32)
    return DriftBatch(predicted=predicted, confidence=confidence, embeddings=embeddings, time_s=0.0)


def decode(fields: dict[bytes, bytes], *, max_rows: int) -> DriftBatch | None:
    """The rows of a stored warm-up (``HGETALL``), in order; ``None`` when none is stored. Raises
    :class:`WarmupFormatError` saying what is wrong with it, or when it holds more than ``max_rows``."""
    if not fields:
        return None
    try:
        stored = int(fields[_NEXT])
        chunks = sorted((int(name), blob) for name, blob in fields.items() if name != _NEXT)
    except (KeyError, ValueError):
        raise WarmupFormatError(f"fields {sorted(fields)[:5]}") from None
    rows: list[DriftBatch] = []
    at = 0
    for start, blob in chunks:
        if start != at:
            raise WarmupFormatError(f"rows {at} to {start} missing")
        rows.append(decode_chunk(blob))
        at += len(rows[-1])
    if at != stored or not rows:
        raise WarmupFormatError(f"{at} rows in its chunks, {stored} said")
    if len({None if r.embeddings is None else r.embeddings.shape[1] for r in rows}) > 1:
        raise WarmupFormatError("chunks of different embedding widths")
    if at > max_rows:
        raise WarmupFormatError(f"{at} rows, more than reference_events={max_rows}")
    return concat(rows)


class WarmupStore:
    """The warm-ups in Redis, read by a new owner and written by the lease holder."""

    def __init__(self, redis: Redis, leases: Leases) -> None:
        self._redis = redis
        self._leases = leases

    async def load(self, model: str, *, max_rows: int) -> DriftBatch | None:
        """The stored warm-up of ``model``; one that does not read back whole is dropped (logged) and ``None``."""
        fields: dict[bytes, bytes] = await self._redis.hgetall(keys.drift_warmup(model))  # type: ignore[assignment]
        try:
            return decode(fields, max_rows=max_rows)
        except WarmupFormatError as error:
            log.warning("drift warm-up of %s stored in Redis dropped (%s): collecting a fresh one", model, error)
            await self.delete(model)
            return None

    async def append(self, model: str, start: int, rows: DriftBatch) -> int:
        """Store ``rows`` as the warm-up's rows from ``start`` on (0: replacing what is stored). Returns 1 when
        written, 0 when this process does not own the model, -1 when the stored rows do not end at ``start``."""
        args: list[bytes | str | int] = [self._leases.owner, TTL_S * 1000, start, start + len(rows), encode_chunk(rows)]
        return int(await self._eval(_APPEND, model, args))

    async def delete(self, model: str) -> bool:
        """Delete the stored warm-up, if this process owns the model."""
        return bool(await self._eval(_DELETE, model, [self._leases.owner]))

    async def touch(self, model: str) -> bool:
        """Refresh its TTL, if this process owns the model."""
        return bool(await self._eval(_TOUCH, model, [self._leases.owner, TTL_S * 1000]))

    async def _eval(self, script: str, model: str, args: list[bytes | str | int]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, script, [keys.monitor_lease(model), keys.drift_warmup(model)], args)
        (answer,) = await execute(pipe)
        return int(answer)


class WarmupCopy:
    """Keeps the warm-up stored in Redis in step with an owned model's drift monitor (one per owned model)."""

    def __init__(self, model: str, store: WarmupStore) -> None:
        self._model = model
        self._store = store
        self._monitor: DriftMonitor | None = None
        self._mark: WarmupMark | None = None
        """What is stored of the monitor's warm-up; ``None``: not known (the next write replaces what is stored)."""
        self._deleted = False
        self._written_s = time.monotonic()

    async def sync(self, monitor: DriftMonitor, *, resumed: WarmupMark | None, keep: bool) -> None:
        """Store what ``monitor`` collected since the last call, in one chunk. ``resumed``: what of its warm-up was
        in Redis when it started (it resumed that). ``keep``: the monitor collects no warm-up, but the state it
        calibrated on its warm-up is not stored yet (until then, the next owner would resume the warm-up)."""
        if monitor is not self._monitor:
            self._monitor, self._mark, self._deleted = monitor, resumed, False
        rows = monitor.warmup_rows(self._mark)
        if rows is None:
            if not keep and not self._deleted:
                await self._store.delete(self._model)
                self._deleted = True
            return
        if rows.batch is None:
            await self._nothing_new(rows.epoch)
            return
        written = await self._store.append(self._model, rows.start, rows.batch)
        if written == 1:
            self._mark, self._deleted = WarmupMark(rows.epoch, rows.start + len(rows.batch)), False
            self._written_s = time.monotonic()
        elif written == -1:  # the stored rows end elsewhere (expired, say): the next round stores them all
            log.info("drift warm-up of %s in Redis out of step with its owner: storing it anew", self._model)
            self._mark = None
        # 0: the lease is lost, and the next lease round drops the model

    async def _nothing_new(self, epoch: int) -> None:
        if self._mark is None or self._mark.epoch != epoch:  # a fresh warm-up that has no rows yet
            await self._store.delete(self._model)
            self._mark = WarmupMark(epoch, 0)
        elif time.monotonic() - self._written_s > TOUCH_EVERY_S:
            await self._store.touch(self._model)
            self._written_s = time.monotonic()
