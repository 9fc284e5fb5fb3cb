"""Semantic checks of one decoded event, and the figures every monitor needs from it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from common.timestamps import NotFinite, NoUtcOffset, TimestampError, parse_timestamp
from sampler.contract import InputTensor
from service.errors import FieldError
from service.schemas import EventIn
from service.tensors import BinaryTensor, Vector, tensor_of, vector_of

PROBABILITY_TOLERANCE = 1e-3
MAX_MARGIN = 1e6
"""Margins are capped here so that one absurd event cannot make the histogram's sum infinite."""
_TINY = 1e-12
_EXP_SAFE_SPREAD = 700.0
"""exp(-700) is a normal double: logits spread less than this need no floating-point error handling."""
_LATEST_EPOCH_S = 4_102_444_800.0  # 2100-01-01
_NUMBER_TYPES = (int, float)  # not bool: JSON true is no number
_MIN_CLASSES, _MAX_CLASSES = 2, 100_000


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~2 µs more to build, per event
class Prediction:
    """A valid event with its scores summarised."""

    model: str
    version: str
    request_id: str
    timestamp: float
    received_at: float
    scores: Vector
    """The logits or probabilities: float32 when sent as a float32 tensor, else float64."""
    from_logits: bool
    predicted: int
    confidence: float
    """Top-1 probability (softmax of the logits when logits were sent)."""
    margin: float
    """Top-1 minus top-2 logit (log-probabilities stand in for logits)."""
    embedding: Vector | None
    cohort: dict[str, str]
    input: InputTensor | None
    label: int | None

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.shape[0]) if self.embedding is not None else 0

    @property
    def num_classes(self) -> int:
        return int(self.scores.shape[0])


@dataclass(slots=True)
class Checked:
    """An event that passed every check of its own; its scores get summarised with its request's others."""

    event: EventIn
    timestamp: float
    scores: Vector
    from_logits: bool
    embedding: Vector | None
    input: InputTensor | None

    @property
    def model(self) -> str:
        return self.event.model

    @property
    def request_id(self) -> str:
        return self.event.request_id

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.shape[0]) if self.embedding is not None else 0


def check(event: EventIn, *, received_at: float) -> Checked:
    """Every check of one event; raises ``FieldError`` naming the first bad field."""
    scores, from_logits = _scores_of(event)
    if event.label is not None and event.label >= scores.shape[0]:
        raise FieldError("label", f"class {event.label} out of range for {scores.shape[0]} classes")
    # Positional: keyword arguments to a dataclass cost ~3x as much, and this runs once per event.
    # Order: event, timestamp, scores, from_logits, embedding, input.
    return Checked(
        event,
        _timestamp_of(event.timestamp, received_at),
        scores,
        from_logits,
        _embedding_of(event.embedding),
        _input_of(event.input),
    )


def predictions(checked: list[Checked], *, received_at: float) -> list[Prediction]:
    """The checked events as predictions, their scores summarised in one numpy pass per shape."""
    summaries: list[tuple[int, float, float]] = [(0, 0.0, 0.0)] * len(checked)
    groups: dict[tuple[int, bool], list[int]] = {}
    for index, item in enumerate(checked):
        groups.setdefault((item.scores.shape[0], item.from_logits), []).append(index)
    for (_, from_logits), indices in groups.items():
        found = summarise_rows([checked[i].scores for i in indices], from_logits=from_logits)
        for index, summary in zip(indices, found, strict=True):
            summaries[index] = summary
    # Positional, in field order (model, version, request_id, timestamp, received_at, scores, from_logits,
    # predicted, confidence, margin, embedding, cohort, input, label): ~0.7 µs less per event than keywords.
    return [
        Prediction(
            item.event.model,
            item.event.model_version,
            item.event.request_id,
            item.timestamp,
            received_at,
            item.scores,
            item.from_logits,
            predicted,
            confidence,
            margin,
            item.embedding,
            item.event.cohort or {},
            item.input,
            item.event.label,
        )
        for item, (predicted, confidence, margin) in zip(checked, summaries, strict=True)
    ]


def summarise(scores: Vector, *, from_logits: bool) -> tuple[int, float, float]:
    """Predicted class, top-1 probability and top-1 minus top-2 logit (log-probability) of one score vector."""
    return summarise_rows([scores], from_logits=from_logits)[0]


def summarise_rows(rows: list[Vector], *, from_logits: bool) -> list[tuple[int, float, float]]:
    """Predicted class, top-1 probability and top-1 minus top-2 logit of equally long score vectors, vectorised.

    The arithmetic runs in place on one stacked copy: fresh temporaries of a request's worth of scores
    cost more in memory traffic than the arithmetic itself. The softmax's exponentials are taken in
    float32, which numpy vectorises on every x86-64 CPU (its float64 ``exp`` only with AVX-512): ~4x
    less time for the most expensive step of ingest, at a relative error of the confidence below
    1e-7 — far finer than any histogram bucket, sampling threshold or calibration bin. The margin
    comes from the scores themselves, in their own precision.
    """
    scores = np.concatenate(rows).reshape(len(rows), -1)  # as np.stack (the rows are alike), at half the cost
    index = np.arange(scores.shape[0])
    predicted = scores.argmax(axis=1)
    first = scores[index, predicted]
    if not from_logits:
        scores[index, predicted] = -1.0
        second = scores.max(axis=1)
        margin = np.minimum(np.log(np.maximum(first, _TINY)) - np.log(np.maximum(second, _TINY)), MAX_MARGIN)
        return list(zip(predicted.tolist(), first.tolist(), margin.tolist(), strict=True))
    with np.errstate(over="ignore", under="ignore"):  # finite logits 1e308 apart overflow to -inf, exp() to 0
        np.subtract(scores, first[:, None], out=scores)  # <= 0; exactly 0 at the predicted class
        scores[index, predicted] = -np.inf
        gap = scores.max(axis=1)  # second minus first
        weights = scores if scores.dtype == np.float32 else scores.astype(np.float32)
        np.exp(weights, out=weights)
    confidence = 1.0 / (1.0 + weights.sum(axis=1, dtype=np.float64))
    margin = np.minimum(-gap, MAX_MARGIN)
    return list(zip(predicted.tolist(), confidence.tolist(), margin.tolist(), strict=True))


def softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Probabilities of finite logits, however far apart (np.errstate only when they could overflow)."""
    top = float(logits.max())
    weights: npt.NDArray[np.float64]
    if top - float(logits.min()) <= _EXP_SAFE_SPREAD:
        weights = np.exp(logits - top)
    else:
        with np.errstate(over="ignore", under="ignore"):  # logits 1e308 apart overflow to -inf, whose exp is 0
            weights = np.exp(logits - top)
    weights /= weights.sum()
    return weights


def _scores_of(event: EventIn) -> tuple[Vector, bool]:
    logits = numbers_of(event.logits, "logits")
    probabilities = numbers_of(event.probabilities, "probabilities")
    if (logits is None) == (probabilities is None):
        raise FieldError("logits", "send exactly one of logits or probabilities", reason="missing_scores")
    field = "logits" if logits is not None else "probabilities"
    scores: Vector = logits if logits is not None else probabilities  # type: ignore[assignment]
    if not _MIN_CLASSES <= scores.shape[0] <= _MAX_CLASSES:
        raise FieldError(
            field, f"needs {_MIN_CLASSES} to {_MAX_CLASSES} values, got {scores.shape[0]}", reason="bad_length"
        )
    if probabilities is not None:
        low, high, total = float(scores.min()), float(scores.max()), float(scores.sum())
        if low < 0.0 or high > 1.0:
            raise FieldError("probabilities", "every value must lie in [0, 1]", reason="bad_probabilities")
        if abs(total - 1.0) > PROBABILITY_TOLERANCE:
            raise FieldError(
                "probabilities", f"must sum to 1 ± {PROBABILITY_TOLERANCE}, got {total:.6g}", reason="bad_probabilities"
            )
    return scores, logits is not None


def numbers_of(value: Any, field: str) -> Vector | None:
    """A number-list field as a vector (float64; float32 for a float32 tensor), ``None`` when absent.

    The fast path hands over arrays it has already checked (flat, finite); the
    careful path hands over the decoded JSON value, checked here: a list of
    numbers or a tensor object (``service.tensors``).
    """
    if value is None or isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict | BinaryTensor):
        return vector_of(value, field)
    if not isinstance(value, list) or not all(type(item) in _NUMBER_TYPES for item in value):
        raise FieldError(field, "must be a flat list of numbers")
    try:
        values = np.array(value, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        values = np.array([math.inf])
    if not np.isfinite(values).all():
        raise FieldError(field, "every value must be a finite number", reason="non_finite")
    return values


def _embedding_of(value: Any) -> Vector | None:
    embedding = numbers_of(value, "embedding")
    if embedding is not None and embedding.shape[0] == 0:
        raise FieldError("embedding", "must not be empty")
    return embedding


def _timestamp_of(value: str | float | None, received_at: float) -> float:
    if value is None:
        return received_at
    try:
        seconds = parse_timestamp(value)
    except NoUtcOffset:
        raise FieldError("timestamp", "needs a UTC offset such as 'Z' or '+02:00' (RFC 3339)") from None
    except NotFinite:
        raise FieldError("timestamp", "epoch seconds out of range") from None
    except TimestampError as error:
        raise FieldError("timestamp", str(error)) from None
    if not 0.0 < seconds < _LATEST_EPOCH_S:
        raise FieldError("timestamp", "epoch seconds out of range")
    return seconds


def _input_of(value: Any) -> InputTensor | None:
    if value is None:
        return None
    if isinstance(value, list):
        return _nested_input(value)
    array = tensor_of(value, "input")
    if isinstance(value, dict) and "dtype" in value:  # the compact form: keep the base64 as sent
        return InputTensor.model_construct(shape=tuple(array.shape), dtype=value["dtype"], data=value["data"])
    return InputTensor.of(array)


def _nested_input(value: list[Any]) -> InputTensor:
    try:
        array_in = np.asarray(value)
    except ValueError:
        raise FieldError("input", "a nested list must be rectangular") from None
    if array_in.dtype.kind not in "iuf" or array_in.size == 0 or array_in.ndim > 8:
        raise FieldError("input", "a nested list must be a non-empty array of numbers (at most 8 dimensions)")
    with np.errstate(over="ignore", invalid="ignore"):
        as_float = array_in.astype(np.float32)
    if not np.isfinite(as_float).all():
        raise FieldError("input", "holds values that are not finite float32 numbers", reason="non_finite")
    return InputTensor.of(as_float)
