"""The simdjson fast path agrees with the careful path, and hands it every body it cannot judge."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import msgspec
import numpy as np
import pytest

from common.errors import VaiError
from helpers import event
from service.decoding.fast_parsing import BodyDecoder, scores_are_tensors
from service.decoding.parsing import Decoded, Rejected, decode_body, read_tensors
from service.decoding.tensor_lanes import Lane
from service.events.accepted import Prediction
from service.events.errors import FieldError
from service.ingest.validation import check, summarised

MAX_BATCH = 50


def _batch(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def _compact(values: list[float]) -> dict[str, Any]:
    raw = np.array(values, dtype="<f4").tobytes()
    return {"shape": [len(values)], "dtype": "float32", "data": base64.b64encode(raw).decode()}


def _verdict(item: Decoded) -> Prediction | tuple[str | None, str, str]:
    """The prediction, or the refusal as (request id, field, reason), whichever step refused it."""
    if isinstance(item, Rejected):
        return item.request_id, item.error.field, item.error.reason
    try:
        return summarised([check(item, received_at=1.7e9)], received_at=1.7e9).prediction(0)
    except FieldError as error:
        return item.request_id, error.field, error.reason


def _read(found: Lane | list[Decoded]) -> list[Decoded]:
    """The events as the general reader gives them (a lane's with their rows of its matrices put in)."""
    if not isinstance(found, Lane):
        return found
    return [
        msgspec.structs.replace(event, **{field: matrix[index] for field, matrix in found.vectors.items()})
        for index, event in enumerate(found.events)
    ]


def _same(fast: Lane | list[Decoded], careful: list[Decoded]) -> None:
    fast = _read(fast)
    assert len(fast) == len(careful)
    for mine, theirs in zip(fast, careful, strict=True):
        a, b = _verdict(mine), _verdict(theirs)
        if isinstance(a, Prediction) and isinstance(b, Prediction):
            assert a.scores.dtype == b.scores.dtype
            np.testing.assert_array_equal(a.scores, b.scores)
            if a.embedding is None or b.embedding is None:
                assert a.embedding is None and b.embedding is None
            else:
                np.testing.assert_array_equal(a.embedding, b.embedding)
            for name in ("model", "version", "request_id", "timestamp", "predicted", "confidence", "margin"):
                assert getattr(a, name) == getattr(b, name), name
            assert (a.cohort, a.input, a.label) == (b.cohort, b.input, b.label)
        else:
            assert a == b


def _floats(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


VALID = [
    pytest.param(json.dumps(event("one")).encode(), id="single-event"),
    pytest.param(b'{"model":"m","request_id":"ints","logits":[3,-7,0,12]}', id="integer-logits"),
    pytest.param(
        b'{"model":"m","request_id":"forms","logits":[1E2,-0.0,2e-400,1.5e+3,-4.25E-1,18446744073709551615]}',
        id="number-forms-and-underflow",
    ),
    pytest.param(
        _batch(
            event("a", embedding=[0.5, -1.0, 2.0], cohort={"region": "eu", "device": "mobile"}, label=1),
            event("b", probabilities=[0.25, 0.75], logits=None, model_version="v2", timestamp="2026-11-22T10:00:00Z"),
            event("c", input={"shape": [2], "dtype": "float32", "data": _floats(1.0, 2.0)}, timestamp=1_700_000_001.5),
            event("d", input=[[1.0, 2.0], [3.0, 4.0]], embedding=[1, 2, 3]),
        ),
        id="batch-of-every-field",
    ),
    pytest.param(
        json.dumps(event("br[ack]s", cohort={"[k]": "v[1]"}), ensure_ascii=False).encode(),
        id="brackets-inside-strings",
    ),
    pytest.param(json.dumps(event("ünïcødé ✓"), ensure_ascii=False).encode(), id="utf8-strings"),
    pytest.param(json.dumps(event("ünïcødé ✓"), ensure_ascii=True).encode(), id="escaped-utf8-strings"),
    pytest.param(
        _batch(event("ok"), event("bad", label=True), {**event("bad2"), "model": 7}, event("ok2"), event("x", foo=1)),
        id="batch-with-schema-errors",
    ),
    pytest.param(
        _batch(event("s", logits="4,1"), event("u", embedding={"a": 1.0})),
        id="batch-with-number-field-errors",
    ),
    pytest.param(b'{"events":[1,"x",[1,2],null]}', id="batch-of-non-objects"),
    pytest.param(
        b'{"model":"m","request_id":"nul","logits":[4.0,1.0],"cohort":{"a\\u0000b":"v"}}', id="cohort-key-holding-nul"
    ),
    pytest.param(b"[1, 2]", id="array-body"),
    pytest.param(b'"just a string"', id="string-body"),
]


@pytest.mark.parametrize("body", VALID)
def test_fast_path_judges_like_the_careful_path(body: bytes) -> None:
    decoder = BodyDecoder(max_batch=MAX_BATCH)
    fast = decoder.decode_fast(body)
    assert fast is not None, "the fast path should have judged this body"
    _same(fast, decode_body(body, max_batch=MAX_BATCH))


HANDED_OVER = [
    pytest.param(b'{"model":"m","request_id":"r","logits":[NaN,1.0]}', id="nan-token"),
    pytest.param(b'{"model":"m","request_id":"r","logits":[1e400,1.0]}', id="overflow"),
    pytest.param(b'{"model":"m","request_id":"r","logits":[' + b"9" * 30 + b",1.0]}", id="integer-beyond-64-bits"),
    pytest.param(b'{"model":"m","request_id":"r","logits":[[4.0],[1.0]]}', id="nested-singletons"),
    pytest.param(b'{"model":"m","request_id":"r\\u005b","logits":[4.0,1.0]}', id="escaped-bracket"),
    pytest.param(b'{"model":"m","request_id":"r","request_id":"s","logits":[4.0,1.0]}', id="duplicate-key"),
    pytest.param(b'{"model":"m\xff","request_id":"r","logits":[4.0,1.0]}', id="bad-utf8"),
    pytest.param(b'{"events":[' + json.dumps(event("a")).encode() + b'],"extra":1}', id="odd-envelope"),
    pytest.param(b'{"events": 3}', id="events-not-a-list"),
    pytest.param(b'{"model":"m","request_id":"r","cohort":{"a":' + b"[" * 2000 + b"]" * 2000 + b"}}", id="deep"),
    pytest.param(b"null", id="null-body"),
    # simdjson looks keys up as C strings: a key holding NUL is listed but not found by name
    pytest.param(b'{"model":"m","request_id":"nul","logits":[4.0,1.0],"a\\u0000b":1}', id="unknown-key-holding-nul"),
    # a list that is not all numbers: which of the event's faults comes first is the careful path's call
    pytest.param(_batch(event("ok"), event("t", logits=[4.0, "1"])), id="list-with-a-string"),
    pytest.param(
        _batch(event("t", logits={**_compact([float("nan"), 1.0])}, embedding=[1.0, "x"])),
        id="bad-list-beside-a-bad-tensor",
    ),
    pytest.param(_batch(event("t", model="bad name", embedding=[1.0, "x"])), id="bad-list-beside-a-bad-model"),
]


@pytest.mark.parametrize("body", HANDED_OVER)
def test_bodies_the_fast_path_cannot_judge_go_to_the_careful_path(body: bytes) -> None:
    decoder = BodyDecoder(max_batch=MAX_BATCH)
    assert decoder.decode_fast(body) is None
    try:
        expected: list[Decoded] | str = decode_body(body, max_batch=MAX_BATCH)
    except VaiError as error:
        expected = error.message
    try:
        got: Lane | list[Decoded] | str = decoder.decode(body)
    except VaiError as error:
        got = error.message
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
    else:
        _same(got, expected)


def test_nested_lists_are_refused_even_when_they_flatten_to_the_right_length() -> None:
    body = _batch(event("a", logits=[[4.0], [1.0], [0.5]]), event("b"))
    verdicts = [_verdict(item) for item in _read(BodyDecoder(max_batch=MAX_BATCH).decode(body))]
    assert verdicts[0] == ("a", "logits", "invalid")
    assert isinstance(verdicts[1], Prediction)


def test_a_parse_kept_alive_by_an_error_does_not_break_the_next_request() -> None:
    """pysimdjson refuses to reuse a parser while proxies of its last document live; an exception's
    traceback can keep them alive, so the decoder must recover rather than fail every later body."""
    decoder = BodyDecoder(max_batch=2)
    with pytest.raises(VaiError) as kept:
        decoder.decode(_batch(event("a"), event("b"), event("c")))  # too many: raised mid-parse
    assert kept.value.__traceback__ is not None
    decoded = decoder.decode_fast(json.dumps(event("next")).encode())
    assert decoded is not None and isinstance(_verdict(decoded[0]), Prediction)


TENSOR_BODIES = [
    pytest.param(_batch(event("a", logits=_compact([4.0, 1.0])), event("b", logits=[4.0, 1.0])), id="tensor-then-list"),
    pytest.param(
        _batch(event("a", logits=_compact([4.0, 1.0])), event("b", logits={**_compact([1.0, 2.0]), "data": "!"})),
        id="tensor-then-bad-base64",
    ),
    pytest.param(
        _batch(event("a", logits=_compact([4.0, 1.0])), event("b", logits=_compact([float("nan"), 1.0]))),
        id="tensor-then-nan-bytes",
    ),
    pytest.param(_batch(event("a", logits=_compact([4.0, 1.0]), model="bad name")), id="tensor-and-bad-model"),
    pytest.param(json.dumps(event("a", logits=_compact([4.0, 1.0]))).encode(), id="single-tensor-event"),
]


@pytest.mark.parametrize("body", TENSOR_BODIES)
def test_bodies_of_tensors_take_the_careful_reader_and_get_the_fast_path_s_verdicts(body: bytes) -> None:
    """A body whose first scores are a tensor is read by msgspec (quicker there); verdicts must not change."""
    assert scores_are_tensors(body)
    decoder = BodyDecoder(max_batch=MAX_BATCH)
    fast = decoder.decode_fast(body)
    assert fast is not None
    _same(decoder.decode(body), read_tensors(fast))


def test_bodies_of_number_lists_stay_on_the_fast_path() -> None:
    assert not scores_are_tensors(_batch(event("a"), event("b", logits=_compact([4.0, 1.0]))))
