"""The monitoring feed: what every sidecar publishes about each accepted event, and how it reads back.

The sidecars write, the fleet monitor reads; this module owns the format (versioned)
so neither re-spells it. One stream entry per event, fields:

* ``v`` — format version (``1``);
* ``h`` — JSON header: request id, model version, event time, predicted class, top-1
  probability, margin, cohort, and the label when the record is a labelled one;
* ``p`` — the probability vector as little-endian float64 bytes, when the model has few
  classes (Brier score); absent otherwise;
* ``e`` — the embedding as little-endian float32 bytes (4 bytes a value, not JSON numbers); absent
  when the event had none.

The same record, as one blob (:meth:`MonitoringRecord.to_blob`), is what a sidecar keeps in Redis
while a prediction waits for its delayed label. Imports numpy and orjson only: the sidecar stays lean.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

FORMAT_VERSION = 1
_VERSION = str(FORMAT_VERSION).encode()
_F32 = np.dtype("<f4")
_F64 = np.dtype("<f8")


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

    def labelled(self, label: int) -> MonitoringRecord:
        """The same prediction with its true label (and without the embedding, which labels do not need)."""
        return replace(self, label=label, embedding=None)

    def _header(self) -> bytes:
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
        return orjson.dumps(header)

    def to_fields(self) -> dict[bytes, bytes]:
        """The stream entry."""
        fields = {b"v": _VERSION, b"h": self._header()}
        if self.probabilities is not None:
            fields[b"p"] = np.ascontiguousarray(self.probabilities, dtype=_F64).tobytes()
        if self.embedding is not None:
            fields[b"e"] = np.ascontiguousarray(self.embedding, dtype=_F32).tobytes()
        return fields

    @classmethod
    def from_fields(cls, model: str, fields: dict[bytes, bytes]) -> MonitoringRecord:
        if fields.get(b"v") != _VERSION:
            raise FeedFormatError(f"monitoring record of version {fields.get(b'v')!r}; this reader knows {_VERSION!r}")
        try:
            header = orjson.loads(fields[b"h"])
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
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as error:
            raise FeedFormatError(f"monitoring record header unreadable: {error}") from None
        record.probabilities = _vector(fields.get(b"p"), _F64, np.float64, record.num_classes)
        record.embedding = _vector(fields.get(b"e"), _F32, np.float32, None)
        return record

    def to_blob(self) -> bytes:
        """The record as one value: the stream fields, length-prefixed (no embedding)."""
        parts = [(name, value) for name, value in replace(self, embedding=None).to_fields().items()]
        return b"".join(name + len(value).to_bytes(4, "little") + value for name, value in parts)

    @classmethod
    def from_blob(cls, model: str, blob: bytes) -> MonitoringRecord:
        fields: dict[bytes, bytes] = {}
        at = 0
        while at < len(blob):
            if at + 5 > len(blob):
                raise FeedFormatError("monitoring record blob truncated")
            size = int.from_bytes(blob[at + 1 : at + 5], "little")
            fields[blob[at : at + 1]] = blob[at + 5 : at + 5 + size]
            at += 5 + size
        if at != len(blob):
            raise FeedFormatError("monitoring record blob truncated")
        return cls.from_fields(model, fields)


def _vector(raw: bytes | None, wire: np.dtype[Any], dtype: type[np.floating[Any]], length: int | None) -> Any:
    if raw is None:
        return None
    if len(raw) % wire.itemsize:
        raise FeedFormatError(f"array of {len(raw)} bytes is not a whole number of {wire.name} values")
    vector = np.frombuffer(raw, dtype=wire).astype(dtype)
    if length is not None and vector.shape[0] != length:
        raise FeedFormatError(f"probability vector of {vector.shape[0]} values for {length} classes")
    return vector
