"""The queue contract between the sidecar (producer) and the attribution workers.

A sampled event travels as one stream entry with a single field, ``m``: the
JSON of a versioned :class:`SampledEvent`. Entries are never pickled, and a
consumer that meets an entry it cannot decode moves it to the dead-letter
stream instead of guessing. Workers ``XACK`` and then ``XDEL`` an entry once
its result is stored, so a stream's length is its backlog.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.codec import MAX_DIMS, EncodedArray
from sampler.policy import Reason

MESSAGE_FIELD = b"m"
"""The one field of every stream entry."""


class MessageError(ValueError):
    """A stream entry that is not a valid message of a version this code reads."""


class InputTensor(EncodedArray):
    """A model input (:class:`EncodedArray`, at least one dimension); ``decode`` raises ``MessageError``."""

    subject: ClassVar[str] = "input"
    decode_error: ClassVar[type[ValueError]] = MessageError

    shape: tuple[int, ...] = Field(min_length=1, max_length=MAX_DIMS)


class SampledEvent(BaseModel):
    """A prediction chosen for attribution (message version 1). Numbers are finite: pydantic's JSON parser takes
    ``NaN`` and ``Infinity``, which no event time or probability can be, so such an entry is undecodable."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    v: Literal[1] = 1
    model: str
    model_version: str
    request_id: str
    timestamp: float
    """Event time, epoch seconds (the serving stack's, or receive time)."""
    received_at: float
    """When the sidecar accepted the event, epoch seconds."""
    reasons: tuple[Reason, ...]
    predicted: int
    confidence: float
    margin: float
    num_classes: int
    cohort: dict[str, str] = Field(default_factory=dict)
    label: int | None = None
    input: InputTensor | None = None

    def encode(self) -> dict[bytes, bytes]:
        """Fields of the stream entry."""
        return {MESSAGE_FIELD: self.model_dump_json(exclude_none=True).encode()}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes]) -> SampledEvent:
        """Parse a stream entry; anything unexpected raises ``MessageError`` (never executed)."""
        body = fields.get(MESSAGE_FIELD)
        if body is None or len(fields) != 1:
            raise MessageError(f"entry must have exactly the field {MESSAGE_FIELD!r}, got {sorted(fields)!r}")
        try:
            return cls.model_validate_json(body)
        except ValidationError as error:
            first = error.errors()[0]
            where = "".join(f"{part}: " for part in first["loc"][:1])
            raise MessageError(f"not a version-1 sampled event: {where}{first['msg']}") from error
