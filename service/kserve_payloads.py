"""KServe inference-logger payloads (v1 ``instances``/``predictions``, v2 ``inputs``/``outputs`` tensors) read
into arrays per instance, as a model's ``kserve`` mapping names them (``service.cloudevents`` reads the envelope).

Every problem is an ``InvalidInput`` naming the field at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import InvalidInput
from service.cloudevents import HEADER_LENGTH, CloudEvent, payload_document
from service.errors import FieldError
from service.settings import KServeMapping
from service.tensors import BinaryTensor, beyond_float32, tensor_of

Array = npt.NDArray[Any]
V1_WHOLE_INSTANCE = "instances"
"""``input`` of a v1 mapping that takes each instance whole."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """A response payload, per instance."""

    scores: list[Array]
    embeddings: list[Array | None] | None
    """One per instance (``None``: that instance's is missing or unusable, and it is monitored without one);
    ``None`` when the mapping names no embedding."""
    model_version: str | None


def request_inputs(event: CloudEvent, mapping: KServeMapping) -> list[Array] | None:
    """Each instance's model input, or ``None`` when the mapping keeps none (the payload is then never read)."""
    if mapping.input is None:
        return None
    document, sections = payload_document(event)
    if "inputs" in document and isinstance(document["inputs"], list):
        tensors = _v2_tensors(document["inputs"], sections, "inputs")
        if mapping.input not in tensors:
            raise InvalidInput(f"inputs: no tensor named {mapping.input!r} (kserve.input)", field="inputs")
        where, _ = tensors[mapping.input]
        rows = [_finite(row, where) for row in _instances(_convert(tensors[mapping.input]))]
    elif isinstance(document.get("instances"), list):
        rows = [
            _v1_input(item, mapping.input, f"instances[{index}]") for index, item in enumerate(document["instances"])
        ]
    else:
        raise InvalidInput("body: a request payload needs 'instances' (v1) or 'inputs' (v2)", field="body")
    if mapping.input_shape is not None:
        shape = mapping.input_shape
        for index, row in enumerate(rows):
            if row.size != math.prod(shape):
                raise InvalidInput(
                    f"inputs[{index}]: {row.size} values do not fill kserve.input_shape {shape}",
                    field="kserve.input_shape",
                )
        rows = [row.reshape(shape) for row in rows]
    return rows


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
        return Prediction(scores, embeddings, version if isinstance(version, str) and version else None)
    if isinstance(document.get("predictions"), list):
        items = document["predictions"]
        return Prediction(
            [_v1_array(item, mapping.scores, f"predictions[{i}]", np.float64) for i, item in enumerate(items)],
            None if mapping.embedding is None else _v1_embeddings(items, mapping.embedding),
            None,
        )
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
            size = parameters["binary_data_size"]
            if type(size) is not int or size < 0:
                raise InvalidInput(f"{where}.parameters.binary_data_size: must be a non-negative integer", field=where)
            rest = {key: item for key, item in parameters.items() if key != "binary_data_size"}
            spec = {key: item for key, item in tensor.items() if key != "parameters"} | (
                {"parameters": rest} if rest else {}
            )
            section = sections[offset : offset + size] if offset + size <= len(sections) else None
            problem = f"section of {size} bytes at offset {offset} runs past the body ({len(sections)} bytes)"
            value, offset = BinaryTensor(spec, section, "" if section is not None else problem), offset + size
        found[tensor["name"]] = (where, value)
    if offset < len(sections):  # the framing is wrong: refused as /v1/events refuses it
        raise InvalidInput(
            f"body: {len(sections) - offset} bytes after the binary sections are referenced by no binary_data_size",
            field=HEADER_LENGTH,
        )
    return found


def _convert(entry: tuple[str, Any]) -> Array:
    where, value = entry
    try:
        return tensor_of(value, where)
    except FieldError as error:
        raise InvalidInput(str(error), field=error.field) from None


def _instances(array: Array) -> list[Array]:
    """One input per instance: the first dimension is the batch (a 1-D input tensor is one instance)."""
    return [array] if array.ndim == 1 else list(array)


def _v1_input(item: Any, key: str, where: str) -> Array:
    return _finite(_v1_array(item, key, where, np.float32, whole=V1_WHOLE_INSTANCE), where)


def _finite(row: Array, where: str) -> Array:
    """``row``, refused naming ``where`` when it holds NaN or infinity (a value past float32 becomes infinity):
    kept, it would have its prediction refused at the join."""
    if np.issubdtype(row.dtype, np.floating) and (not np.isfinite(row).all() or beyond_float32(row)):
        raise InvalidInput(f"{where}: holds NaN or infinite values (or values past float32)", field=where)
    return row


def _score_rows(entry: tuple[str, Any]) -> list[Array]:
    """One row of scores per instance: the first dimension of a v2 tensor is the batch."""
    array = _convert(entry)
    if array.ndim < 2:
        where = entry[0]
        raise InvalidInput(
            f"{where}: shape {list(array.shape)} is one value per instance (the first dimension is the batch); "
            "scores need [batch, classes]",
            field=where,
        )
    return list(array)


def _v2_embeddings(entry: tuple[str, Any] | None, count: int) -> list[Array | None]:
    """One embedding per instance, or none at all when the tensor is missing or not ``[count, ...]``."""
    array = None if entry is None else _convert(entry)
    if array is None or array.ndim < 2 or array.shape[0] != count:
        return [None] * count
    return list(array)


def _v1_embeddings(items: list[Any], key: str) -> list[Array | None]:
    """Each prediction's embedding; ``None`` where a prediction has none."""
    return [
        _v1_array(item, key, f"predictions[{index}]", np.float64) if _has(item, key) else None
        for index, item in enumerate(items)
    ]


def _has(item: Any, key: str) -> bool:
    if isinstance(item, dict):
        return key in item
    return isinstance(item, list) and key.isdigit() and int(key) < len(item)


def _v1_array(item: Any, key: str | None, where: str, dtype: type[np.generic], *, whole: str | None = None) -> Array:
    value = item
    if key is not None and key != whole:
        if isinstance(item, dict) and key in item:
            value = item[key]
        elif isinstance(item, list) and key.isdigit() and int(key) < len(item):
            value = item[int(key)]
        else:
            raise InvalidInput(f"{where}: has no {key!r} (kserve mapping)", field=where)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a value past the dtype's range: checked by the caller
            array = np.asarray(value, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{where}: must be a (nested) list of numbers", field=where) from None
    if array.ndim == 0:
        raise InvalidInput(f"{where}: must be a list of numbers, not one number", field=where)
    return array
