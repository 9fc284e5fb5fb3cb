"""KServe inference-logger CloudEvents: their attributes (binary or structured mode) and payload document.

Binary mode (what the logger sends): the attributes are ``ce-*`` headers and the body is the
payload as the model server saw it: JSON, or the Open Inference Protocol's binary tensor
extension (a JSON header whose length ``Inference-Header-Content-Length`` gives, then the raw
tensor bytes). Structured mode (``Content-Type: application/cloudevents+json``): one JSON object
with the attributes and the payload in ``data`` (or ``data_base64``). Without a header length the
JSON header's end is found by parsing, so a binary payload forwarded without it is still read.
``service.kserve.payloads`` reads the v1/v2 payloads themselves.

Every problem is a ``BadRequest`` (the CloudEvent itself) or an ``InvalidInput`` (its payload)
naming the header or field at fault.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from common.errors import BadRequest, InvalidInput
from common.numbers import ascii_decimal
from service.events.schemas import MAX_COHORT_TEXT
from service.http.body import refuse_lone_surrogates

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
STRUCTURED = "application/cloudevents+json"
HEADER_LENGTH = "inference-header-content-length"


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
    """The ``ce-metadata`` values the mapping reads (its ``cohort_metadata`` and ``label_metadata`` keys), each of
    at most ``MAX_COHORT_TEXT`` characters; other keys are never kept (they could fill Redis with the pending
    request's record)."""
    overlong: frozenset[str]
    """The keys the mapping reads whose value was longer than ``MAX_COHORT_TEXT``: left out of :attr:`metadata`, and
    counted as the part they were for (``cohort``, ``label``), as an over-long value always was."""
    payload: bytes | dict[str, Any]
    """The payload's bytes, or in structured mode its ``data`` object, already parsed."""
    header_length: str | None


MAX_EVENT_ID = 120
"""Longest ``ce-id``: its events' request ids, ``{ce-id}:{instance}``, must fit the 128 characters of one."""
MAX_NAMESPACE = 63
"""Longest ``ce-namespace``: a Kubernetes namespace is a DNS label (63 characters at most). It is part of a pending
request's Redis key and index member, so a longer one is refused rather than stored."""
SHOWN = 64
"""Characters of a refused attribute value repeated in its error (the rest is elided: a header may be megabytes)."""


@dataclass(frozen=True, slots=True)
class Attributes:
    """A CloudEvent's attributes as sent, not yet checked (:func:`read_event` checks them): enough to tell whose
    it is (:attr:`service`) even when it is malformed."""

    values: dict[str, Any]
    """Binary mode: the ``ce-*`` headers without their prefix; structured mode: the JSON object, ``data`` included."""
    body: bytes | None
    """Binary mode: the payload; ``None`` in structured mode (it is in ``values``)."""
    header_length: str | None
    prefix: str
    """How an attribute is named in errors: ``ce-`` (a header) or nothing (a key of the JSON object)."""

    @property
    def service(self) -> str | None:
        """``ce-inferenceservicename``, when it is a non-empty string."""
        return _text(self.values, "inferenceservicename") or None


def read_attributes(headers: Mapping[str, str], body: bytes) -> Attributes:
    """The attributes of a request to ``POST /v1/cloudevents`` (``headers`` with lower-case names); a
    ``BadRequest`` only for a structured-mode body that is no JSON object."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == STRUCTURED:
        return Attributes(_structured(body), None, None, "")
    values = {name[3:]: value for name, value in headers.items() if name.startswith("ce-")}
    return Attributes(values, body, headers.get(HEADER_LENGTH), "ce-")


def read_event(attributes: Attributes, metadata_keys: Collection[str] = ()) -> CloudEvent:
    """The CloudEvent, its attributes checked; a ``BadRequest`` or ``InvalidInput`` naming the one at fault.
    ``metadata_keys``: the ``ce-metadata`` keys its model's mapping reads, the only ones kept."""
    values, prefix = attributes.values, attributes.prefix
    for name in ("specversion", "id", "type"):
        if values.get(name) in (None, ""):
            raise BadRequest(
                f"{prefix}{name}: missing (is this a CloudEvent from KServe's logger?)", field=prefix + name
            )
        if not isinstance(values[name], str):
            raise BadRequest(f"{prefix}{name}: must be a string, got {values[name]!r}", field=prefix + name)
    event_id = values["id"]
    if len(event_id) > MAX_EVENT_ID or not event_id.isprintable():
        raise BadRequest(
            f"{prefix}id: must be at most {MAX_EVENT_ID} printable characters (its events' request ids are "
            "{id}:{instance})",
            field=f"{prefix}id",
        )
    if values["specversion"] != "1.0":
        raise BadRequest(
            f"{prefix}specversion: {shown(values['specversion'])} is not 1.0", field=f"{prefix}specversion"
        )
    if values["type"] not in (REQUEST_TYPE, RESPONSE_TYPE):
        raise BadRequest(
            f"{prefix}type: {shown(values['type'])} is neither {REQUEST_TYPE} nor {RESPONSE_TYPE}",
            field=f"{prefix}type",
        )
    namespace = _text(values, "namespace")
    if len(namespace) > MAX_NAMESPACE or not namespace.isprintable():
        raise BadRequest(
            f"{prefix}namespace: must be at most {MAX_NAMESPACE} printable characters (a Kubernetes namespace)",
            field=f"{prefix}namespace",
        )
    metadata, overlong = _metadata(values.get("metadata"), f"{prefix}metadata", metadata_keys)
    payload: bytes | dict[str, Any]
    if attributes.body is not None:
        payload, header_length = attributes.body, attributes.header_length
    else:
        payload, header_length = _structured_payload(values)
    return CloudEvent(
        id=event_id,
        is_request=values["type"] == REQUEST_TYPE,
        service=attributes.service,
        namespace=namespace,
        component=_text(values, "component") or "predictor",
        endpoint=str(values.get("endpoint") or "default"),
        time=values["time"] if isinstance(values.get("time"), str) else None,
        metadata=metadata,
        overlong=overlong,
        payload=payload,
        header_length=header_length,
    )


def shown(value: str) -> str:
    """``value`` as an error repeats it: quoted, and at most ``SHOWN`` characters of it."""
    return repr(value) if len(value) <= SHOWN else f"{value[:SHOWN]!r}… ({len(value)} characters)"


def _text(attributes: dict[str, Any], name: str) -> str:
    value = attributes.get(name)
    return value if isinstance(value, str) else ""


def _structured(body: bytes) -> dict[str, Any]:
    try:
        attributes = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"body: a structured CloudEvent must be a JSON object ({error})", field="body") from None
    if not isinstance(attributes, dict):
        raise BadRequest("body: a structured CloudEvent must be a JSON object", field="body")
    return attributes


def _structured_payload(attributes: dict[str, Any]) -> tuple[bytes | dict[str, Any], str | None]:
    """The payload: bytes, or the JSON object ``data`` already parsed (orjson writes 254 levels of nesting at most
    but reads 1,024, so serialising it again could fail); and the header length, if given."""
    payload: bytes | dict[str, Any]
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
    return payload, str(length) if length is not None else None


def _metadata(value: Any, field: str, wanted: Collection[str]) -> tuple[dict[str, str], frozenset[str]]:
    """``ce-metadata``: JSON of header name -> value, or -> list of values as KServe sends it (first kept). Only the
    ``wanted`` keys are kept, each value of at most ``MAX_COHORT_TEXT`` characters; the wanted keys whose value is
    longer are returned apart. The whole document is parsed all the same, so malformed JSON is refused whatever it
    holds."""
    if value is None or value == "":
        return {}, frozenset()
    try:
        document = orjson.loads(value) if isinstance(value, str) else value  # refuses lone surrogate escapes
    except ValueError:
        raise BadRequest(f"{field}: not valid JSON", field=field) from None
    if document is None:  # JSON null: no metadata, as an absent attribute
        return {}, frozenset()
    if not isinstance(document, dict):
        raise BadRequest(f"{field}: must be a JSON object", field=field)
    metadata: dict[str, str] = {}
    overlong: set[str] = set()
    for key in wanted:
        item = document.get(key)
        first = item[0] if isinstance(item, list) and item else item
        if not isinstance(first, str):
            continue
        if len(first) > MAX_COHORT_TEXT:
            overlong.add(key)
        else:
            metadata[key] = first
    return metadata, frozenset(overlong)


def payload_document(event: CloudEvent) -> tuple[dict[str, Any], bytes]:
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
            if not _has_binary_tensors(document):  # nothing but whitespace may follow the JSON
                _refuse_extra(payload, end)
                end = len(payload)
    if not isinstance(document, dict):
        raise InvalidInput("body: the payload must be a JSON object (v1 or v2 protocol)", field="body")
    return document, payload[end:]


def _parse(header: bytes) -> Any:
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError:
        document, end = _parse_prefix(header)
        _refuse_extra(header, end)
        return document


def _refuse_extra(text: bytes, end: int) -> None:
    """Refuse ``text`` when more than whitespace follows its JSON value, which ends at ``end``."""
    if text[end:].strip(b" \t\r\n"):
        raise InvalidInput(f"body: the payload is not JSON (extra data after byte {end})", field="body")


def _has_binary_tensors(document: Any) -> bool:
    """Whether a v2 payload has a tensor of the binary extension, whose bytes follow its JSON."""
    if not isinstance(document, dict):
        return False
    tensors = [item for key in ("inputs", "outputs") if isinstance(document.get(key), list) for item in document[key]]
    return any(
        isinstance(tensor, dict)
        and isinstance(tensor.get("parameters"), dict)
        and "binary_data_size" in tensor["parameters"]
        for tensor in tensors
    )


def _parse_prefix(payload: bytes) -> tuple[Any, int]:
    """A JSON value at the start of ``payload`` and its byte length (latin-1 maps each byte to one character)."""
    text = payload.decode("latin-1")
    try:
        document, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError) as error:
        raise InvalidInput(f"body: the payload is not JSON ({error})", field="body") from None
    refuse_lone_surrogates(payload[:end], document)
    return document, end
