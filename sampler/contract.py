"""The queue contract between the sidecar (producer) and the attribution workers.

A sampled event travels as one stream entry with a single field, ``m``: the
JSON of a versioned :class:`SampledEvent`. Entries are never pickled, and a
consumer that meets an entry it cannot decode moves it to the dead-letter
stream instead of guessing. Workers ``XACK`` and then ``XDEL`` an entry once
its result is stored, so a stream's length is its backlog.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sampler.policy import Reason

MESSAGE_FIELD = b"m"
"""The one field of every stream entry."""

DTYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")
}
"""Input dtypes accepted on the wire, all little-endian."""


class MessageError(ValueError):
    """A stream entry that is not a valid message of a version this code reads."""


class InputTensor(BaseModel):
    """A model input: raw little-endian bytes (base64) with shape and dtype."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[int, ...] = Field(min_length=1, max_length=8)
    dtype: Literal["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"]
    data: str

    @classmethod
    def from_array(cls, array: npt.NDArray[Any]) -> InputTensor:
        dtype = DTYPES[array.dtype.name]
        raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
        return cls.model_validate(
            {"shape": array.shape, "dtype": array.dtype.name, "data": base64.b64encode(raw).decode()}
        )

    def to_array(self) -> npt.NDArray[Any]:
        """The tensor as a native-endian numpy array; raises ``MessageError`` on a mismatch."""
        raw = base64.b64decode(self.data, validate=True)
        dtype = DTYPES[self.dtype]
        expected = int(np.prod(self.shape)) * dtype.itemsize
        if len(raw) != expected:
            raise MessageError(f"input: {len(raw)} bytes do not fit shape {list(self.shape)} of {self.dtype}")
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape).astype(dtype.newbyteorder("="))


class SampledEvent(BaseModel):
    """A prediction chosen for attribution (message version 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

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
            raise MessageError(f"not a version-1 sampled event: {error.errors()[0]['msg']}") from error
