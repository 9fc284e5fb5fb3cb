"""The careful path of body decoding: every event in order, decoded or rejected with its field named.

It serves the bodies the fast path (``service.decoding.fast_parsing``) will not judge.
msgspec first decodes the whole body into typed structs in one pass. Only when
that fails does the body get taken apart event by event, so that one bad
event never costs the valid ones beside it. JSON that msgspec refuses (NaN or
Infinity tokens are not JSON) is re-read by the standard library, which
accepts them, so the error can name the event and field instead of failing
the whole body. A body nested deeper than these readers go is cut into its
events without recursion (``service.decoding.nesting``), each then read alone.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import msgspec

from common.errors import InvalidInput
from service.decoding.nesting import Item, NotJson, Scanned, depth_of, key_of
from service.events.errors import FieldError
from service.events.schemas import NUMBER_FIELDS, BatchIn, EventIn, RawBatchIn
from service.events.tensors import BinaryTensor, vectors_of
from service.http.body import NOT_UNICODE, lenient_json, not_unicode_at, printable

_BATCH = msgspec.json.Decoder(BatchIn)
_RAW_BATCH = msgspec.json.Decoder(RawBatchIn)
_EVENT = msgspec.json.Decoder(EventIn)
_UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What msgspec raises for bytes that are not (strict, UTF-8, reasonably shallow) JSON."""
_MOST_MEMBERS = 64
"""An event too deep to read, with more members than this, is named ``event``: an event has 10 fields."""
_UNKNOWN = re.compile(r"^Object contains unknown field `(.*)`$", re.S)
_BATCH_SHAPE = 'a batch is {"events": [event objects]}, one event an object of its own'
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
            _refuse_envelope(error)
            return [_decode_single(body)]
    except _UNREADABLE:
        return _decode_lenient(body, max_batch=max_batch)
    check_count(len(events), max_batch)
    return list(events)


def looks_like_batch(body: bytes) -> bool:
    """Cheap guess so that a single event is decoded once (a wrong guess only costs a retry)."""
    return body.lstrip()[:12].replace(b" ", b"").startswith(b'{"events"')


def _refuse_envelope(error: msgspec.ValidationError) -> None:
    """``InvalidInput`` for a ``{"events": ...}`` body whose envelope is wrong: ``events`` no list of events, or a
    key beside it. Anything else is left to the single-event reading, which names it (a body may be one event)."""
    match = _PATH.match(str(error))
    if match is None:
        return
    message, path = match.group("message"), match.group("path")
    if path == "events":
        raise InvalidInput(f"events: {message[:1].lower() + message[1:]}; {_BATCH_SHAPE}", field="events")
    unknown = _UNKNOWN.match(message)
    if not path and unknown is not None:
        name = printable(unknown.group(1))
        raise InvalidInput(f"{name}: unknown field beside events; {_BATCH_SHAPE}", field=name)


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
    except RecursionError:
        return _decode_deep(body, max_batch=max_batch)
    except ValueError as error:
        raise InvalidInput(f"body: not valid JSON: {error}", field="body") from None
    if isinstance(document, dict) and set(document) == {"events"} and isinstance(document["events"], list):
        items: list[Any] = document["events"]
        check_count(len(items), max_batch)
    else:
        items = [document]
    return [decode_object(index, item, via_json=True, unicode=unicode) for index, item in enumerate(items)]


def _decode_deep(body: bytes, *, max_batch: int) -> list[Decoded]:
    """A body nested too deeply for the JSON readers, cut into its events without recursion
    (``service.decoding.nesting``) and each read alone: only an event too deep to read is refused."""
    try:
        scanned = Scanned(body)
        events = _events_of(scanned, max_batch=max_batch)
        if events is None:
            return [_too_deep(0, scanned, Item(0, len(body), 0))]
        return [_decode_alone(index, scanned, event) for index, event in enumerate(events)]
    except NotJson as error:
        raise InvalidInput(f"body: not valid JSON: {error}", field="body") from None


def _decode_alone(index: int, scanned: Scanned, event: Item) -> Decoded:
    try:
        item, unicode = lenient_json(scanned.text[event.start : event.end])
    except RecursionError:
        return _too_deep(index, scanned, event)
    except ValueError as error:
        raise InvalidInput(f"body: not valid JSON: events[{index}]: {error}", field="body") from None
    return decode_object(index, item, via_json=True, unicode=unicode)


def _events_of(scanned: Scanned, *, max_batch: int) -> list[Item] | None:
    """The events of a ``{"events": [...]}`` body; ``None`` for any other JSON value (one event)."""
    body = scanned.text
    start = len(body) - len(body.lstrip())
    end = scanned.end_of(start)
    if body[end:].strip():
        raise NotJson(f"text after the JSON value, at byte {end}")
    one_member = body[start] == ord("{") and scanned.count(start) == 1
    found = key_of(body, scanned.items(start)[0]) if one_member else None
    if found is None or found[0] != "events" or body[found[1] : found[1] + 1] != b"[":
        return None
    after = scanned.end_of(found[1])
    if body[after : end - 1].strip():
        raise NotJson(f"text after the events array, at byte {after}")
    check_count(scanned.count(found[1]), max_batch)
    return scanned.items(found[1])


def _too_deep(index: int, scanned: Scanned, event: Item) -> Rejected:
    """An event no JSON reader here can read, refused naming its deepest member (``event`` when it is no
    object), and its request id when that is a plain string."""
    text = scanned.text
    start = event.end - len(text[event.start : event.end].lstrip())
    is_object = text[start : start + 1] == b"{" and scanned.count(start) <= _MOST_MEMBERS
    members = scanned.items(start) if is_object else []
    field, deepest, request_id = "event", -1, None
    for member in members:
        if (found := key_of(text, member)) is None:
            continue
        key, value_start = found
        if member.depth > deepest:
            field, deepest = printable(key), member.depth
        if key == "request_id" and member.depth == 0:
            with suppress(ValueError):
                request_id = json.loads(text[value_start : member.end])
    request_id = printable(request_id) if isinstance(request_id, str) else None
    return Rejected(index, request_id, FieldError(field, "nested too deeply"))


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
        field = max(item, key=lambda key: depth_of(item[key])) if isinstance(item, dict) and item else "event"
        return Rejected(index, request_id, FieldError(printable(str(field)), "nested too deeply"))


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
    if path == "event" and message == "Object contains unknown field `labels`":  # a labels body sent here
        return FieldError("labels", "not a field of an event; delayed labels go to POST /v1/labels")
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
