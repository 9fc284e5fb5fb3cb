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
from redis.asyncio import Redis

from common import keys
from common.errors import InvalidInput
from common.redis import execute, text
from monitors.drift.reference import Reference

MAX_MARGIN = 1e6
"""Margins are capped here, as the sidecar caps the feed's ``margin``."""
_TINY = 1e-12


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
    if len(p) != len(x):
        raise InvalidInput(f"probabilities: {len(p)} rows for {len(x)} embeddings", field="probabilities")
    if (p < 0).any() or (p > 1).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise InvalidInput("probabilities: every row must lie in [0, 1] and sum to 1 ± 1e-3", field="probabilities")
    return Reference(predicted=p.argmax(axis=1).astype(np.int64), confidence=p.max(axis=1), embeddings=x)


def _matrix(value: Any, field_name: str) -> npt.NDArray[np.float32]:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidInput(f"{field_name}: must be a rectangular array of numbers", field=field_name) from None
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise InvalidInput(
            f"{field_name}: need a 2-D array with at least 2 rows, got shape {list(array.shape)}", field=field_name
        )
    if not np.isfinite(array).all():
        raise InvalidInput(f"{field_name}: every value must be a finite float32", field=field_name)
    return array


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
        """Store ``reference`` (and its rows' margins, if known) as the model's newest; returns its id."""
        if reference.embeddings is None:
            raise ValueError("embeddings: a stored reference needs embeddings")
        reference_id = uuid.uuid4().hex
        fields = reference_fields(StoredReference(reference_id, reference, margin))
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.drift_reference(model))
        pipe.hset(keys.drift_reference(model), mapping=fields)  # type: ignore[arg-type]
        pipe.sadd(keys.MONITORED_MODELS, model)
        await execute(pipe)
        return reference_id

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
