"""Wire schemas of the ingest API, checked by msgspec.

msgspec validates types while it parses (or converts), which is several times
cheaper than FastAPI body models for events that carry thousands of floats.
The number lists are typed ``Any`` here: the fast path (``service.fast_parsing``)
fills them with float64 arrays copied straight out of simdjson's parse, the
careful path with the decoded JSON values; ``service.validation`` turns both
into checked arrays.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from common.names import MODEL_PATTERN, MODEL_RE, VERSION_PATTERN, VERSION_RE

_JSON_SCHEMA_PATTERNS = {MODEL_RE.pattern: MODEL_PATTERN, VERSION_RE.pattern: VERSION_PATTERN}
"""msgspec puts the Python spellings in the schemas it writes; clients read JSON Schema (ECMA) ones."""
ModelName = Annotated[str, msgspec.Meta(pattern=MODEL_RE.pattern)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Version = Annotated[str, msgspec.Meta(pattern=VERSION_RE.pattern)]
CohortText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Shape = Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(min_length=1, max_length=8)]

NUMBER_FIELDS = ("logits", "probabilities", "embedding")
"""The fields holding lists of numbers, the bulk of every event."""


class InputIn(msgspec.Struct, forbid_unknown_fields=True):
    """A model input as raw little-endian bytes."""

    shape: Shape
    dtype: str
    data: str
    """Base64 of the little-endian bytes."""


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
    """List of at least 2 probabilities summing to 1 ± 1e-3."""
    embedding: Any = None
    """List of finite floats; same length for every event of a model."""
    cohort: Annotated[dict[CohortText, CohortText], msgspec.Meta(max_length=32)] | None = None
    input: InputIn | list[Any] | None = None
    """Model input for attribution: ``{"shape", "dtype", "data"}`` or a nested list."""
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

    logits: list[float] | None = None
    probabilities: list[float] | None = None
    embedding: list[float] | None = None


class Batch(msgspec.Struct):
    """Documentation twin of :class:`BatchIn`."""

    events: list[Event]


def openapi_ingest_path(answer_type: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenAPI path item of ``POST /v1/events`` (served outside FastAPI's routing) and its components;
    ``answer_type`` is the result the route encodes (``service.ingest.IngestResult``)."""
    (one, many, answer), components = msgspec.json.schema_components(
        [Event, Batch, answer_type], ref_template="#/components/schemas/{name}"
    )
    components = _json_schema_patterns(components)
    error = {"description": "Refused; the body names the field: {error, field, ...}"}
    post = {
        "summary": 'Post one prediction event or {"events": [...]}',
        "operationId": "post_events",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [one, many]}}}},
        "responses": {
            "202": {
                "description": "Accepted (some events may be rejected)",
                "content": {"application/json": {"schema": answer}},
            },
            "401": error,
            "403": error,
            "413": error,
            "415": error,
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
