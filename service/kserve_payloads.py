"""KServe inference-logger CloudEvents read into arrays: attributes (binary or structured mode) and v1/v2 payloads.

Binary mode (what the logger sends): the attributes are ``ce-*`` headers and the body is the
payload as the model server saw it: JSON, or the Open Inference Protocol's binary tensor
extension (a JSON header whose length ``Inference-Header-Content-Length`` gives, then the raw
tensor bytes). Structured mode (``Content-Type: application/cloudevents+json``): one JSON object
with the attributes and the payload in ``data`` (or ``data_base64``). Without a header length the
JSON header's end is found by parsing, so a binary payload forwarded without it is still read.

Every problem is a ``BadRequest`` (the CloudEvent itself) or an ``InvalidInput`` (its payload)
naming the header or field at fault.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from common.errors import BadRequest, InvalidInput
from common.numbers import ascii_decimal
from service.body import refuse_lone_surrogates
from service.errors import FieldError
from service.settings import KServeMapping
from service.tensors import BinaryTensor, tensor_of

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
STRUCTURED = "application/cloudevents+json"
HEADER_LENGTH = "inference-header-content-length"
V1_WHOLE_INSTANCE = "instances"
"""``input`` of a v1 mapping that takes each instance whole."""

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """One logger event: its attributes, and its payload as received (read by :func:`request_inputs` and
    :func:`response_prediction`, so that an event the mapping skips is never parsed)."""

    id: str
    is_request: bool
    service: str | None
    namespace: str
    """``ce-namespace``; ``""`` when absent. A ce-id is unique only within one InferenceService and namespace."""
    component: str
    """``ce-component`` (``predictor``, ``transformer``, ``explainer``); ``predictor`` when absent."""
    endpoint: str
    time: str | None
    metadata: dict[str, str]
    payload: bytes | dict[str, Any]
    """The payload's bytes, or in structured mode its ``data`` object, already parsed."""
    header_length: str | None


@dataclass(frozen=True, slots=True)
class Prediction:
    """A response payload, per instance."""

    scores: list[Array]
    embeddings: list[Array | None] | None
    """One per instance (``None``: that instance's is missing or unusable, and it is monitored without one);
    ``None`` when the mapping names no embedding."""
    model_version: str | None


MAX_EVENT_ID = 120
"""Longest ``ce-id``: its events' request ids, ``{ce-id}:{instance}``, must fit the 128 characters of one."""


def read_event(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """The CloudEvent of a request to ``POST /v1/cloudevents`` (``headers`` with lower-case names)."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == STRUCTURED:
        attributes, payload, header_length, prefix = _structured(body)
    else:
        attributes = {name[3:]: value for name, value in headers.items() if name.startswith("ce-")}
        payload, header_length, prefix = body, headers.get(HEADER_LENGTH), "ce-"
    for name in ("specversion", "id", "type"):
        if not isinstance(attributes.get(name), str) or not attributes[name]:
            raise BadRequest(
                f"{prefix}{name}: missing (is this a CloudEvent from KServe's logger?)", field=prefix + name
            )
    event_id = attributes["id"]
    if len(event_id) > MAX_EVENT_ID or not event_id.isprintable():
        raise BadRequest(
            f"{prefix}id: must be at most {MAX_EVENT_ID} printable characters (its events' request ids are "
            "{id}:{instance})",
            field=f"{prefix}id",
        )
    if attributes["specversion"] != "1.0":
        raise BadRequest(f"{prefix}specversion: {attributes['specversion']!r} is not 1.0", field=f"{prefix}specversion")
    if attributes["type"] not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise BadRequest(
            f"{prefix}type: {attributes['type']!r} is neither {REQUEST_TYPE} nor {RESPONSE_TYPE}", field=f"{prefix}type"
        )
    return CloudEvent(
        id=attributes["id"],
        is_request=attributes["type"] == REQUEST_TYPE,
        service=_text(attributes, "inferenceservicename") or None,
        namespace=_text(attributes, "namespace"),
        component=_text(attributes, "component") or "predictor",
        endpoint=str(attributes.get("endpoint") or "default"),
        time=attributes["time"] if isinstance(attributes.get("time"), str) else None,
        metadata=_metadata(attributes.get("metadata"), f"{prefix}metadata"),
        payload=payload,
        header_length=header_length,
    )


def _text(attributes: dict[str, Any], name: str) -> str:
    value = attributes.get(name)
    return value if isinstance(value, str) else ""


def _structured(body: bytes) -> tuple[dict[str, Any], bytes | dict[str, Any], str | None, str]:
    """Attributes, and the payload: bytes, or the JSON object ``data`` already parsed (orjson writes 254 levels of
    nesting at most but reads 1,024, so serialising it again could fail)."""
    try:
        attributes = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"body: a structured CloudEvent must be a JSON object ({error})", field="body") from None
    if not isinstance(attributes, dict):
        raise BadRequest("body: a structured CloudEvent must be a JSON object", field="body")
    if isinstance(attributes.get("data_base64"), str):
        try:
            payload = base64.b64decode(attributes["data_base64"], validate=True)
        except binascii.Error:
            raise InvalidInput("data_base64: not valid base64", field="data_base64") from None
    elif isinstance(attributes.get("data"), str):
        payload = attributes["data"].encode()
    elif isinstance(attributes.get("data"), dict):
        payload = attributes["data"]
    else:
        raise InvalidInput("data: missing; it must hold the inference payload", field="data")
    length = attributes.get(HEADER_LENGTH.replace("-", ""))
    return attributes, payload, str(length) if length is not None else None, ""


def _metadata(value: Any, field: str) -> dict[str, str]:
    """``ce-metadata``: JSON of header name -> value, or -> list of values as KServe sends it (first kept)."""
    if value is None or value == "":
        return {}
    try:
        document = orjson.loads(value) if isinstance(value, str) else value  # refuses lone surrogate escapes
    except ValueError:
        raise BadRequest(f"{field}: not valid JSON", field=field) from None
    if not isinstance(document, dict):
        raise BadRequest(f"{field}: must be a JSON object", field=field)
    metadata: dict[str, str] = {}
    for key, item in document.items():
        first = item[0] if isinstance(item, list) and item else item
        if isinstance(first, str):
            metadata[str(key)] = first
    return metadata


def _document(event: CloudEvent) -> tuple[dict[str, Any], bytes]:
    """The payload's JSON document and its binary sections."""
    if isinstance(event.payload, dict):
        return event.payload, b""
    return _split(event.payload, event.header_length)


def _split(payload: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The payload's JSON document and the bytes after it (the binary tensor sections, if any)."""
    if header_length is not None:
        size = ascii_decimal(header_length) or -1
        if not 0 < size <= len(payload):
            raise InvalidInput(
                f"{HEADER_LENGTH}: {header_length!r} is not a JSON length within the {len(payload)}-byte body",
                field=HEADER_LENGTH,
            )
        document, end = _parse(payload[:size]), size
    else:
        try:
            document, end = orjson.loads(payload), len(payload)
        except orjson.JSONDecodeError:
            document, end = _parse_prefix(payload)
    if not isinstance(document, dict):
        raise InvalidInput("body: the payload must be a JSON object (v1 or v2 protocol)", field="body")
    return document, payload[end:]


def _parse(header: bytes) -> Any:
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError:
        return _parse_prefix(header)[0]


def _parse_prefix(payload: bytes) -> tuple[Any, int]:
    """A JSON value at the start of ``payload`` and its byte length (latin-1 maps each byte to one character)."""
    text = payload.decode("latin-1")
    try:
        document, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError) as error:
        raise InvalidInput(f"body: the payload is not JSON ({error})", field="body") from None
    refuse_lone_surrogates(payload[:end], document)
    return document, end


def request_inputs(event: CloudEvent, mapping: KServeMapping) -> list[Array] | None:
    """Each instance's model input, or ``None`` when the mapping keeps none."""
    document, sections = _document(event)
    if mapping.input is None:
        return None
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
    document, sections = _document(event)
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
    if np.issubdtype(row.dtype, np.floating) and not np.isfinite(row).all():
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
