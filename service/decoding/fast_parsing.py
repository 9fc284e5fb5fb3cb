"""The fast path of body decoding: simdjson parses, number lists become arrays without Python floats.

An event of 1000 logits and a 768-float embedding is ~1,800 numbers. Turning
each into a Python float (what ``orjson.loads`` or msgspec do) is most of the
cost of a request; simdjson's DOM keeps them as doubles, and ``as_buffer``
copies a list into a float64 array directly. The small fields are converted
to Python and checked by msgspec against the same ``EventIn`` schema as the
careful path.

A body whose scores are tensor objects (``service.events.tensors``) holds no long number
lists. When all its tensors are well formed, a short lane (``service.decoding.tensor_lanes``)
reads it: compact base64 straight out of the body, binary sections as strided views,
one matrix per field, handed over as a :class:`~service.decoding.tensor_lanes.Lane`. Otherwise
msgspec's typed decode of the careful path reads it, and :func:`service.decoding.parsing.read_tensors`
then reads all its tensors together, one numpy pass per dtype and length. Binary-extension
bodies take the same two routes.

The fast path only answers for bodies it can judge with certainty. simdjson
refuses NaN/Infinity tokens, numbers beyond float range, integers beyond 64
bits, bad UTF-8 and nesting deeper than 1024; such bodies (and any duplicate
key) go to the careful path in ``service.decoding.parsing``, which names the event and
field at fault.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import simdjson

from service.decoding.binary_body import decode_binary
from service.decoding.parsing import Decoded, Rejected, check_count, decode_body, field_error, read_tensors
from service.decoding.tensor_lanes import Lane, decode_binary_fast, decode_compact
from service.events.errors import FieldError
from service.events.schemas import NUMBER_FIELDS, EventIn

_OPEN = 91  # b"["
_FIRST_SCORES = re.compile(rb'"(?:logits|probabilities)"\s*:\s*([\[{])')
_ENCODE = msgspec.json.Encoder().encode
_REUSED = "re-use a parser"
"""pysimdjson's complaint when a proxy of the previous document is still alive."""


class BodyDecoder:
    """Decodes request bodies, the fast way when it can. One per process: it keeps its parser's buffers."""

    def __init__(self, *, max_batch: int) -> None:
        self._max_batch = max_batch
        self._parser = simdjson.Parser()

    def decode(
        self, body: bytes, *, open_brackets: int | None = None, header_length: str | None = None
    ) -> Lane | list[Decoded]:
        """Every event of ``body`` in order, decoded or rejected; raises ``InvalidInput`` for the envelope.

        A body a short lane read comes as a :class:`Lane`: its events and one matrix per number field.

        ``open_brackets``: the body's count of b"[", when a :class:`BracketTally` took it while reading.
        ``header_length``: the ``Inference-Header-Content-Length`` of a binary-extension body.
        """
        if header_length is not None:  # a short lane for well-formed tensors, else the general reader
            lane = decode_binary_fast(body, header_length, max_batch=self._max_batch)
            return lane or read_tensors(decode_binary(body, header_length, max_batch=self._max_batch))
        if scores_are_tensors(body):  # no number lists: msgspec's typed decode is the quickest reader
            lane = decode_compact(body, max_batch=self._max_batch)
            return lane or read_tensors(decode_body(body, max_batch=self._max_batch))
        fast = self.decode_fast(body, open_brackets=open_brackets) if body.strip() else None
        return read_tensors(fast if fast is not None else decode_body(body, max_batch=self._max_batch))

    def decode_fast(self, body: bytes, *, open_brackets: int | None = None) -> list[Decoded] | None:
        """The decoded events, or ``None`` when the body needs the careful path to be judged."""
        if open_brackets is None:
            open_brackets = count_open_brackets(body)
        document = self._parse(body)
        if isinstance(document, simdjson.Object) and "events" in document:
            keys = list(document.keys())
            events = document["events"]
            if keys != ["events"] or not isinstance(events, simdjson.Array):
                return None  # an odd envelope: the careful path words the error
            check_count(len(events), self._max_batch)
            items: Any = events
            expected_brackets = 1
        elif document is not None:
            items = (document,)
            expected_brackets = 0
        else:
            return None
        decoded: list[Decoded] = []
        for index, item in enumerate(items):
            judged = _decode_item(index, item)
            if judged is None:
                return None
            decoded.append(judged[0])
            expected_brackets += judged[1]
        if open_brackets != expected_brackets:
            return None  # a number list holds nested lists that as_buffer flattened, or a '[' was escaped
        return decoded

    def _parse(self, body: bytes) -> Any:
        try:
            return self._parser.parse(body)
        except RuntimeError as error:
            if _REUSED not in str(error):
                return None  # e.g. an integer beyond 64 bits
            self._parser = simdjson.Parser()  # a proxy outlived its request: leave that parser to it
            return self._parse(body)
        except (ValueError, UnicodeDecodeError):
            return None


def _decode_item(index: int, item: Any) -> tuple[Decoded, int] | None:
    """The item's verdict and how many '[' its JSON text holds; ``None`` when the careful path must judge."""
    try:
        if not isinstance(item, simdjson.Object):
            value = _plain(item)
            return _checked(index, value, {}), _brackets_in(value)
        keys = list(item.keys())
        if len(set(keys)) != len(keys):
            return None  # which duplicate wins is the careful path's call
        fields: dict[str, Any] = {}
        numbers: dict[str, Any] = {}  # arrays, errors, and tensor objects for read_tensors
        brackets = 0
        for key in keys:
            try:
                value = item[key]
            except KeyError:  # simdjson looks a key up as a C string: one holding "\u0000" is listed, then not found
                return None  # (items() would find it, but builds every number list as Python floats: ~4x the cost)
            if key in NUMBER_FIELDS and isinstance(value, simdjson.Array):
                numbers[key] = _array_of(value, key)
                brackets += 1
            elif key in NUMBER_FIELDS and isinstance(value, simdjson.Object):
                numbers[key] = tensor = value.as_dict()  # small unless v2 JSON numbers: compact data is one string
                brackets += _tensor_brackets(tensor)
            else:
                fields[key] = _plain(value)
        if any(isinstance(number, FieldError) for number in numbers.values()):
            return None  # which of the event's faults to name first is the careful path's call
        return _checked(index, fields, numbers), brackets + _brackets_in(fields)
    except RecursionError:
        return None


def scores_are_tensors(body: bytes) -> bool:
    """Whether the first event's scores, within the body's first 4 KiB, are a tensor object rather than a list.

    Only a guess at the route: both paths judge every body alike (tested), one is just quicker for it.
    """
    found = _FIRST_SCORES.search(body, 0, 4096)
    return found is not None and found.group(1) == b"{"


def _checked(index: int, fields: Any, numbers: dict[str, Any]) -> Decoded:
    request_id = fields.get("request_id") if isinstance(fields, dict) else None
    request_id = request_id if isinstance(request_id, str) else None
    if isinstance(fields, dict) and numbers:
        fields = {**fields, **numbers}
    try:
        return msgspec.convert(fields, EventIn)
    except msgspec.ValidationError as error:
        return Rejected(index, request_id, field_error(error))


def _array_of(value: Any, field: str) -> npt.NDArray[np.float64] | FieldError:
    """The list's numbers as float64; an error (returned, not raised: a traceback would keep the parse alive)."""
    try:
        array = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
    except TypeError:  # a string, bool, null or object among the numbers
        return FieldError(field, "must be a flat list of numbers")
    if array.shape[0] != len(value):
        return FieldError(field, "must be a flat list of numbers")  # as_buffer flattened a nested list
    return array


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _brackets_in(value: Any) -> int:
    """How many '[' the JSON text of ``value`` holds, as lists and inside strings (msgspec never escapes '[')."""
    return _ENCODE(value).count(b"[")


def _tensor_brackets(tensor: dict[str, Any]) -> int:
    """:func:`_brackets_in` of a tensor object, leaving out a compact form's long base64 text.

    A '[' in that text is not base64, so the tensor is refused anyway; the count then exceeds the
    expected one, which only sends the body to the careful path. Counting it would cost as much as
    decoding the text.
    """
    if isinstance(tensor.get("data"), str):
        return _brackets_in({key: value for key, value in tensor.items() if key != "data"})
    return _brackets_in(tensor)


def count_open_brackets(data: bytes) -> int:
    """How many b"[" ``data`` holds."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == _OPEN))


class BracketTally:
    """Counts b"[" chunk by chunk as a body arrives: a pass over the whole body afterwards costs
    several times more, because by then it has left the CPU cache. A body whose first chunk shows
    tensor scores goes to the careful path, which needs no count: ``count`` is then ``None``."""

    def __init__(self) -> None:
        self.count: int | None = 0
        self._first = True

    def __call__(self, chunk: bytes) -> None:
        if self._first:
            self._first = False
            if scores_are_tensors(chunk):
                self.count = None
        if self.count is not None:
            self.count += count_open_brackets(chunk)
