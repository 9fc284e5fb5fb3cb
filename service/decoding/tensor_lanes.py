"""Short lanes for bodies whose tensors are all well formed: compact base64 or binary-extension sections.

A serving stack that sends tensors (our client always does) sends them right almost always. For
such a body the general readers (``service.decoding.parsing``, ``service.decoding.binary_body``) do more than
needed: they keep every tensor as a dict of Python objects, convert each event on its own, and
look at each tensor's header in Python before reading it. Here:

- compact bodies are decoded by msgspec into typed tensor headers whose ``data`` stays a
  :class:`msgspec.Raw` slice of the body (no Python string is built for the base64 text, which
  halves the decode), and the base64 is read straight out of the body;
- binary-extension headers are parsed once by orjson (it keeps each event's key order, which says
  which section is whose), and all events are converted by msgspec in one call, their tensor headers
  into strictly typed structs, so that each later event's headers are checked against the first's
  with one ``==`` each;
- every tensor of one field, dtype and length is then one numpy matrix, checked for NaN and
  infinity in one pass, and handed over as such (:class:`Lane`): ingest checks, summarises and
  counts a lane's events column by column (``IngestHandler._admit_lane``).

A lane answers only when the whole body is well formed; anything else (a list of numbers, a bad
header, invalid base64, a size that disagrees, NaN, an event msgspec refuses, a JSON escape in the
base64 text) returns ``None`` and the general reader judges the body, so every error is worded
there, once. A lane's events, their rows of the matrices put in, are the general reader's events,
field for field (tested).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import orjson
import pybase64

from common.codec import DTYPES
from common.names import MODEL_RE, VERSION_RE
from common.numbers import ascii_decimal
from service.decoding.parsing import looks_like_batch
from service.events.schemas import NUMBER_FIELDS, EventIn
from service.events.tensor_numbers import all_finite
from service.events.tensors import OIP_DTYPES, bools_valid, vector_length, widened

_BINARY_KEYS = frozenset(("name", "shape", "datatype", "parameters"))
_TENSOR_FIELDS = frozenset((*NUMBER_FIELDS, "input"))
"""Fields that may take a section of the body (an ``input`` section sends the body to the general reader)."""
_QUOTE = 34  # b'"'
_UNREADABLE = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)


class CompactTensor(msgspec.Struct, forbid_unknown_fields=True):
    """A compact-form tensor header with its base64 text left in the body."""

    shape: list[int]
    dtype: str
    data: msgspec.Raw


class NamedEvent(EventIn, forbid_unknown_fields=True):
    """:class:`EventIn` whose model name and version are checked after the decode, once per distinct value
    (:func:`_names_valid`; a batch has one or two): msgspec checks their patterns per event, ~1 µs each."""

    model: str
    model_version: str = "unversioned"


class CompactEvent(NamedEvent, forbid_unknown_fields=True):
    """:class:`NamedEvent` whose number fields, when present, are compact tensors (replaced by vectors once read)."""

    logits: CompactTensor | None = None
    probabilities: CompactTensor | None = None
    embedding: CompactTensor | None = None


class CompactBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[CompactEvent]


class BinaryParameters(msgspec.Struct, forbid_unknown_fields=True):
    binary_data_size: int


class BinaryHeader(msgspec.Struct, forbid_unknown_fields=True):
    """A binary-extension tensor header, typed strictly: two are ``==`` only when they say the same (msgspec
    refuses 8.0 or true for an int here, which dicts would call equal to 8 or 1)."""

    shape: list[int]
    datatype: str
    parameters: BinaryParameters
    name: str | None = None


class BinaryEvent(NamedEvent, forbid_unknown_fields=True):
    """:class:`NamedEvent` whose number fields, when present, are binary-extension headers."""

    logits: BinaryHeader | None = None
    probabilities: BinaryHeader | None = None
    embedding: BinaryHeader | None = None


@dataclass(slots=True)
class Lane:
    """The events of a body a lane read, and the vectors of each number field they hold, one matrix per field."""

    events: Sequence[NamedEvent]
    """Their number fields are left as read (tensor headers): ``vectors`` holds their values."""
    vectors: dict[str, npt.NDArray[Any]]
    """Row ``i`` is event ``i``'s vector (float32 as sent, any other dtype widened to float64), checked finite;
    a field absent from every event is absent here."""


_COMPACT_BATCH = msgspec.json.Decoder(CompactBatch)
_COMPACT_EVENT = msgspec.json.Decoder(CompactEvent)


def decode_compact(body: bytes, *, max_batch: int) -> Lane | None:
    """Every event of a body of well-formed compact tensors, its number fields read; ``None`` otherwise.

    Each number field must be absent from every event or a vector of one dtype and length in every
    event (what a serving stack sends); the general reader takes any other mix.
    """
    try:
        events: list[CompactEvent] = (
            _COMPACT_BATCH.decode(body).events if looks_like_batch(body) else [_COMPACT_EVENT.decode(body)]
        )
    except _UNREADABLE:
        return None
    if not 0 < len(events) <= max_batch or not _names_valid(events):
        return None
    vectors = {}
    for field in NUMBER_FIELDS:
        tensors = [getattr(event, field) for event in events]
        if tensors[0] is None and tensors.count(None) == len(tensors):
            continue
        matrix = _compact_matrix(tensors)
        if matrix is None:
            return None
        vectors[field] = matrix
    return Lane(events, vectors)


def _names_valid(events: Sequence[NamedEvent]) -> bool:
    """Whether every model name and version matches :class:`EventIn`'s patterns (checked as msgspec checks them)."""
    return all(MODEL_RE.search(name) for name in {event.model for event in events}) and all(
        VERSION_RE.search(version) for version in {event.model_version for event in events}
    )


def _compact_matrix(tensors: list[CompactTensor | None]) -> npt.NDArray[Any] | None:
    """The vectors of one field, one per event, as a checked matrix; ``None`` unless all are alike and well formed."""
    first = tensors[0]
    if first is None:
        return None
    dtype, length = DTYPES.get(first.dtype), vector_length(first.shape)
    if dtype is None or not length:
        return None
    for tensor in tensors:
        if tensor is None or tensor.dtype != first.dtype or tensor.shape != first.shape:
            return None
    texts = [memoryview(tensor.data) for tensor in tensors]  # type: ignore[union-attr]  # checked above
    for text in texts:
        if text[0] != _QUOTE:  # not a string: stripping its ends could leave valid base64
            return None
    try:
        raws = [pybase64.b64decode(text[1:-1], validate=True) for text in texts]
    except (binascii.Error, ValueError):
        return None
    if set(map(len, raws)) != {length * dtype.itemsize}:
        return None
    return _checked(np.frombuffer(b"".join(raws), dtype=dtype).reshape(-1, length))


def decode_binary_fast(body: bytes, header_length: str, *, max_batch: int) -> Lane | None:
    """Every event of a binary-extension body whose events hold the same binary vectors, read; ``None`` otherwise.

    Every event must hold the same tensor fields, in the same order, with the same headers: the
    sections then repeat with a fixed stride, and each field is one strided view of the body.
    """
    size = ascii_decimal(header_length) or -1
    if not 0 < size <= len(body):
        return None
    try:
        document = orjson.loads(body[:size])
    except orjson.JSONDecodeError:
        return None
    items = _binary_items(document, max_batch)
    layout = None if items is None else _first_layout(items[0])
    if items is None or layout is None or not layout[1] or layout[1] * len(items) != len(body) - size:
        return None
    fields, stride = layout
    try:
        events: list[BinaryEvent] = msgspec.convert(items, list[BinaryEvent])
    except msgspec.ValidationError:
        return None
    if not _same_layout(items, events, [field for field, *_ in fields]) or not _names_valid(events):
        return None
    tail = np.frombuffer(body, dtype=np.uint8, offset=size).reshape(len(items), stride)
    vectors = {}
    for field, dtype, length, offset in fields:
        matrix = _checked(tail[:, offset : offset + length * dtype.itemsize].view(dtype))
        if matrix is None:
            return None
        vectors[field] = matrix
    return Lane(events, vectors)


def _first_layout(first: dict[str, Any]) -> tuple[list[tuple[str, np.dtype[Any], int, int]], int] | None:
    """Each tensor field's dtype, length and offset within the first event's sections, and the sections' stride;
    ``None`` unless each is a binary vector (an ``input`` is left to the general reader)."""
    fields, stride = [], 0
    for key in first:
        if key not in _TENSOR_FIELDS:
            continue
        dtype, length, section = _binary_vector(first[key]) if key != "input" else (None, 0, 0)
        if dtype is None or section != length * dtype.itemsize:
            return None
        fields.append((key, dtype, length, stride))
        stride += section
    return fields, stride


def _same_layout(items: list[dict[str, Any]], events: list[BinaryEvent], fields: list[str]) -> bool:
    """Whether every event holds the first one's tensor fields, in its order, with equal (strictly typed) headers."""
    keys, first = tuple(items[0]), events[0]
    headers = [getattr(first, field) for field in fields]
    for item, event in zip(items, events, strict=True):
        if tuple(item) != keys and [key for key in item if key in _TENSOR_FIELDS] != fields:
            return False
        for field, header in zip(fields, headers, strict=True):
            if getattr(event, field) != header:
                return False
    return True


def _binary_items(document: Any, max_batch: int) -> list[dict[str, Any]] | None:
    if isinstance(document, dict) and document.keys() == {"events"} and isinstance(document["events"], list):
        items = document["events"]
        if not 0 < len(items) <= max_batch:
            return None
    else:
        items = [document]
    return items if all(type(item) is dict for item in items) else None


def _binary_vector(value: Any) -> tuple[np.dtype[Any] | None, int, int]:
    """dtype, length and section size of a binary vector of a ``[n]`` or ``[1, n]`` shape; dtype ``None`` otherwise."""
    if type(value) is not dict or not value.keys() <= _BINARY_KEYS:
        return None, 0, 0
    parameters, shape = value.get("parameters"), value.get("shape")
    if type(parameters) is not dict or parameters.keys() != {"binary_data_size"} or type(shape) is not list:
        return None, 0, 0
    size, name, length = parameters["binary_data_size"], value.get("datatype"), vector_length(shape)
    if type(size) is not int or type(name) is not str or not length:
        return None, 0, 0
    return OIP_DTYPES.get(name), length, size


def _checked(matrix: npt.NDArray[Any]) -> npt.NDArray[Any] | None:
    """``matrix`` as the events' vectors (:func:`service.events.tensors.widened`); ``None`` if not finite."""
    if (matrix.dtype.kind == "f" and not all_finite(matrix)) or not bools_valid(matrix):
        return None
    return widened(matrix)
