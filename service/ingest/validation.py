"""Semantic checks of one decoded event, and the figures every monitor needs from it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from common.codec import MAX_DIMS, DtypeName
from common.probabilities import PROBABILITY_TOLERANCE as PROBABILITY_TOLERANCE  # importable from here too
from common.timestamps import NotFinite, NoUtcOffset, TimestampError, parse_timestamp
from sampler.contract import InputTensor
from service.events.accepted import Accepted, Checked
from service.events.errors import FieldError
from service.events.schemas import EventIn
from service.events.scores import summarise_matrix
from service.events.tensors import FLOAT32_MAX, BinaryTensor, Vector, beyond_float32, tensor_of, vector_of

_LATEST_EPOCH_S = 4_102_444_800.0  # 2100-01-01
_NUMBER_TYPES = (int, float)  # not bool: JSON true is no number
_MIN_CLASSES, _MAX_CLASSES = 2, 100_000


def check_lane_event(
    event: EventIn,
    classes: int,
    *,
    received_at: float,
    probabilities: Vector | None = None,
    embedding: Vector | None = None,
) -> tuple[float, InputTensor | None]:
    """What :func:`check` checks of a lane's event once its scores' presence and length were checked for the
    whole lane (they are alike in every event): its ``probabilities``, label, timestamp and input, in that
    order; the timestamp and input as :class:`Checked` holds them. Its embedding (its row of the lane's matrix,
    presence and length checked with the lane's) is checked for float32 range, between the two."""
    if probabilities is not None:
        check_probabilities(probabilities)
    if event.label is not None:
        check_label(event.label, classes)
    timestamp = received_at if event.timestamp is None else timestamp_of(event.timestamp, received_at)
    if embedding is not None:
        check_float32_range(embedding)
    return timestamp, None if event.input is None else _input_of(event.input)


def check(event: EventIn, *, received_at: float) -> Checked:
    """Every check of one event; raises ``FieldError`` naming the first bad field."""
    scores, from_logits = _scores_of(event)
    check_label(event.label, scores.shape[0])
    # Positional: keyword arguments to a dataclass cost ~3x as much, and this runs once per event.
    # Order: event, timestamp, scores, from_logits, embedding, input.
    return Checked(
        event,
        timestamp_of(event.timestamp, received_at),
        scores,
        from_logits,
        _embedding_of(event.embedding),
        _input_of(event.input),
    )


def summarised(checked: list[Checked], *, received_at: float) -> Accepted:
    """The checked events as accepted ones, their scores summarised in one numpy pass per shape."""
    count = len(checked)
    predicted, confidences, margins = [0] * count, [0.0] * count, [0.0] * count
    groups: dict[tuple[int, bool], list[int]] = {}
    for index, item in enumerate(checked):
        groups.setdefault((item.scores.shape[0], item.from_logits), []).append(index)
    for (_, from_logits), indices in groups.items():
        rows = [checked[i].scores for i in indices]
        if len(rows) == 1:  # a view, not a copy: one row is summarised out of place
            found = summarise_matrix(rows[0][None, :], from_logits=from_logits)
        else:
            stacked = np.concatenate(rows).reshape(len(rows), -1)  # as np.stack (the rows are alike), at half the cost
            found = summarise_matrix(stacked, from_logits=from_logits, overwrite=True)
        for index, top, confidence, margin in zip(indices, *found, strict=True):
            predicted[index], confidences[index], margins[index] = top, confidence, margin
    return Accepted(
        [item.event for item in checked],
        [item.timestamp for item in checked],
        [item.scores for item in checked],
        [item.from_logits for item in checked],
        [item.embedding for item in checked],
        [item.input for item in checked],
        predicted,
        confidences,
        margins,
        received_at,
    )


def _scores_of(event: EventIn) -> tuple[Vector, bool]:
    scores, from_logits = scores_chosen(
        numbers_of(event.logits, "logits"), numbers_of(event.probabilities, "probabilities")
    )
    if not from_logits:
        check_probabilities(scores)
    return scores, from_logits


def scores_chosen(logits: Any, probabilities: Any) -> tuple[Any, bool]:
    """The one of ``logits`` and ``probabilities`` sent (vectors, or a lane's matrices: a row per event), and
    whether it is the logits; raises ``FieldError`` unless exactly one was sent, of an allowed length."""
    if (logits is None) == (probabilities is None):
        raise FieldError("logits", "send exactly one of logits or probabilities", reason="missing_scores")
    field = "logits" if logits is not None else "probabilities"
    scores = logits if logits is not None else probabilities
    classes = scores.shape[-1]
    if not _MIN_CLASSES <= classes <= _MAX_CLASSES:
        raise FieldError(field, f"needs {_MIN_CLASSES} to {_MAX_CLASSES} values, got {classes}", reason="bad_length")
    return scores, logits is not None


def check_probabilities(scores: Vector) -> None:
    """Raises ``FieldError`` unless ``scores`` (one event's) lie in [0, 1] and sum to 1."""
    low, high, total = float(scores.min()), float(scores.max()), float(scores.sum())
    if low < 0.0 or high > 1.0:
        raise FieldError("probabilities", "every value must lie in [0, 1]", reason="bad_probabilities")
    if abs(total - 1.0) > PROBABILITY_TOLERANCE:
        raise FieldError(
            "probabilities", f"must sum to 1 ± {PROBABILITY_TOLERANCE}, got {total:.6g}", reason="bad_probabilities"
        )


def check_label(label: int | None, classes: int) -> None:
    """Raises ``FieldError`` unless ``label`` is absent or one of ``classes`` classes."""
    if label is not None and label >= classes:
        raise FieldError("label", f"class {label} out of range for {classes} classes")


def numbers_of(value: Any, field: str) -> Vector | None:
    """A number-list field as a vector (float64; float32 for a float32 tensor), ``None`` when absent.

    The fast path hands over arrays it has already checked (flat, finite); the
    careful path hands over the decoded JSON value, checked here: a list of
    numbers or a tensor object (``service.events.tensors``).
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
    if embedding is not None:
        if embedding.shape[0] == 0:
            raise FieldError("embedding", "must not be empty")
        check_float32_range(embedding)
    return embedding


def rows_beyond_float32(embeddings: Vector | None) -> set[int]:
    """The rows of a lane's (finite) embedding matrix that :func:`check_float32_range` refuses, in one pass."""
    if embeddings is None or embeddings.dtype == np.float32:
        return set()
    beyond = (embeddings.max(axis=1) > FLOAT32_MAX) | (embeddings.min(axis=1) < -FLOAT32_MAX)  # no |x| copy
    return set(np.flatnonzero(beyond).tolist())


def check_float32_range(embedding: Vector) -> None:
    """A finite embedding's values fit float32, as which it is published (``service.feed.records``): a larger
    value would reach the monitor as infinity, and its detectors would score NaN."""
    if beyond_float32(embedding):
        raise FieldError(
            "embedding",
            f"holds a value beyond float32 range (±{FLOAT32_MAX:.4g}), as which it is kept",
            reason="non_finite",
        )


def timestamp_of(value: str | float | None, received_at: float) -> float:
    """An event's time in epoch seconds (``received_at`` when it has none); ``FieldError`` naming ``timestamp``."""
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
    if beyond_float32(array):  # the worker explains it as float32: it would become infinity
        raise FieldError("input", "holds values that are not finite float32 numbers", reason="non_finite")
    # A BOOL input is kept as uint8 (the same bytes, checked 0 or 1): readers of a stored input do arithmetic on it.
    if isinstance(value, dict) and "dtype" in value:  # the compact form: keep the base64 as sent
        dtype: DtypeName = "uint8" if array.dtype.kind == "b" else value["dtype"]
        return InputTensor.model_construct(shape=tuple(array.shape), dtype=dtype, data=value["data"])
    return InputTensor.of(array.view(np.uint8) if array.dtype.kind == "b" else array)


def _nested_input(value: list[Any]) -> InputTensor:
    if _leading_depth(value) > MAX_DIMS:  # numpy calls a deeper list ragged (or reads up to 32 dimensions)
        raise FieldError("input", f"a nested list has more than {MAX_DIMS} dimensions")
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


def _leading_depth(value: Any) -> int:
    """How deep the first items of a nested list go (its dimensions, when it is rectangular), stopping one past
    the limit: a few steps, however deep the list."""
    depth, first = 0, value
    while type(first) is list and depth <= MAX_DIMS:
        depth, first = depth + 1, first[0] if first else None
    return depth
