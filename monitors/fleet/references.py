"""Uploaded drift references: checked on the sidecar, stored in Redis, calibrated on by the owning monitor.

The sidecar that receives ``PUT /v1/models/{model}/reference`` checks the arrays and stores them
here with a fresh id; the model's owning monitor sees the new id and calibrates on it (the
sidecar never loads the detectors). Arrays are raw little-endian bytes with their shapes; no pickle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from redis.asyncio import ConnectionPool, Redis

from common import keys
from common.errors import InvalidInput
from common.probabilities import PROBABILITY_TOLERANCE
from common.redis import REDIS_DOWN, REDIS_FAILED, execute, text
from monitors.drift.reference import Reference

MAX_MARGIN = 1e6
"""Margins are capped here, as the sidecar caps the feed's ``margin``."""
_TINY = 1e-12
WRITE_TIMEOUT_S = 5.0
"""Least socket timeout of a reference's write, as the background writers' default (``redis_writer_timeout_s``):
the request path's short timeout (0.5 s) would answer a write that Redis applies a moment later as failed."""
WRITE_BYTES_PER_S = 16 * 1024 * 1024
"""Slowest rate assumed for a reference's bytes to reach Redis and be applied (a loaded host); the write's timeout
grows by its size over this, so 64 MiB gets 4 s more."""
_NUMERIC_KINDS = "iuf"
"""numpy dtype kinds read as numbers: integers and reals (not bools, complex, dates, text or bytes)."""


class WriteUnconfirmed(Exception):
    """A reference's write was sent but Redis did not confirm it (no answer in time, or the connection lost before
    the answer): it may yet be stored, under ``id``."""

    def __init__(self, reference_id: str) -> None:
        super().__init__(reference_id)
        self.id = reference_id


@dataclass(frozen=True, slots=True)
class StoredReference:
    id: str
    reference: Reference
    margin: npt.NDArray[np.float64] | None = None
    """Top-1 minus runner-up log-probability per row; ``None`` without probabilities (or stored before it was kept)."""


def margins_of(probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The feed's ``margin`` of probability rows: ``log p1 - log p2``, as the sidecar computes it for events."""
    p = np.array(probabilities, dtype=np.float64)
    rows = np.arange(len(p))
    predicted = p.argmax(axis=1)
    first = p[rows, predicted].copy()
    p[rows, predicted] = -1.0
    second = p.max(axis=1)  # -1 (so the floor) for a single class
    margin = np.log(np.maximum(first, _TINY)) - np.log(np.maximum(second, _TINY))
    return np.asarray(np.minimum(margin, MAX_MARGIN), dtype=np.float64)


def upload_from_arrays(embeddings: Any, probabilities: Any) -> tuple[Reference, npt.NDArray[np.float64] | None]:
    """:func:`reference_from_arrays` and the rows' margins (``None`` without probabilities)."""
    reference = reference_from_arrays(embeddings, probabilities)
    if probabilities is None:
        return reference, None
    return reference, margins_of(np.asarray(probabilities, dtype=np.float64))


def reference_from_arrays(embeddings: Any, probabilities: Any) -> Reference:
    """A drift reference from uploaded arrays; ``InvalidInput`` naming the field at fault."""
    x = _matrix(embeddings, "embeddings")
    if probabilities is None:
        return Reference(
            predicted=np.zeros(len(x), dtype=np.int64), confidence=np.ones(len(x)), embeddings=x, has_outputs=False
        )
    p = _matrix(probabilities, "probabilities").astype(np.float64)
    if p.shape[1] < 2:
        raise InvalidInput(
            f"probabilities: need at least 2 columns (one per class), got {p.shape[1]}", field="probabilities"
        )
    if len(p) != len(x):
        raise InvalidInput(f"probabilities: {len(p)} rows for {len(x)} embeddings", field="probabilities")
    if (p < 0).any() or (p > 1).any() or not (np.abs(p.sum(axis=1) - 1.0) <= PROBABILITY_TOLERANCE).all():
        raise InvalidInput(
            f"probabilities: every row must lie in [0, 1] and sum to 1 ± {PROBABILITY_TOLERANCE}", field="probabilities"
        )
    return Reference(predicted=p.argmax(axis=1).astype(np.int64), confidence=p.max(axis=1), embeddings=x)


def _matrix(value: Any, field_name: str) -> npt.NDArray[np.float32]:
    """``value`` as float32 rows. Its type is read first, without a ``dtype``: asked for float32 at once, numpy
    would read ``"0.12"`` as a number, drop a complex number's imaginary part and turn dates into integers."""
    try:
        found = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{field_name}: must be a rectangular array of numbers", field=field_name) from None
    if found.dtype.kind not in _NUMERIC_KINDS:
        raise InvalidInput(
            f"{field_name}: every value must be a real number, got {_kind_name(found.dtype)}", field=field_name
        )
    with np.errstate(over="ignore", invalid="ignore"):
        array = found.astype(np.float32, copy=False)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise InvalidInput(
            f"{field_name}: need a 2-D array with at least 2 rows, got shape {list(array.shape)}", field=field_name
        )
    if not np.isfinite(array).all():
        raise InvalidInput(f"{field_name}: every value must be a finite float32", field=field_name)
    return array


def _kind_name(dtype: np.dtype[Any]) -> str:
    """What a non-numeric array holds, in a client's words (a JSON list mixing types reads as text or objects)."""
    kinds = {"b": "booleans", "c": "complex numbers", "M": "dates", "m": "time spans", "U": "text", "S": "bytes"}
    return kinds.get(dtype.kind, f"values of type {dtype}" if dtype.kind == "V" else "non-numeric values")


def reference_fields(stored: StoredReference) -> dict[str, bytes | str | int]:
    """The hash fields ``stored`` is kept in (also to store it back, id and all, after Redis lost it)."""
    reference, margin = stored.reference, stored.margin
    if reference.embeddings is None:
        raise ValueError("embeddings: a stored reference needs embeddings")
    rows, dims = reference.embeddings.shape
    fields: dict[str, bytes | str | int] = {
        "id": stored.id,
        "rows": rows,
        "dims": dims,
        "embeddings": np.ascontiguousarray(reference.embeddings, dtype="<f4").tobytes(),
        "has_outputs": int(reference.has_outputs),
        "predicted": np.ascontiguousarray(reference.predicted, dtype="<i8").tobytes(),
        "confidence": np.ascontiguousarray(reference.confidence, dtype="<f8").tobytes(),
    }
    if margin is not None:
        fields["margin"] = np.ascontiguousarray(margin, dtype="<f8").tobytes()
    return fields


class ReferenceStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def put(self, model: str, reference: Reference, *, margin: npt.NDArray[np.float64] | None = None) -> str:
        """Store ``reference`` (and its rows' margins, if known) as the model's newest; returns its id.

        Written on a connection of its own whose timeout grows with the reference's size (``WRITE_TIMEOUT_S``,
        ``WRITE_BYTES_PER_S``), opened (and pinged) first: a failure to reach Redis then means nothing was sent,
        and is raised as it is. Once the write is under way, Redis may apply it however the call ends (no reply in
        time, the connection lost before the reply came), so the id is read back; ``WriteUnconfirmed`` when it is
        not (yet) the stored one: the write may still take effect. A refusal (a Redis error reply) is raised."""
        if reference.embeddings is None:
            raise ValueError("embeddings: a stored reference needs embeddings")
        reference_id = uuid.uuid4().hex
        fields = reference_fields(StoredReference(reference_id, reference, margin))
        size = sum(len(value) for value in fields.values() if isinstance(value, bytes))
        writer = self._writer(WRITE_TIMEOUT_S + size / WRITE_BYTES_PER_S)
        try:
            await writer.ping()  # connected: from here on a lost answer may hide an applied write
            pipe = writer.pipeline(transaction=True)
            pipe.delete(keys.drift_reference(model))
            pipe.hset(keys.drift_reference(model), mapping=fields)  # type: ignore[arg-type]
            pipe.sadd(keys.MONITORED_MODELS, model)
            try:
                await execute(pipe)
            except REDIS_DOWN:
                if await self._stored_id(model) != reference_id:
                    raise WriteUnconfirmed(reference_id) from None
        finally:
            await writer.aclose()
        return reference_id

    def _writer(self, timeout_s: float) -> Redis:
        """A one-connection client to the same Redis as ours, with a socket timeout of at least ``timeout_s``."""
        pool = self._redis.connection_pool
        options = dict(pool.connection_kwargs)
        options["socket_timeout"] = max(timeout_s, options.get("socket_timeout") or 0.0)
        return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, max_connections=1, **options))

    async def _stored_id(self, model: str) -> str | None:
        """The stored reference's id, or ``None`` when none or when Redis does not answer."""
        try:
            return await self.latest_id(model)
        except REDIS_FAILED:
            return None

    async def latest_id(self, model: str) -> str | None:
        return text(await self._redis.hget(keys.drift_reference(model), "id"))

    async def size(self, model: str) -> tuple[str, int, int] | None:
        """The stored reference's id, row count and embedding width, without reading its rows; ``None`` when there
        is none."""
        reference_id, rows, dims = await self._redis.hmget(keys.drift_reference(model), ["id", "rows", "dims"])
        found = text(reference_id)
        if found is None or rows is None or dims is None:
            return None
        return found, int(rows), int(dims)

    async def get(self, model: str) -> StoredReference | None:
        raw: dict[bytes, bytes] = await self._redis.hgetall(keys.drift_reference(model))  # type: ignore[assignment]
        if not raw:
            return None
        fields = {k.decode(): v for k, v in raw.items()}
        rows, dims = int(fields["rows"]), int(fields["dims"])
        embeddings = np.frombuffer(fields["embeddings"], dtype="<f4").reshape(rows, dims).astype(np.float32)
        reference = Reference(
            predicted=np.frombuffer(fields["predicted"], dtype="<i8").astype(np.int64),
            confidence=np.frombuffer(fields["confidence"], dtype="<f8").astype(np.float64),
            embeddings=embeddings,
            has_outputs=fields["has_outputs"] == b"1",
        )
        margin = fields.get("margin")  # absent from references stored before margins were kept
        return StoredReference(
            id=fields["id"].decode(),
            reference=reference,
            margin=None if margin is None else np.frombuffer(margin, dtype="<f8").astype(np.float64),
        )
