"""KServe inference-logger payloads (v1 ``instances``/``predictions``, v2 ``inputs``/``outputs`` tensors) read
into arrays per instance, as a model's ``kserve`` mapping names them (``service.kserve.cloudevents`` reads the
envelope).

A payload that cannot be read (neither v1 nor v2, its framing, its scores tensor) is an ``InvalidInput`` naming
the field at fault. In one that can, a problem of one instance costs that instance alone: a v1 prediction that is
no (nested) list of numbers becomes the ``FieldError`` naming it (``predictions[i]``), its event rejected and the
others kept; a scores row holding NaN or infinity is handed on for ingest to reject (that event only); an
embedding or an input that is unusable, for one instance or as a whole tensor, becomes ``None`` there, the event
monitored without it. v1 values are numbers only: ``np.asarray`` would read ``"0.5"`` and ``true`` as numbers,
which ``/v1/events`` refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import InvalidInput
from service.events.errors import FieldError
from service.events.tensor_numbers import all_finite
from service.events.tensors import DATA_AND_BINARY, BinaryTensor, beyond_float32, tensor_of, vector_length
from service.kserve.cloudevents import HEADER_LENGTH, CloudEvent, payload_document
from service.settings import KServeMapping

Array = npt.NDArray[Any]
MAX_NESTING = 32
"""Lists nested deeper than this are no v1 value (numpy 1's limit on an array's dimensions), refused before
``np.asarray`` is given them."""
V1_WHOLE_INSTANCE = "instances"
"""``input`` of a v1 mapping that takes each instance whole."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """A response payload, per instance."""

    scores: list[Array | FieldError]
    """One row per instance, as sent: a row holding NaN or infinity is rejected by ingest, that event alone; a v1
    prediction that cannot be read is the error naming it (``predictions[i]``), its event rejected alone."""
    embeddings: list[Array | None] | None
    """One per instance (``None``: that instance's is missing or unusable, and it is monitored without one);
    ``None`` when the mapping names no embedding."""
    model_version: str | None
    field: str
    """Where the instances are (``predictions`` for v1, ``outputs`` for v2): what a refusal of their number names."""

    @property
    def readable(self) -> list[int]:
        """The instances whose scores could be read, in order: those that become events for ingest."""
        return [index for index, row in enumerate(self.scores) if not isinstance(row, FieldError)]


@dataclass(frozen=True, slots=True)
class Inputs:
    """A request's model inputs, as kept for its response."""

    rows: list[Array | None] | None
    """One per instance (``None``: that instance's is unusable: NaN, infinity, a value past float32, not numbers,
    not ``kserve.input_shape``); ``None`` when the input tensor itself is (missing, not numeric, malformed)."""


def request_inputs(event: CloudEvent, mapping: KServeMapping) -> Inputs | None:
    """Each instance's model input, or ``None`` when the mapping keeps none (the payload is then never read)."""
    if mapping.input is None:
        return None
    document, sections = payload_document(event)
    rows: list[Array | None] | None
    if isinstance(document.get("inputs"), list):
        entry = _v2_tensors(document["inputs"], sections, "inputs").get(mapping.input)
        array = None if entry is None else _readable(entry)
        rows = None if array is None else [_usable(row) for row in _instances(array)]
    elif isinstance(document.get("instances"), list):
        rows = [_v1_input(item, mapping.input) for item in document["instances"]]
    else:
        raise InvalidInput("body: a request payload needs 'instances' (v1) or 'inputs' (v2)", field="body")
    shape = mapping.input_shape
    if rows is not None and shape is not None:
        rows = [None if row is None or row.size != math.prod(shape) else row.reshape(shape) for row in rows]
    return Inputs(rows)


def response_prediction(event: CloudEvent, mapping: KServeMapping) -> Prediction:
    """Each instance's scores (and embedding) of a response payload."""
    document, sections = payload_document(event)
    if "outputs" in document and isinstance(document["outputs"], list):
        tensors = _v2_tensors(document["outputs"], sections, "outputs")
        if not tensors:
            raise InvalidInput("outputs: empty; the response holds no output tensor", field="outputs")
        scores_name = mapping.scores or next(iter(tensors))
        if scores_name not in tensors:
            raise InvalidInput(f"outputs: no tensor named {scores_name!r} (kserve.scores)", field="outputs")
        scores = _score_rows(tensors[scores_name])
        embeddings = None if mapping.embedding is None else _v2_embeddings(tensors.get(mapping.embedding), len(scores))
        version = document.get("model_version")
        version = version if isinstance(version, str) and version else None
        return Prediction(list(scores), embeddings, version, "outputs")
    if isinstance(document.get("predictions"), list):
        items = document["predictions"]
        rows = [_v1_scores(item, mapping.scores, f"predictions[{i}]") for i, item in enumerate(items)]
        embeddings = None if mapping.embedding is None else _v1_embeddings(items, rows, mapping.embedding)
        return Prediction(rows, embeddings, None, "predictions")
    raise InvalidInput("body: a response payload needs 'predictions' (v1) or 'outputs' (v2)", field="body")


def _v2_tensors(tensors: list[Any], sections: bytes, field: str) -> dict[str, tuple[str, Any]]:
    """Name -> (field, tensor object or BinaryTensor); binary sections are cut in order of appearance."""
    found: dict[str, tuple[str, Any]] = {}
    offset = 0
    for index, tensor in enumerate(tensors):
        where = f"{field}[{index}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput(f"{where}: must be a tensor object with a name", field=where)
        parameters = tensor.get("parameters")
        value: Any = tensor
        if isinstance(parameters, dict) and "binary_data_size" in parameters:
            value, offset = _binary(tensor, parameters, where, sections, offset)
        found[tensor["name"]] = (where, value)
    if offset < len(sections):  # the framing is wrong: refused as /v1/events refuses it
        raise InvalidInput(
            f"body: {len(sections) - offset} bytes after the binary sections are referenced by no binary_data_size",
            field=HEADER_LENGTH,
        )
    return found


def _binary(
    tensor: dict[str, Any], parameters: dict[str, Any], where: str, sections: bytes, offset: int
) -> tuple[BinaryTensor, int]:
    """A tensor of the binary extension over its section at ``offset``, and where the next section starts."""
    size = parameters["binary_data_size"]
    if type(size) is not int or size < 0:  # the later sections cannot be found: the framing is lost
        field = f"{where}.parameters.binary_data_size"
        raise InvalidInput(f"{field}: must be a non-negative integer, got {size!r}", field=field)
    rest = {key: item for key, item in parameters.items() if key != "binary_data_size"}
    spec = {key: item for key, item in tensor.items() if key != "parameters"} | ({"parameters": rest} if rest else {})
    end = offset + size
    if "data" in tensor:  # its section is there all the same: the later ones start after it
        return BinaryTensor(spec, None, DATA_AND_BINARY), end
    if end > len(sections):
        problem = f"section of {size} bytes at offset {offset} runs past the body ({len(sections)} bytes)"
        return BinaryTensor(spec, None, problem), end
    return BinaryTensor(spec, sections[offset:end]), end


def _readable(entry: tuple[str, Any]) -> Array | None:
    """An optional part's tensor (an embedding, an input), NaN and infinity left in for its rows to be judged one
    by one; ``None`` when it is unusable as a whole (not numeric, malformed)."""
    where, value = entry
    try:
        return tensor_of(value, where, finite=False)
    except FieldError:
        return None


def _instances(array: Array) -> list[Array]:
    """One input per instance: the first dimension is the batch (a 1-D input tensor is one instance)."""
    return [array] if array.ndim == 1 else list(array)


def _v1_input(item: Any, key: str) -> Array | None:
    try:
        return _usable(_v1_array(item, key, "instances", np.float32, whole=V1_WHOLE_INSTANCE))
    except FieldError:
        return None


def _v1_scores(item: Any, key: str | None, where: str) -> Array | FieldError:
    """One v1 prediction's scores, or the error naming it: that instance's event is rejected, not the response."""
    try:
        return _v1_array(item, key, where, np.float64)
    except FieldError as error:
        return error


def _usable(row: Array) -> Array | None:
    """``row``, or ``None`` when it holds NaN, infinity or a value past float32 (inputs are explained, embeddings
    published, as float32): kept, it would have its event refused at ingest, and the prediction with it."""
    if row.dtype.kind == "f" and (not all_finite(row) or beyond_float32(row)):
        return None
    return row


def _score_rows(entry: tuple[str, Any]) -> list[Array]:
    """One row of scores per instance: the first dimension of a v2 tensor is the batch. A row holding NaN or
    infinity is kept, for ingest to reject that instance alone."""
    where, value = entry
    try:
        array = tensor_of(value, where, finite=False)
    except FieldError as error:
        raise InvalidInput(str(error), field=error.field) from None
    if array.ndim < 2:
        raise InvalidInput(
            f"{where}: shape {list(array.shape)} is one value per instance (the first dimension is the batch); "
            "scores need [batch, classes]",
            field=where,
        )
    return list(array)


def _v2_embeddings(entry: tuple[str, Any] | None, count: int) -> list[Array | None]:
    """One embedding per instance (``None`` where unusable), or none at all when the tensor is missing, unusable
    as a whole or not ``[count, ...]``."""
    array = None if entry is None else _readable(entry)
    if array is None or array.ndim < 2 or array.shape[0] != count:
        return [None] * count
    return [_embedding(row) for row in array]


def _v1_embeddings(items: list[Any], scores: list[Array | FieldError], key: str) -> list[Array | None]:
    """Each prediction's embedding; ``None`` where a prediction has none, or an unusable one, or is itself unreadable
    (no event: its embedding must not set the width the others are held to)."""
    return [
        None if isinstance(row, FieldError) else _embedding(_v1_part(item, key))
        for item, row in zip(items, scores, strict=True)
    ]


def _v1_part(item: Any, key: str) -> Array | None:
    if not _has(item, key):
        return None
    try:
        return _v1_array(item, key, "predictions", np.float64)
    except FieldError:
        return None


def _embedding(row: Array | None) -> Array | None:
    """``row`` as an instance's embedding: a ``[n]`` or ``[1, n]`` vector of usable values, else ``None``."""
    if row is None or not vector_length(list(row.shape)):
        return None
    return _usable(row)


def _has(item: Any, key: str) -> bool:
    if isinstance(item, dict):
        return key in item
    return isinstance(item, list) and key.isdigit() and int(key) < len(item)


def _v1_array(item: Any, key: str | None, where: str, dtype: type[np.generic], *, whole: str | None = None) -> Array:
    """The value of ``item`` the mapping's ``key`` names (``item`` itself when ``key`` is ``None`` or ``whole``), as
    an array; a ``FieldError`` naming ``where`` when it has none, or it is no (nested) list of numbers."""
    value = item
    if key is not None and key != whole:
        if isinstance(item, dict) and key in item:
            value = item[key]
        elif isinstance(item, list) and key.isdigit() and int(key) < len(item):
            value = item[int(key)]
        else:
            raise FieldError(where, f"has no {key!r} (kserve mapping)")
    if not _numbers_only(value):
        raise FieldError(where, "must be a (nested) list of numbers")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a value past the dtype's range: checked by the caller
            array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):  # ragged, or an integer past float64
        raise FieldError(where, "must be a (nested) list of numbers") from None
    if array.ndim == 0:
        raise FieldError(where, "must be a list of numbers, not one number")
    return array


def _numbers_only(value: Any) -> bool:
    """Whether ``value`` holds only JSON numbers (no text, no booleans, no nulls) in lists of one depth, nested at most
    ``MAX_NESTING`` deep; read level by level, so that no nesting the JSON parser allows can exhaust the stack."""
    level = [value]
    for _ in range(MAX_NESTING + 1):
        kinds = set(map(type, level))
        if kinds <= {int, float}:  # the type of a boolean is bool: refused, as /v1/events refuses it
            return True
        if kinds != {list}:  # text, booleans, null, objects; or lists beside numbers (ragged)
            return False
        level = list(chain.from_iterable(level))
    return False
