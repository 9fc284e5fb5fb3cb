"""Wire schemas of the ingest API, checked by msgspec.

msgspec validates types while it parses (or converts), which is several times
cheaper than FastAPI body models for events that carry thousands of floats.
The number lists (and ``input``) are typed ``Any`` here: each may also be a
tensor object (``service.events.tensors``); the fast path (``service.decoding.fast_parsing``)
fills them with float64 arrays copied straight out of simdjson's parse, the
careful path with the decoded JSON values; ``service.ingest.validation`` turns both
into checked arrays.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from common.codec import MAX_DIMS
from common.names import MODEL_PATTERN, MODEL_RE, VERSION_PATTERN, VERSION_RE

_JSON_SCHEMA_PATTERNS = {MODEL_RE.pattern: MODEL_PATTERN, VERSION_RE.pattern: VERSION_PATTERN}
"""msgspec puts the Python spellings in the schemas it writes; clients read JSON Schema (ECMA) ones."""
ModelName = Annotated[str, msgspec.Meta(pattern=MODEL_RE.pattern)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Version = Annotated[str, msgspec.Meta(pattern=VERSION_RE.pattern)]
MAX_COHORT_TEXT = 128
"""Longest cohort key or value, in characters."""
CohortText = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_COHORT_TEXT)]
Shape = Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(min_length=1, max_length=MAX_DIMS)]

NUMBER_FIELDS = ("logits", "probabilities", "embedding")
"""The fields holding lists of numbers, the bulk of every event."""


class TensorIn(msgspec.Struct):
    """A tensor object (documentation only; ``service.events.tensors`` checks it): an Open Inference Protocol v2
    tensor (``datatype`` and a list of numbers, or ``parameters.binary_data_size`` with the binary
    extension) or our compact form (``dtype`` and base64 of the little-endian bytes)."""

    shape: Shape
    datatype: str | None = None
    """v2: ``FP16``, ``FP32``, ``FP64``, ``INT8`` to ``INT64``, ``UINT8`` to ``UINT64`` or ``BOOL``."""
    dtype: str | None = None
    """Compact form: ``float16``, ``float32``, ``float64``, ``int8`` to ``int64``, ``uint8`` to ``uint64``, ``bool``."""
    data: list[Any] | str | None = None
    """v2: numbers, flat or nested (absent with the binary extension); compact form: base64."""
    parameters: dict[str, Any] | None = None
    """v2 binary extension: ``{"binary_data_size": K}``, the data being the next K bytes after the JSON header."""
    name: str | None = None


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    """One prediction event as posted by the serving stack."""

    model: ModelName
    request_id: RequestId
    model_version: Version = "unversioned"
    timestamp: str | float | None = None
    """RFC 3339 string or epoch seconds; receive time when absent."""
    logits: Any = None
    """List of at least 2 finite numbers (exactly one of logits or probabilities)."""
    probabilities: Any = None
    """List of at least 2 probabilities summing to 1 ± 0.01 (``PROBABILITY_TOLERANCE``)."""
    embedding: Any = None
    """List of finite floats; same length for every event of a model."""
    cohort: Annotated[dict[CohortText, CohortText], msgspec.Meta(max_length=32)] | None = None
    input: Any = None
    """Model input for attribution: a nested list or a tensor object (compact or v2)."""
    label: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Ground-truth class index, when already known."""


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """``{"events": [...]}``."""

    events: list[EventIn]


class RawBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """The same envelope, events left undecoded so each can fail on its own."""

    events: list[msgspec.Raw]


class Event(EventIn):
    """Documentation twin of :class:`EventIn` (an ``Any`` field has no useful JSON schema)."""

    logits: list[float] | TensorIn | None = None
    probabilities: list[float] | TensorIn | None = None
    embedding: list[float] | TensorIn | None = None
    input: list[Any] | TensorIn | None = None


class Batch(msgspec.Struct):
    """Documentation twin of :class:`BatchIn`."""

    events: list[Event]


def openapi_ingest_path(answer_type: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI path item of ``POST /v1/events`` (served outside FastAPI's routing) and its components;
    ``answer_type`` is the result the route encodes (``service.ingest.handler.IngestResult``)."""
    (one, many, answer), components = msgspec.json.schema_components(
        [Event, Batch, answer_type], ref_template="#/components/schemas/{name}"
    )
    components = _json_schema_patterns(components)
    post = {
        "summary": 'Post one prediction event or {"events": [...]}',
        "operationId": "post_events",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [one, many]}}}},
        "responses": {
            "202": {
                "description": "Accepted (some events may be rejected)",
                "content": {"application/json": {"schema": answer}},
            },
            # 400/401/403/408/413/415 and the 422's schema (the one error shape): the app adds them, with every
            # route's (``service.http.openapi``), which this module may not import (service.http imports it).
            "422": {"description": "No valid event; the detail is the answer above plus {error, field}"},
        },
    }
    return {"post": post}, components


def _json_schema_patterns(schema: Any) -> Any:
    """``schema`` with every Python-only ``pattern`` replaced by its JSON Schema spelling."""
    if isinstance(schema, dict):
        return {
            key: _JSON_SCHEMA_PATTERNS.get(value, value) if key == "pattern" else _json_schema_patterns(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_json_schema_patterns(item) for item in schema]
    return schema
