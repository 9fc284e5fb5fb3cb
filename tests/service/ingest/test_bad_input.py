"""POST /v1/events with bad input: a 4xx naming the field, never a 5xx, each rejection counted once."""

from __future__ import annotations

import base64
import json
import random
import re
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from helpers import event, stream_entries
from sampler.contract import SampledEvent

ClientFactory = Callable[..., TestClient]


def _post(client: TestClient, body: bytes, **headers: str) -> httpx2.Response:
    return client.post("/v1/events", content=body, headers={"content-type": "application/json", **headers})


def _event_bytes(*, drop: tuple[str, ...] = (), **fields: Any) -> bytes:
    """A valid event with ``fields`` changed and the ``drop`` keys removed, as JSON."""
    body = event(fields.pop("request_id", "bad"), **fields)
    for key in drop:
        body.pop(key)
    return json.dumps(body).encode()


def _with_raw(member: bytes, *, drop_logits: bool = False) -> bytes:
    """A valid event plus one raw JSON member (for tokens ``json.dumps`` never writes)."""
    scores = b"" if drop_logits else b'"logits":[4.0,1.0,0.5],'
    return b'{"model":"digits","request_id":"bad",' + scores + member + b"}"


def _rejections(registry: CollectorRegistry) -> dict[str, float]:
    """``vai_events_rejected_total`` by reason."""
    return {
        sample.labels["reason"]: sample.value
        for family in registry.collect()
        if family.name == "vai_events_rejected"
        for sample in family.samples
        if sample.name == "vai_events_rejected_total"
    }


def _accepted(registry: CollectorRegistry) -> float:
    return sum(
        sample.value
        for family in registry.collect()
        if family.name == "vai_events"
        for sample in family.samples
        if sample.name == "vai_events_total"
    )


def _names(detail: dict[str, Any]) -> str:
    """The field names and error texts of an error body, to look the offending field up in.

    The top-level error is left out when events were decoded: its generic text
    ("no valid event ...") would match any field called ``event``.
    """
    parts = [str(detail.get("field", ""))]
    if "rejected" not in detail:
        parts.append(str(detail.get("error", "")))
    for rejection in detail.get("rejected", []):
        parts += [str(rejection["field"]), str(rejection["error"])]
    return "\n".join(parts)


def _b64_floats(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _deep(depth: int, core: bytes = b"") -> bytes:
    return b"[" * depth + core + b"]" * depth


HUGE_INT = b"1" + b"0" * 400
"""An integer far beyond float range (JSON has no size limit on numbers)."""

BAD_EVENTS = [
    # Non-finite numbers, as JSON tokens (not JSON, but common from Python/JS serving stacks) and overflow.
    pytest.param(_with_raw(b'"logits":[NaN,1.0]', drop_logits=True), "logits", "non_finite", id="logits-nan-token"),
    pytest.param(
        _with_raw(b'"logits":[Infinity,1.0]', drop_logits=True), "logits", "non_finite", id="logits-infinity-token"
    ),
    pytest.param(
        _with_raw(b'"logits":[1.0,-Infinity]', drop_logits=True),
        "logits",
        "non_finite",
        id="logits-minus-infinity-token",
    ),
    pytest.param(_with_raw(b'"logits":[1e400,1.0]', drop_logits=True), "logits", "non_finite", id="logits-1e400"),
    pytest.param(
        _with_raw(b'"logits":[' + HUGE_INT + b",1.0]", drop_logits=True),
        "logits",
        "non_finite",
        id="logits-400-digit-integer",
    ),
    pytest.param(
        _with_raw(b'"probabilities":[NaN,1.0]', drop_logits=True),
        "probabilities",
        "non_finite",
        id="probabilities-nan-token",
    ),
    pytest.param(
        _with_raw(b'"probabilities":[1e400,0.0]', drop_logits=True),
        "probabilities",
        "non_finite",
        id="probabilities-1e400",
    ),
    pytest.param(_with_raw(b'"embedding":[NaN,1.0]'), "embedding", "non_finite", id="embedding-nan-token"),
    pytest.param(_with_raw(b'"embedding":[0.5,1e400]'), "embedding", "non_finite", id="embedding-1e400"),
    pytest.param(
        _with_raw(b'"embedding":[' + HUGE_INT + b",1.0]"), "embedding", "non_finite", id="embedding-400-digit-integer"
    ),
    pytest.param(
        _with_raw(b'"embedding":[' + b"9" * 400 + b".0,1.0]"),
        "embedding",
        "non_finite",
        id="embedding-400-digit-mantissa",
    ),
    pytest.param(_event_bytes(embedding=[1e39, 0.0]), "embedding", "non_finite", id="embedding-beyond-float32"),
    pytest.param(
        _event_bytes(embedding={"shape": [2], "datatype": "FP64", "data": [0.5, -1e300]}),
        "embedding",
        "non_finite",
        id="embedding-fp64-tensor-beyond-float32",
    ),
    pytest.param(_with_raw(b'"input":[[NaN,1.0]]'), "input", "non_finite", id="input-list-nan-token"),
    pytest.param(_with_raw(b'"input":[[1e400,1.0]]'), "input", "non_finite", id="input-list-1e400"),
    pytest.param(_event_bytes(input=[[1e39, 0.0]]), "input", "non_finite", id="input-list-beyond-float32"),
    pytest.param(
        _event_bytes(input={"shape": [2], "datatype": "FP64", "data": [0.5, 1e300]}),
        "input",
        "non_finite",
        id="input-fp64-tensor-beyond-float32",
    ),
    pytest.param(
        _event_bytes(
            input={
                "shape": [2],
                "dtype": "float64",
                "data": base64.b64encode(struct.pack("<2d", 0.5, -3.5e38)).decode(),
            }
        ),
        "input",
        "non_finite",
        id="input-compact-float64-beyond-float32",
    ),
    pytest.param(
        _event_bytes(input={"shape": [2], "dtype": "float32", "data": _b64_floats(float("nan"), 1.0)}),
        "input.data",
        "non_finite",
        id="input-base64-holds-nan",
    ),
    pytest.param(_with_raw(b'"timestamp":NaN'), "timestamp", "non_finite", id="timestamp-nan-token"),
    pytest.param(_with_raw(b'"timestamp":1e400'), "timestamp", None, id="timestamp-1e400"),
    pytest.param(_with_raw(b'"label":1e400'), "label", None, id="label-1e400"),
    pytest.param(_with_raw(b'"label":' + HUGE_INT), "label", None, id="label-400-digit-integer"),
    # Scores.
    pytest.param(_event_bytes(logits=[1.0]), "logits", None, id="logits-one-class"),
    pytest.param(_event_bytes(logits=[]), "logits", None, id="logits-empty"),
    pytest.param(
        _event_bytes(drop=("logits",), probabilities=[1.0]), "probabilities", None, id="probabilities-one-class"
    ),
    pytest.param(
        _event_bytes(drop=("logits",), probabilities=[1.5, -0.5]),
        "probabilities",
        "bad_probabilities",
        id="probabilities-outside-0-1",
    ),
    pytest.param(
        _event_bytes(drop=("logits",), probabilities=[0.5, 0.6]),
        "probabilities",
        "bad_probabilities",
        id="probabilities-sum-1.1",
    ),
    pytest.param(_event_bytes(probabilities=[0.5, 0.5]), "logits", "missing_scores", id="logits-and-probabilities"),
    pytest.param(_event_bytes(drop=("logits",)), "logits", "missing_scores", id="neither-logits-nor-probabilities"),
    pytest.param(_event_bytes(logits="4.0,1.0"), "logits", None, id="logits-string"),
    pytest.param(_event_bytes(logits=["4.0", 1.0]), "logits", None, id="logits-string-element"),
    pytest.param(_event_bytes(logits=[True, 1.0]), "logits", None, id="logits-bool-element"),
    pytest.param(_event_bytes(logits=[[4.0, 1.0]]), "logits", None, id="logits-nested-list"),
    pytest.param(_event_bytes(logits=[[4.0], [1.0], [0.5]]), "logits", None, id="logits-nested-singletons"),
    pytest.param(_event_bytes(logits=[4.0, [1.0], 0.5]), "logits", None, id="logits-one-nested-singleton"),
    pytest.param(_event_bytes(logits=[4.0, [], 1.0]), "logits", None, id="logits-nested-empty-list"),
    pytest.param(_event_bytes(logits=[4.0, None]), "logits", None, id="logits-null-element"),
    pytest.param(_event_bytes(logits={"a": 1.0, "b": 2.0}), "logits", None, id="logits-object"),
    # Embedding.
    pytest.param(_event_bytes(embedding=[]), "embedding", None, id="embedding-empty"),
    pytest.param(_event_bytes(embedding="0.1,0.2"), "embedding", None, id="embedding-string"),
    pytest.param(_event_bytes(embedding=[[0.1, 0.2]]), "embedding", None, id="embedding-nested"),
    pytest.param(_event_bytes(embedding=[[0.1], [0.2]]), "embedding", None, id="embedding-nested-singletons"),
    pytest.param(_event_bytes(embedding=[True, 0.2]), "embedding", None, id="embedding-bool-element"),
    pytest.param(_event_bytes(embedding={"x": 0.1}), "embedding", None, id="embedding-object"),
    # Input.
    pytest.param(
        _event_bytes(input={"shape": [2], "dtype": "float128", "data": "AAAAAAAAAAA="}),
        "input.dtype",
        None,
        id="input-unknown-dtype",
    ),
    pytest.param(
        _event_bytes(input={"shape": [2], "dtype": "float32", "data": "not base64!"}),
        "input.data",
        None,
        id="input-bad-base64",
    ),
    pytest.param(
        _event_bytes(input={"shape": [3], "dtype": "float32", "data": _b64_floats(1.0, 2.0)}),
        "input.data",
        "shape_mismatch",
        id="input-shape-data-mismatch",
    ),
    pytest.param(
        _event_bytes(input={"shape": [0], "dtype": "float32", "data": ""}),
        "input.shape",
        None,
        id="input-zero-dimension",
    ),
    pytest.param(
        _event_bytes(input={"shape": [1], "dtype": "float32", "data": _b64_floats(1.0), "x": 1}),
        "input",
        None,
        id="input-unknown-key",
    ),
    pytest.param(_event_bytes(input=[[1.0, 2.0], [3.0]]), "input", None, id="input-ragged-list"),
    pytest.param(_event_bytes(input=[["a", "b"]]), "input", None, id="input-list-of-strings"),
    pytest.param(_event_bytes(input=[]), "input", None, id="input-empty-list"),
    # Identity fields.
    pytest.param(_event_bytes(drop=("model",)), "model", None, id="model-missing"),
    pytest.param(_event_bytes(model="digits/v2"), "model", None, id="model-with-slash"),
    pytest.param(_event_bytes(model="m" * 65), "model", None, id="model-65-chars"),
    pytest.param(_event_bytes(model=""), "model", None, id="model-empty"),
    pytest.param(_event_bytes(model=7), "model", None, id="model-number"),
    pytest.param(_event_bytes(model="nl\n"), "model", None, id="model-trailing-newline"),
    pytest.param(_event_bytes(model="\nnl"), "model", None, id="model-leading-newline"),
    pytest.param(_event_bytes(model="m" * 64 + "\n"), "model", None, id="model-64-chars-and-newline"),
    pytest.param(_event_bytes(drop=("request_id",)), "request_id", None, id="request-id-missing"),
    pytest.param(_event_bytes(request_id=""), "request_id", None, id="request-id-empty"),
    pytest.param(_event_bytes(request_id="r" * 129), "request_id", None, id="request-id-129-chars"),
    pytest.param(_event_bytes(request_id=12), "request_id", None, id="request-id-number"),
    pytest.param(_event_bytes(request_id="a\nb"), "request_id", "invalid", id="request-id-newline"),
    pytest.param(_event_bytes(request_id="a\u0000b"), "request_id", "invalid", id="request-id-nul"),
    pytest.param(_event_bytes(request_id="a\tb"), "request_id", "invalid", id="request-id-tab"),
    pytest.param(_event_bytes(model_version=""), "model_version", None, id="model-version-empty"),
    pytest.param(_event_bytes(model_version=2), "model_version", None, id="model-version-number"),
    pytest.param(_event_bytes(model_version="v1\n"), "model_version", None, id="model-version-trailing-newline"),
    pytest.param(_event_bytes(model_version="v 1"), "model_version", None, id="model-version-with-space"),
    pytest.param(_event_bytes(model_version="v" * 65), "model_version", None, id="model-version-65-chars"),
    # Timestamp and label.
    pytest.param(_event_bytes(timestamp="2024-05-01T12:00:00"), "timestamp", None, id="timestamp-without-offset"),
    pytest.param(_event_bytes(timestamp="yesterday"), "timestamp", None, id="timestamp-not-a-date"),
    pytest.param(_event_bytes(timestamp=-5), "timestamp", None, id="timestamp-negative"),
    pytest.param(_event_bytes(timestamp=True), "timestamp", None, id="timestamp-bool"),
    pytest.param(_event_bytes(label=3), "label", None, id="label-equals-class-count"),
    pytest.param(_event_bytes(label=-1), "label", None, id="label-negative"),
    pytest.param(_event_bytes(label=True), "label", None, id="label-bool"),
    pytest.param(_event_bytes(label=1.0), "label", None, id="label-float"),
    # Cohort.
    pytest.param(_event_bytes(cohort=["eu"]), "cohort", None, id="cohort-list"),
    pytest.param(_event_bytes(cohort={"region": 3}), "cohort", None, id="cohort-number-value"),
    pytest.param(
        _event_bytes(cohort={"region": {"a": [{"b": [[{"c": None}]]}]}}), "cohort", None, id="cohort-nested-junk"
    ),
    pytest.param(_with_raw(b'"cohort":{"region":' + _deep(5000) + b"}"), "cohort", None, id="cohort-nested-5000-deep"),
    pytest.param(
        _with_raw(b'"cohort":{"region":' + _deep(5000, b"NaN") + b"}"),
        "cohort",
        None,
        id="cohort-nested-5000-deep-with-nan",
    ),
    pytest.param(_event_bytes(cohort={f"k{i}": "v" for i in range(33)}), "cohort", None, id="cohort-33-keys"),
    pytest.param(_event_bytes(cohort={"region": ""}), "cohort", None, id="cohort-empty-value"),
    # Envelope of one event.
    pytest.param(_event_bytes(foo=1), "foo", None, id="unknown-field"),
    pytest.param(_with_raw(b'"a\\u0000b":1'), "a\u0000b", None, id="unknown-field-holding-nul"),
]


@pytest.mark.parametrize(("body", "field", "reason"), BAD_EVENTS)
def test_bad_event_is_422_naming_the_field_and_counted_once(
    make_client: ClientFactory, body: bytes, field: str, reason: str | None
) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry)
    response = _post(client, body)
    assert response.status_code < 500
    assert response.status_code == 422, response.text
    detail = response.json()
    assert field in _names(detail), detail
    assert [rejection["index"] for rejection in detail["rejected"]] == [0]
    assert detail["accepted"] == 0
    rejections = _rejections(registry)
    assert sum(rejections.values()) == 1, rejections
    if reason is not None:
        assert rejections == {reason: 1.0}
    assert _accepted(registry) == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_event_bytes(logits=[1.0]), id="schema-error"),
        pytest.param(_event_bytes(label=7), id="semantic-error"),
        pytest.param(_with_raw(b'"logits":[NaN,1.0]', drop_logits=True), id="nan-token"),
        pytest.param(b'{"events":[' + _event_bytes(label=7) + b"]}", id="batch-of-one"),
    ],
)
def test_no_valid_event_answer_has_field_at_top_level(make_client: ClientFactory, body: bytes) -> None:
    """The 422 detail is ``{"error", "field", "accepted", "rejected", "sampled"}``, like every error."""
    response = _post(make_client(), body)
    assert response.status_code == 422, response.text
    detail = response.json()
    assert {"error", "field", "accepted", "rejected", "sampled"} <= set(detail), detail
    assert detail["field"] == detail["rejected"][0]["field"]


ENVELOPES = [
    pytest.param(b"", "body", 1, id="empty"),
    pytest.param(b" \n\t ", "body", 1, id="whitespace"),
    pytest.param(b'{"model": "digits", "request_id":', "body", 1, id="truncated-json"),
    pytest.param(b"not json at all", "body", 1, id="not-json"),
    pytest.param(b'{"model":"dig\xffits","request_id":"bad","logits":[4.0,1.0]}', "model", 1, id="invalid-utf8"),
    pytest.param(
        b'{"events":[{"model":"dig\xffits","request_id":"bad","logits":[4.0,1.0]}]}',
        "model",  # the event and field holding it are named, as for any bad value
        1,
        id="invalid-utf8-in-batch",
    ),
    pytest.param(b'{"events": [' + _event_bytes() + b",", "body", 1, id="truncated-batch"),
    pytest.param(b"[" + _event_bytes() + b"]", ("event", "body"), 1, id="json-array"),
    pytest.param(b"42", ("event", "body"), 1, id="json-number"),
    pytest.param(b'"an event"', ("event", "body"), 1, id="json-string"),
    pytest.param(b"null", ("event", "body"), 1, id="json-null"),
    pytest.param(b"true", ("event", "body"), 1, id="json-bool"),
    pytest.param(b"NaN", ("event", "body"), 1, id="json-nan-token"),
    pytest.param(b"{}", "model", 1, id="empty-object"),
    pytest.param(b'{"events": []}', "events", 1, id="empty-batch"),
    pytest.param(b'{"events": 3}', "events", 1, id="events-not-a-list"),
    pytest.param(b'{"events": [1, "x"]}', "event", 2, id="events-not-objects"),
    pytest.param(
        b'{"events": [' + _event_bytes() + b'], "extra": 1}', ("extra", "events"), 1, id="batch-with-unknown-key"
    ),
    pytest.param(_deep(100_000), ("event", "body"), 1, id="100000-open-brackets"),
]


@pytest.mark.parametrize(("body", "field", "count"), ENVELOPES)
def test_bad_body_is_422_naming_the_field(
    make_client: ClientFactory, body: bytes, field: str | tuple[str, ...], count: int
) -> None:
    registry = CollectorRegistry()
    response = _post(make_client(registry=registry), body)
    assert response.status_code < 500
    assert response.status_code == 422, response.text
    names = _names(response.json())
    assert any(name in names for name in ((field,) if isinstance(field, str) else field)), response.json()
    assert sum(_rejections(registry).values()) == count
    assert _accepted(registry) == 0


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        pytest.param(b'{"events": {}}', "events", "events: expected `array`, got `object`", id="events-an-object"),
        pytest.param(b'{"events": null}', "events", "events: expected `array`, got `null`", id="events-null"),
        pytest.param(
            b'{"events": [' + _event_bytes() + b'], "extra": 1}',
            "extra",
            "extra: unknown field beside events",
            id="key-beside-events",
        ),
        pytest.param(
            b'{"labels": [{"model": "digits", "request_id": "r1", "label": 1}]}',
            "labels",
            "labels: not a field of an event; delayed labels go to POST /v1/labels",
            id="labels-sent-here",
        ),
    ],
)
def test_a_wrong_envelope_is_named_as_such_not_as_an_event_with_an_unknown_field(
    make_client: ClientFactory, body: bytes, field: str, says: str
) -> None:
    """Once ``{"events": {}}`` was refused as "event: object contains unknown field `events`"."""
    response = _post(make_client(), body)
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["field"] == field and says in answer["error"], answer
    assert "unknown field `events`" not in response.text


def test_batch_above_max_batch_is_refused_whole(make_client: ClientFactory) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, max_batch=3)
    too_many = _post(client, json.dumps({"events": [event(f"r{i}") for i in range(4)]}).encode())
    assert too_many.status_code == 422
    assert too_many.json()["field"] == "events"
    assert "3" in too_many.json()["error"]
    assert _rejections(registry) == {"invalid_body": 1.0}
    assert _accepted(registry) == 0
    at_limit = _post(client, json.dumps({"events": [event(f"r{i}") for i in range(3)]}).encode())
    assert at_limit.status_code == 202
    assert at_limit.json()["accepted"] == 3


def _stream_ids(client: redis.Redis, model: str) -> list[str]:
    entries = stream_entries(client, keys.sample_stream(model))
    return [SampledEvent.decode(fields).request_id for _, fields in entries]


def _wait_for_stream(client: redis.Redis, model: str, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = _stream_ids(client, model)
        if len(found) >= count:
            return found
    raise AssertionError(f"stream of {model} did not reach {count} entries")


@pytest.mark.parametrize(
    ("bad_one", "bad_three", "fields"),
    [
        pytest.param(
            json.dumps(event("r1", label=9)).encode(),
            json.dumps(event("r3", model_version=3)).encode(),
            ("label", "model_version"),
            id="semantic-and-schema-errors",
        ),
        pytest.param(
            b'{"model":"digits","request_id":"r1","logits":[NaN,1.0]}',
            json.dumps(event("r3", label=9)).encode(),
            ("logits", "label"),
            id="nan-token-and-semantic-error",
        ),
        pytest.param(
            json.dumps(event("r1", label="two")).encode(),
            b'{"model":"digits","request_id":"r3","logits":[Infinity,1.0]}',
            ("label", "logits"),
            id="schema-error-and-infinity-token",
        ),
    ],
)
def test_half_valid_batch_keeps_the_valid_events(
    make_client: ClientFactory,
    redis_client: redis.Redis,
    bad_one: bytes,
    bad_three: bytes,
    fields: tuple[str, str],
) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, sampling={"every_n": 1})
    good = [json.dumps(event(request_id)).encode() for request_id in ("r0", "r2")]
    body = b'{"events":[' + b",".join([good[0], bad_one, good[1], bad_three]) + b"]}"
    response = _post(client, body)
    assert response.status_code == 202, response.text
    detail = response.json()
    assert detail["accepted"] == 2
    assert [(r["index"], r["request_id"]) for r in detail["rejected"]] == [(1, "r1"), (3, "r3")]
    for rejection, field in zip(detail["rejected"], fields, strict=True):
        assert rejection["field"].startswith(field), rejection
    assert [sampled["request_id"] for sampled in detail["sampled"]] == ["r0", "r2"]
    assert sorted(_wait_for_stream(redis_client, "digits", 2)) == ["r0", "r2"]
    assert _accepted(registry) == 2
    assert sum(_rejections(registry).values()) == 2


def test_oversize_body_with_content_length_is_413(make_client: ClientFactory) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, max_body_bytes=1024)
    body = _event_bytes(embedding=[0.25] * 400)
    assert len(body) > 1024
    response = _post(client, body)
    assert response.status_code == 413
    assert response.json()["field"] == "body"
    assert _accepted(registry) == 0
    assert _post(client, _event_bytes(embedding=[0.25] * 10)).status_code == 202


def test_oversize_streamed_body_without_content_length_is_413(make_client: ClientFactory) -> None:
    client = make_client(max_body_bytes=1024)
    body = _event_bytes(embedding=[0.25] * 400)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64):
            yield body[start : start + 64]

    request = client.build_request("POST", "/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = client.send(request)
    assert response.status_code == 413
    assert response.json()["field"] == "body"


async def _post_asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """Drive the app directly; returns (status, body chunks it pulled)."""
    remaining = iter(chunks)
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(remaining, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return status, pulled


@pytest.mark.parametrize(
    ("headers", "most_chunks_read"),
    [
        pytest.param([(b"content-length", b"1048576")], 0, id="content-length-refused-before-reading"),
        pytest.param([(b"transfer-encoding", b"chunked")], 2, id="chunked-refused-once-past-the-limit"),
    ],
)
def test_oversize_body_is_not_read_whole(
    make_client: ClientFactory, headers: list[tuple[bytes, bytes]], most_chunks_read: int
) -> None:
    client = make_client(max_body_bytes=1024)
    chunks = [b" " * 1024] * 1024  # 1 MiB offered, 1 KiB allowed

    async def run() -> tuple[int, int]:
        return await _post_asgi(client.app, headers, chunks)

    assert client.portal is not None
    status, pulled = client.portal.call(run)
    assert status == 413
    assert pulled <= most_chunks_read


def test_events_of_a_model_beyond_max_models_are_rejected(make_client: ClientFactory) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, max_models=2)
    first = client.post("/v1/events", json={"events": [event("a", model="m1"), event("a", model="m2")]})
    assert first.status_code == 202
    third = client.post("/v1/events", json={"events": [event("b", model="m3"), event("b", model="m1")]})
    assert third.status_code == 202
    assert third.json()["accepted"] == 1
    assert [(r["index"], r["request_id"], r["field"]) for r in third.json()["rejected"]] == [(0, "b", "model")]
    alone = client.post("/v1/events", json=event("c", model="m3"))
    assert alone.status_code == 422
    assert "model" in _names(alone.json())
    assert _rejections(registry) == {"too_many_models": 2.0}
    assert client.get("/status").json()["accepted"] == {"m1": 2, "m2": 1}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"model": "nl\n"}, id="model-trailing-newline"),
        pytest.param({"model_version": "v1\n"}, id="version-trailing-newline"),
        pytest.param({"model": ".."}, id="model-dot-dot"),
        pytest.param({"model": "."}, id="model-dot"),
        pytest.param({"model": ".hidden"}, id="model-leading-dot"),
    ],
)
def test_a_name_with_a_trailing_newline_takes_no_model_slot(make_client: ClientFactory, bad: dict[str, str]) -> None:
    """Nor does a model name a browser would read as a step in the path (its pages could never be opened)."""
    client = make_client(max_models=1)
    fields = {"model": "nl", **bad}
    for body in (event("a", **fields), {"events": [event("b", **fields), event("c", **fields)]}):
        response = client.post("/v1/events", json=body)
        assert response.status_code == 422, response.text
        assert next(iter(bad)) in _names(response.json())
    assert client.post("/v1/events", json=event("d", model="ok")).status_code == 202
    assert client.get("/status").json()["accepted"] == {"ok": 1}


def test_embedding_length_must_stay_the_same_for_a_model(make_client: ClientFactory) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry)
    assert client.post("/v1/events", json=event("a", embedding=[0.1, 0.2, 0.3])).status_code == 202
    longer = client.post("/v1/events", json=event("b", embedding=[0.1, 0.2, 0.3, 0.4]))
    assert longer.status_code == 422
    assert longer.json()["rejected"][0]["field"] == "embedding"
    mixed = client.post(
        "/v1/events",
        json={"events": [event("c", embedding=[0.5, 0.5, 0.5]), event("d", embedding=[0.5, 0.5]), event("e")]},
    )
    assert mixed.status_code == 202
    assert mixed.json()["accepted"] == 2
    assert [(r["index"], r["field"]) for r in mixed.json()["rejected"]] == [(1, "embedding")]
    other_model = client.post("/v1/events", json=event("f", model="text", embedding=[0.5, 0.5]))
    assert other_model.status_code == 202
    assert _rejections(registry) == {"embedding_length": 2.0}


def test_recent_duplicate_request_id_is_rejected(make_client: ClientFactory) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry)
    assert client.post("/v1/events", json=event("same")).status_code == 202
    again = client.post("/v1/events", json=event("same"))
    assert again.status_code == 422
    assert again.json()["rejected"][0]["field"] == "request_id"
    in_batch = client.post("/v1/events", json={"events": [event("twin"), event("twin"), event("same", model="text")]})
    assert in_batch.status_code == 202
    assert in_batch.json()["accepted"] == 2
    assert [(r["index"], r["request_id"], r["field"]) for r in in_batch.json()["rejected"]] == [
        (1, "twin", "request_id")
    ]
    assert _rejections(registry) == {"duplicate": 2.0}


def test_huge_finite_logits_keep_every_figure_finite(make_client: ClientFactory, redis_client: redis.Redis) -> None:
    """Finite logits whose difference overflows are valid; margin and confidence must stay finite."""
    registry = CollectorRegistry()
    client = make_client(registry=registry, sampling={"every_n": 1})
    response = client.post("/v1/events", json=event("huge", logits=[1e308, -1e308, 0.0]))
    assert response.status_code == 202, response.text
    margin_sum = registry.get_sample_value("vai_logit_margin_sum", {"model": "digits", "version": "unversioned"})
    assert margin_sum is not None and margin_sum < float("inf")
    assert _wait_for_stream(redis_client, "digits", 1) == ["huge"]


def test_large_but_representable_numbers_are_accepted(make_client: ClientFactory) -> None:
    """Logits are kept as float64; an embedding is published as float32, so its values must fit that."""
    body = _with_raw(
        b'"logits":[1e300,-1e-300,' + b"1" * 300 + b'],"embedding":[3.4e38,-1e-300,' + b"1" * 38 + b"],"
        b'"timestamp":1700000000.123456789',
        drop_logits=True,
    )
    response = _post(make_client(), body)
    assert response.status_code == 202, response.text


def _mutate(rng: random.Random, body: bytes) -> tuple[str, bytes]:
    """One random corruption of ``body`` and its name."""
    kind = rng.choice(["truncate", "flip", "non_finite", "drop_key", "junk_value", "splice"])
    if kind == "truncate":
        return kind, body[: rng.randrange(len(body))]
    if kind == "flip":
        mutable = bytearray(body)
        for _ in range(rng.randint(1, 3)):
            mutable[rng.randrange(len(mutable))] = rng.randrange(256)
        return kind, bytes(mutable)
    if kind == "non_finite":
        numbers = list(re.finditer(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", body))
        found = rng.choice(numbers)
        token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", HUGE_INT])
        return kind, body[: found.start()] + token + body[found.end() :]
    document = json.loads(body)
    target = rng.choice(document["events"]) if "events" in document else document
    key = rng.choice(sorted(target))
    if kind == "drop_key":
        del target[key]
    elif kind == "junk_value":
        target[key] = rng.choice([None, True, "x", [], {}, [[1, [2]]], {"a": {"b": []}}, -1, 2**70, "é" * 200])
    else:
        encoded = json.dumps(document).encode()
        start = rng.randrange(len(encoded))
        piece = encoded[start : start + rng.randint(1, 40)]
        at = rng.randrange(len(encoded))
        return kind, encoded[:at] + piece + encoded[at:]
    return kind, json.dumps(document).encode()


def test_random_corruptions_never_cause_a_server_error(make_client: ClientFactory) -> None:
    client = make_client(sampling={"every_n": 1, "max_per_second": 100_000.0})
    full = event(
        "fuzz",
        model_version="v1",
        timestamp="2024-05-01T12:00:00+02:00",
        cohort={"region": "eu"},
        embedding=[0.1, 0.2, 0.3],
        label=1,
        input={"shape": [2], "dtype": "float32", "data": _b64_floats(1.0, 2.0)},
    )
    bodies = [
        json.dumps(full).encode(),
        json.dumps(
            {"events": [full, event("fuzz2", input=[[1.0, 2.0]], probabilities=[0.2, 0.8], logits=None)]}
        ).encode(),
    ]
    rng = random.Random(20240501)
    failures: list[str] = []
    for attempt in range(300):
        kind, body = _mutate(rng, rng.choice(bodies))
        try:
            response = _post(client, body)
        except Exception as error:
            failures.append(f"#{attempt} {kind}: {type(error).__name__}: {error} -- {body[:120]!r}")
            continue
        if response.status_code >= 500 or (response.status_code >= 400 and "error" not in response.json()):
            failures.append(f"#{attempt} {kind}: {response.status_code} {response.text[:200]}")
    assert not failures, f"{len(failures)} of 300 corrupt bodies failed:\n" + "\n".join(failures[:15])


GOOD = [json.dumps(event(request_id)).encode() for request_id in ("r0", "r2")]


@pytest.mark.parametrize("binary_header", [False, True], ids=["json", "binary-extension"])
@pytest.mark.parametrize(
    ("bad", "field", "request_id"),
    [
        pytest.param(
            b'{"model":"digits","request_id":"\\ud800x","logits":[4.0,1.0]}', "request_id", "\\ud800x", id="id"
        ),
        pytest.param(
            b'{"model":"digits","request_id":"r1","logits":[4.0,1.0],"cohort":{"\\udc00":"x"}}',
            "cohort.\\udc00",
            "r1",
            id="cohort-key",
        ),
        pytest.param(
            b'{"model":"digits","request_id":"r1","logits":[NaN],"cohort":{"region":"a\\udbff"}}',
            "logits[0]",  # the first problem is named
            "r1",
            id="with-nan",
        ),
        pytest.param(
            b'{"model":"digits","request_id":"r1","logits":[4.0,1.0],"cohort":{"region":"a\\udbff"}}',
            "cohort.region",
            "r1",
            id="cohort-value",
        ),
        pytest.param(
            b'{"model":"digits","request_id":"r1","logits":[4.0,1.0],"cohort":{"region":"a\xff\xfe"}}',
            "cohort.region",
            "r1",
            id="invalid-utf8",
        ),
    ],
)
def test_a_lone_surrogate_escape_is_refused_with_its_event_alone(
    make_client: ClientFactory, bad: bytes, field: str, request_id: str, binary_header: bool
) -> None:
    """JSON may spell a UTF-16 surrogate without its pair (``"\\ud800"``); no UTF-8 writer takes it, so the
    event is refused by name, and its neighbours kept (it used to be a 500 after they were counted)."""
    registry = CollectorRegistry()
    client = make_client(registry=registry, cohort_keys=("region",), label_records="all")
    body = b'{"events":[' + b",".join([GOOD[0], bad, GOOD[1]]) + b"]}"
    headers = {"inference-header-content-length": str(len(body))} if binary_header else {}
    response = _post(client, body, **headers)
    assert response.status_code == 202, response.text
    (rejection,) = response.json()["rejected"]
    assert (rejection["index"], rejection["request_id"], rejection["field"]) == (1, request_id, field)
    assert field == "logits[0]" or "not valid Unicode" in rejection["error"], rejection
    assert _accepted(registry) == 2 and sum(_rejections(registry).values()) == 1


def test_a_surrogate_pair_is_one_character(make_client: ClientFactory) -> None:
    client = make_client(cohort_keys=("region",))
    pair = b'{"model":"digits","request_id":"r1","logits":[4.0,1.0],"cohort":{"region":"\\ud83d\\ude00"}}'
    response = _post(client, b'{"events":[' + pair + b"]}")
    assert response.status_code == 202 and response.json()["accepted"] == 1, response.text
