"""The careful path of body decoding: every event in order, decoded or rejected with its field named.

It serves the bodies the fast path (``service.decoding.fast_parsing``) will not judge.
msgspec first decodes the whole body into typed structs in one pass. Only when
that fails does the body get taken apart event by event, so that one bad
event never costs the valid ones beside it. JSON that msgspec refuses (NaN or
Infinity tokens are not JSON) is re-read by the standard library, which
accepts them, so the error can name the event and field instead of failing
the whole body.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import msgspec

from common.errors import InvalidInput
from service.events.errors import FieldError
from service.events.schemas import NUMBER_FIELDS, BatchIn, EventIn, RawBatchIn
from service.events.tensors import BinaryTensor, vectors_of
from service.http.body import NOT_UNICODE, lenient_json, not_unicode_at, printable

_BATCH = msgspec.json.Decoder(BatchIn)
_RAW_BATCH = msgspec.json.Decoder(RawBatchIn)
_EVENT = msgspec.json.Decoder(EventIn)
_UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What msgspec raises for bytes that are not (strict, UTF-8, reasonably shallow) JSON."""
_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?:\.events\[\d+\])?\.?(?P<path>[^`]*)`)?$", re.S)


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event refused at ``index`` of the request."""

    index: int
    request_id: str | None
    error: FieldError


Decoded = EventIn | Rejected


def decode_body(body: bytes, *, max_batch: int) -> list[Decoded]:
    """Every event of ``body`` in order, decoded or rejected; raises ``InvalidInput`` for the envelope."""
    if not body.strip():
        raise InvalidInput('body: empty; send one event object or {"events": [...]}', field="body")
    try:
        if not looks_like_batch(body):
            single = _decode_single(body)
            if not (isinstance(single, Rejected) and "unknown field `events`" in str(single.error)):
                return [single]
        try:
            events = _BATCH.decode(body).events
        except msgspec.ValidationError as error:
            if "at `$.events[" in str(error):
                return _decode_one_by_one(body, max_batch=max_batch)
            return [_decode_single(body)]
    except _UNREADABLE:
        return _decode_lenient(body, max_batch=max_batch)
    check_count(len(events), max_batch)
    return list(events)


def looks_like_batch(body: bytes) -> bool:
    """Cheap guess so that a single event is decoded once (a wrong guess only costs a retry)."""
    return body.lstrip()[:12].replace(b" ", b"").startswith(b'{"events"')


def _decode_single(body: bytes) -> Decoded:
    try:
        return _EVENT.decode(body)
    except msgspec.ValidationError as error:
        return Rejected(0, _request_id_of(body), field_error(error))


def _decode_one_by_one(body: bytes, *, max_batch: int) -> list[Decoded]:
    raw_events = _RAW_BATCH.decode(body).events
    check_count(len(raw_events), max_batch)
    decoded: list[Decoded] = []
    for index, raw in enumerate(raw_events):
        try:
            decoded.append(_EVENT.decode(raw))
        except msgspec.ValidationError as error:
            decoded.append(Rejected(index, _request_id_of(bytes(raw)), field_error(error)))
    return decoded


def _decode_lenient(body: bytes, *, max_batch: int) -> list[Decoded]:
    try:
        document, unicode = lenient_json(body)
    except (ValueError, RecursionError) as error:
        raise InvalidInput(f"body: not valid JSON: {error}", field="body") from None
    if isinstance(document, dict) and set(document) == {"events"} and isinstance(document["events"], list):
        items: list[Any] = document["events"]
        check_count(len(items), max_batch)
    else:
        items = [document]
    return [decode_object(index, item, via_json=True, unicode=unicode) for index, item in enumerate(items)]


def decode_object(
    index: int, item: Any, *, via_json: bool = False, finite: bool = False, unicode: bool = False
) -> Decoded:
    """One event already parsed into Python objects, NaN tokens included; ``via_json``: re-encode and decode
    it as the careful path's JSON does (else converted as is, e.g. with ``BinaryTensor``s in its fields);
    ``finite``: its parser refused NaN and infinity (and lone surrogates), so they need no search;
    ``unicode``: its text is surely Unicode (see :func:`~service.http.body.lenient_json`), so it needs no search."""
    request_id = item.get("request_id") if isinstance(item, dict) else None
    request_id = printable(request_id) if isinstance(request_id, str) else None
    try:
        bad = None if finite else _non_finite_path(item, "")
        if bad is not None:
            return Rejected(
                index, request_id, FieldError(bad or "event", "must be a finite number", reason="non_finite")
            )
        where = None if finite or unicode else not_unicode_at(item)
        if where is not None:
            return Rejected(index, request_id, FieldError(_path_text(where) or "event", NOT_UNICODE))
        return _EVENT.decode(msgspec.json.encode(item)) if via_json else msgspec.convert(item, EventIn)
    except msgspec.ValidationError as error:
        return Rejected(index, request_id, field_error(error))
    except RecursionError:
        return Rejected(index, request_id, FieldError("event", "nested too deeply"))


def _non_finite_path(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for child_path, child in items:
        found = _non_finite_path(child, child_path)
        if found is not None:
            return found
    return None


def _path_text(parts: list[str | int]) -> str:
    """A path as the event errors write it: ``cohort.region``, ``logits[3]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


def field_error(error: msgspec.ValidationError) -> FieldError:
    """Our error for a msgspec one: ``field: message`` with the path inside the event."""
    match = _PATH.match(str(error))
    message = match.group("message") if match else str(error)
    path = (match.group("path") if match else None) or "event"
    reason = "non_finite" if "out of range" in message else "invalid"
    return FieldError(path, message[:1].lower() + message[1:], reason=reason)


def _request_id_of(raw: bytes) -> str | None:
    try:
        found = msgspec.json.decode(raw, type=dict[str, msgspec.Raw]).get("request_id")
        return msgspec.json.decode(found, type=str) if found is not None else None
    except (msgspec.ValidationError, *_UNREADABLE):
        return None


def check_count(count: int, max_batch: int) -> None:
    """Refuses an empty batch or one larger than ``max_batch``."""
    if count == 0:
        raise InvalidInput("events: empty list", field="events")
    if count > max_batch:
        raise InvalidInput(f"events: at most {max_batch} per request, got {count}", field="events")


def read_tensors(decoded: list[Decoded]) -> list[Decoded]:
    """``decoded`` with the tensor objects in number fields read as float64 vectors (or the event refused).

    All of a request's tensors are read together (:func:`service.events.tensors.vectors_of`): one numpy pass
    per dtype and length instead of several calls per tensor.
    """
    wanted = [
        (position, key)
        for position, event in enumerate(decoded)
        if isinstance(event, EventIn)
        for key in NUMBER_FIELDS
        if isinstance(getattr(event, key), (dict, BinaryTensor))
    ]
    if not wanted:
        return decoded
    vectors = vectors_of([(getattr(decoded[position], key), key) for position, key in wanted])
    for (position, key), vector in zip(wanted, vectors, strict=True):
        event = decoded[position]
        if isinstance(event, Rejected):
            continue  # an earlier field of it was refused
        if isinstance(vector, FieldError):
            decoded[position] = Rejected(position, event.request_id, vector)
        else:
            setattr(event, key, vector)
    return decoded
