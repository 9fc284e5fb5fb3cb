"""The monitoring feed: what every sidecar publishes about each accepted event, and how it reads back.

The sidecars write, the fleet monitor reads; this module owns the format (versioned) so
neither re-spells it. A record is one blob of length-prefixed parts, each a one-byte tag,
a 4-byte little-endian length and the bytes:

* ``v`` — format version (``1``);
* ``h`` — JSON header: request id, model version, event time, predicted class, top-1
  probability, margin, number of classes, cohort, and the label of a labelled record;
* ``p`` — the probability vector as little-endian float64, when the model has few classes
  (Brier score); absent otherwise;
* ``e`` — the embedding as little-endian float32 (4 bytes a value, not JSON numbers); absent
  when the event had none, and in the records that wait for a delayed label.

A stream entry has the blob as its one field ``r`` (one argument to pack, not a dozen); the
record waiting in Redis for its label is the same blob without ``e``. The header is encoded
once per record however many blobs are made of it. Imports numpy and orjson only: the
sidecar stays lean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

FORMAT_VERSION = 1
ENTRY_FIELD = b"r"
"""The one field of a stream entry."""
_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")


def _part(tag: bytes, value: bytes) -> bytes:
    return tag + len(value).to_bytes(4, "little") + value


_VERSION_PART = _part(b"v", str(FORMAT_VERSION).encode())


_SLACK = 1e-6
"""How far past [0, 1] a probability may round and still be read (the readers clip it)."""


class FeedFormatError(ValueError):
    """A stream entry or blob that is not a monitoring record of a version we read."""


@dataclass(slots=True)
class MonitoringRecord:
    """One accepted prediction as the monitor sees it."""

    model: str
    request_id: str
    version: str
    time_s: float
    predicted: int
    confidence: float
    """Top-1 probability."""
    margin: float
    num_classes: int
    cohort: dict[str, str] = field(default_factory=dict)
    probabilities: npt.NDArray[np.float64] | None = None
    embedding: npt.NDArray[np.float32] | None = None
    label: int | None = None
    _head: bytes | None = field(default=None, repr=False, compare=False)

    def labelled(self, label: int) -> MonitoringRecord:
        """The same prediction with its true label (and without the embedding, which labels do not need)."""
        return replace(self, label=label, embedding=None, _head=None)

    def blob(self, *, embedding: bool = True) -> bytes:
        """The record as one value; ``embedding=False`` leaves the embedding out."""
        if self._head is None:
            self._head = self._encode_head()
        if not embedding or self.embedding is None:
            return self._head
        return self._head + _part(b"e", np.ascontiguousarray(self.embedding, dtype=_F32).tobytes())

    def _encode_head(self) -> bytes:
        header: dict[str, Any] = {
            "id": self.request_id,
            "ver": self.version,
            "t": self.time_s,
            "c": self.predicted,
            "p": self.confidence,
            "m": self.margin,
            "n": self.num_classes,
        }
        if self.cohort:
            header["co"] = self.cohort
        if self.label is not None:
            header["y"] = self.label
        head = _VERSION_PART + _part(b"h", orjson.dumps(header))
        if self.probabilities is not None:
            head += _part(b"p", np.ascontiguousarray(self.probabilities, dtype=_F64).tobytes())
        return head

    @classmethod
    def from_entry(cls, model: str, fields: dict[bytes, bytes]) -> MonitoringRecord:
        """A record from a stream entry."""
        blob = fields.get(ENTRY_FIELD)
        if blob is None:
            raise FeedFormatError(f"stream entry without the field {ENTRY_FIELD!r}")
        return cls.from_blob(model, blob)

    @classmethod
    def from_blob(cls, model: str, blob: bytes) -> MonitoringRecord:
        parts = _parts(blob)
        if parts.get(b"v") != str(FORMAT_VERSION).encode():
            raise FeedFormatError(
                f"monitoring record of version {parts.get(b'v')!r}; this reader knows {FORMAT_VERSION}"
            )
        try:
            header = orjson.loads(parts[b"h"])
            record = cls(
                model=model,
                request_id=str(header["id"]),
                version=str(header["ver"]),
                time_s=float(header["t"]),
                predicted=int(header["c"]),
                confidence=float(header["p"]),
                margin=float(header["m"]),
                num_classes=int(header["n"]),
                cohort={str(k): str(v) for k, v in header.get("co", {}).items()},
                label=int(header["y"]) if "y" in header else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError) as error:
            raise FeedFormatError(f"monitoring record header unreadable: {error}") from None
        _check_header(record)
        record.probabilities = _vector(parts.get(b"p"), _F64, np.float64, record.num_classes)
        probabilities = record.probabilities
        if probabilities is not None and not ((probabilities >= -_SLACK) & (probabilities <= 1 + _SLACK)).all():
            raise FeedFormatError("probability vector holds values outside [0, 1] (or NaN)")
        record.embedding = _vector(parts.get(b"e"), _F32, np.float32, None)
        if record.embedding is not None and not np.isfinite(record.embedding).all():
            raise FeedFormatError("embedding holds NaN or infinite values")
        return record


def _check_header(record: MonitoringRecord) -> None:
    """What the sidecar never writes, so a record holding it was not written by one: refused, not examined."""
    if not all(math.isfinite(value) for value in (record.time_s, record.confidence, record.margin)):
        raise FeedFormatError("monitoring record with a time, confidence or margin that is NaN or infinite")
    if not -_SLACK <= record.confidence <= 1.0 + _SLACK:
        raise FeedFormatError(f"monitoring record with confidence {record.confidence} outside [0, 1]")
    if not 0 <= record.predicted < record.num_classes:
        raise FeedFormatError(f"monitoring record predicting class {record.predicted} of {record.num_classes} classes")
    if record.label is not None and not 0 <= record.label < record.num_classes:
        raise FeedFormatError(f"monitoring record labelled {record.label} of {record.num_classes} classes")


def _parts(blob: bytes) -> dict[bytes, bytes]:
    parts: dict[bytes, bytes] = {}
    at = 0
    while at < len(blob):
        if at + 5 > len(blob):
            raise FeedFormatError("monitoring record truncated")
        size = int.from_bytes(blob[at + 1 : at + 5], "little")
        if at + 5 + size > len(blob):
            raise FeedFormatError("monitoring record truncated")
        parts[blob[at : at + 1]] = blob[at + 5 : at + 5 + size]
        at += 5 + size
    return parts


def _vector(raw: bytes | None, wire: np.dtype[Any], dtype: type[np.floating[Any]], length: int | None) -> Any:
    if raw is None:
        return None
    if len(raw) % wire.itemsize:
        raise FeedFormatError(f"array of {len(raw)} bytes is not a whole number of {wire.name} values")
    vector = np.frombuffer(raw, dtype=wire).astype(dtype)
    if length is not None and vector.shape[0] != length:
        raise FeedFormatError(f"probability vector of {vector.shape[0]} values for {length} classes")
    return vector
