"""Wire schemas of the ingest API, decoded straight from the raw body with msgspec.

msgspec validates types while it parses, which is several times cheaper than
FastAPI body models for events that carry thousands of floats. The number
lists are kept as raw JSON and parsed by orjson, which is faster than msgspec's
typed float lists and refuses NaN, Infinity and out-of-range numbers.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

MODEL_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
"""What a model name may be, wherever one arrives (events, labels, paths)."""
ModelName = Annotated[str, msgspec.Meta(pattern=MODEL_PATTERN)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Version = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
CohortText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Shape = Annotated[list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(min_length=1, max_length=8)]

ABSENT = msgspec.Raw(b"")
"""Marks a raw field that was not sent (``msgspec.Raw`` cannot be optional)."""


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
    logits: msgspec.Raw = ABSENT
    """List of at least 2 finite numbers (exactly one of logits or probabilities)."""
    probabilities: msgspec.Raw = ABSENT
    """List of at least 2 probabilities summing to 1 ± 1e-3."""
    embedding: msgspec.Raw = ABSENT
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
    """Documentation twin of :class:`EventIn` (a raw field has no JSON schema)."""

    logits: list[float] | None = None  # type: ignore[assignment]
    probabilities: list[float] | None = None  # type: ignore[assignment]
    embedding: list[float] | None = None  # type: ignore[assignment]


class Batch(msgspec.Struct):
    """Documentation twin of :class:`BatchIn`."""

    events: list[Event]


def openapi_body_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON schema of the request body and its components, for the OpenAPI document."""
    (one, many), components = msgspec.json.schema_components([Event, Batch], ref_template="#/components/schemas/{name}")
    return {"oneOf": [one, many]}, components
