"""Semantic checks of one decoded event, and the figures every monitor needs from it."""

from __future__ import annotations

import base64
import binascii
import math
import re
from array import array
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import numpy as np

from sampler.contract import DTYPES, InputTensor
from service.errors import FieldError
from service.schemas import EventIn

PROBABILITY_TOLERANCE = 1e-3
_TINY = 1e-12
_LATEST_EPOCH_S = 4_102_444_800.0  # 2100-01-01
_NUMBER_BYTES = b"0123456789+-.eE \t\n\r,"
_BIG_EXPONENT = re.compile(rb"[eE]\+?\d{3}")


@dataclass(frozen=True, slots=True)
class Prediction:
    """A valid event with its scores summarised."""

    model: str
    version: str
    request_id: str
    timestamp: float
    received_at: float
    scores: np.ndarray
    """The logits or probabilities as sent (float64)."""
    from_logits: bool
    predicted: int
    confidence: float
    """Top-1 probability (softmax of the logits when logits were sent)."""
    margin: float
    """Top-1 minus top-2 logit (log-probabilities stand in for logits)."""
    embedding: bytes | None
    """The embedding as raw JSON; decoded off the request path."""
    embedding_dim: int
    cohort: dict[str, str]
    input: InputTensor | None
    label: int | None

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[0])


def validate(event: EventIn, *, received_at: float) -> Prediction:
    """The event as a :class:`Prediction`; raises ``FieldError`` naming the first bad field."""
    scores, from_logits = _scores_of(event)
    predicted, confidence, margin = summarise(scores, from_logits=from_logits)
    if event.label is not None and event.label >= scores.shape[0]:
        raise FieldError("label", f"class {event.label} out of range for {scores.shape[0]} classes")
    raw_embedding = bytes(event.embedding) or None
    if raw_embedding == b"null":
        raw_embedding = None
    return Prediction(
        model=event.model,
        version=event.model_version,
        request_id=event.request_id,
        timestamp=_timestamp_of(event.timestamp, received_at),
        received_at=received_at,
        scores=scores,
        from_logits=from_logits,
        predicted=predicted,
        confidence=confidence,
        margin=margin,
        embedding=raw_embedding,
        embedding_dim=embedding_length(raw_embedding) if raw_embedding else 0,
        cohort=event.cohort or {},
        input=_input_of(event.input),
        label=event.label,
    )


def summarise(scores: np.ndarray, *, from_logits: bool) -> tuple[int, float, float]:
    """Predicted class, top-1 probability and top-1 minus top-2 logit."""
    predicted = int(scores.argmax())
    second, first = np.partition(scores, -2)[-2:]
    if from_logits:
        confidence = 1.0 / float(np.exp(scores - first).sum())
        return predicted, confidence, float(first - second)
    margin = math.log(max(float(first), _TINY)) - math.log(max(float(second), _TINY))
    return predicted, float(first), margin


def _scores_of(event: EventIn) -> tuple[np.ndarray, bool]:
    if (event.logits is None) == (event.probabilities is None):
        raise FieldError("logits", "send exactly one of logits or probabilities", reason="missing_scores")
    from_logits = event.logits is not None
    field = "logits" if from_logits else "probabilities"
    scores = np.frombuffer(array("d", event.logits or event.probabilities or ()), dtype=np.float64)
    if not np.isfinite(scores).all():
        index = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise FieldError(f"{field}[{index}]", "must be a finite number", reason="non_finite")
    if not from_logits:
        low, high, total = float(scores.min()), float(scores.max()), float(scores.sum())
        if low < 0.0 or high > 1.0:
            raise FieldError("probabilities", "every value must lie in [0, 1]", reason="bad_probabilities")
        if abs(total - 1.0) > PROBABILITY_TOLERANCE:
            raise FieldError("probabilities", f"must sum to 1 ± {PROBABILITY_TOLERANCE}, got {total:.6g}",
                             reason="bad_probabilities")
    return scores, from_logits


def embedding_length(raw: bytes) -> int:
    """Length of a raw JSON embedding after checking it is a flat, non-empty list of finite numbers."""
    inner = raw[1:-1]
    if raw[:1] != b"[" or inner.translate(None, _NUMBER_BYTES):
        raise FieldError("embedding", "must be a flat list of numbers")
    if not inner.strip():
        raise FieldError("embedding", "must not be empty")
    if (b"e" in inner or b"E" in inner) and _BIG_EXPONENT.search(inner):
        try:
            msgspec.json.decode(raw, type=list[float])
        except msgspec.ValidationError as error:
            raise FieldError("embedding", "must hold finite numbers only", reason="non_finite") from error
    return inner.count(b",") + 1


def decode_embedding(raw: bytes) -> np.ndarray:
    """A raw embedding (already checked by :func:`embedding_length`) as float32."""
    return np.asarray(msgspec.json.decode(raw, type=list[float]), dtype=np.float32)


def _timestamp_of(value: str | float | None, received_at: float) -> float:
    if value is None:
        return received_at
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise FieldError("timestamp", f"not an RFC 3339 date-time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise FieldError("timestamp", "needs a UTC offset such as 'Z' or '+02:00' (RFC 3339)")
        value = parsed.timestamp()
    if not 0.0 < value < _LATEST_EPOCH_S:
        raise FieldError("timestamp", "epoch seconds out of range")
    return float(value)


def _input_of(value: Any) -> InputTensor | None:
    if value is None:
        return None
    if isinstance(value, list):
        return _nested_input(value)
    if value.dtype not in DTYPES:
        raise FieldError("input.dtype", f"unknown dtype {value.dtype!r}; use one of {', '.join(DTYPES)}")
    try:
        raw = base64.b64decode(value.data, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError("input.data", "not valid base64") from None
    dtype = DTYPES[value.dtype]
    expected = math.prod(value.shape) * dtype.itemsize
    if len(raw) != expected:
        raise FieldError("input.data", f"{len(raw)} bytes do not match shape {value.shape} of {value.dtype} "
                         f"({expected} bytes)", reason="shape_mismatch")
    if dtype.kind == "f" and not np.isfinite(np.frombuffer(raw, dtype=dtype)).all():
        raise FieldError("input.data", "holds NaN or infinite values", reason="non_finite")
    return InputTensor.model_construct(shape=tuple(value.shape), dtype=value.dtype, data=value.data)


def _nested_input(value: list[Any]) -> InputTensor:
    try:
        array_in = np.asarray(value)
    except ValueError:
        raise FieldError("input", "a nested list must be rectangular") from None
    if array_in.dtype.kind not in "iuf" or array_in.size == 0 or array_in.ndim > 8:
        raise FieldError("input", "a nested list must be a non-empty array of numbers (at most 8 dimensions)")
    as_float = array_in.astype(np.float32)
    if not np.isfinite(as_float).all():
        raise FieldError("input", "holds values that are not finite float32 numbers", reason="non_finite")
    return InputTensor.from_array(as_float)
