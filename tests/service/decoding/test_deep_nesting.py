"""An event nested deeper than the JSON readers go is refused alone, naming its field; the events beside it are kept,
and the body is not called "not JSON" for it."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient

from service.decoding.nesting import NotJson, Scanned, depth_of
from service.decoding.parsing import Rejected, decode_object

ClientFactory = Callable[..., TestClient]
VALID = '{"model":"m1","request_id":"n1","logits":[1,2]}'


def _deep(levels: int, inner: str = "") -> str:
    return "[" * levels + inner + "]" * levels


def _post(client: TestClient, body: str) -> httpx2.Response:
    return client.post("/v1/events", content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("levels", [pytest.param(3000, id="3000-levels"), pytest.param(50_000, id="50000-levels")])
def test_a_deep_event_is_refused_alone_naming_its_field(make_client: ClientFactory, levels: int) -> None:
    deep = f'{{"model":"m1","request_id":"n2","logits":[1,2],"input":{_deep(levels)}}}'
    response = _post(make_client(), f'{{"events":[{VALID},{deep},{VALID.replace("n1", "n3")}]}}')
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(item["index"], item["request_id"], item["field"]) for item in answer["rejected"]] == [
        (1, "n2", "input")
    ], answer
    assert "nested too deeply" in answer["rejected"][0]["error"]


@pytest.mark.parametrize("levels", [pytest.param(9, id="9-levels"), pytest.param(600, id="600-levels")])
def test_an_input_of_more_dimensions_than_kept_is_refused_saying_so(make_client: ClientFactory, levels: int) -> None:
    """Readable JSON, but more dimensions than a stored input has (8): numpy calls such a list ragged (or reads at
    most 32 dimensions), which once gave "must be rectangular" for a rectangular list."""
    deep = f'{{"model":"m1","request_id":"n2","logits":[1,2],"input":{_deep(levels, "1")}}}'
    eight = f'{{"model":"m1","request_id":"n3","logits":[1,2],"input":{_deep(8, "1")}}}'
    response = _post(make_client(), f'{{"events":[{VALID},{deep},{eight}]}}')
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 2, answer
    assert [(item["request_id"], item["error"]) for item in answer["rejected"]] == [
        ("n2", "input: a nested list has more than 8 dimensions")
    ]


def test_a_deep_single_event_is_refused_naming_its_field_not_as_invalid_json(make_client: ClientFactory) -> None:
    response = _post(make_client(), f'{{"model":"m1","request_id":"n2","logits":[1,2],"input":{_deep(3000)}}}')
    assert response.status_code == 422, response.text
    assert response.json()["rejected"] == [
        {"index": 0, "request_id": "n2", "field": "input", "error": "input: nested too deeply"}
    ]


def test_brackets_and_quotes_inside_strings_do_not_mislead_the_split(make_client: ClientFactory) -> None:
    tricky = '{"model":"m1","request_id":"n\\"],}[{3","logits":[1,2],"cohort":{"k":"[[[{"}}'
    deep = f'{{"request_id":"n2","model":"m1","x":{_deep(3000, chr(34) + "]}," + chr(34))}}}'
    response = _post(make_client(), f'{{"events":[{tricky},{deep}]}}')
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 1
    assert [(item["index"], item["request_id"], item["field"]) for item in answer["rejected"]] == [(1, "n2", "x")]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f'{{"events":[{VALID},{_deep(3000)[:-1]}]}}', id="a-bracket-not-closed"),
        pytest.param(f'{{"events":[{VALID},{_deep(3000)}]}} x', id="text-after-the-body"),
        pytest.param(f'{{"events":[{_deep(3000)},{VALID} 1]}}', id="junk-after-an-event-past-a-deep-one"),
        pytest.param(f'{{"events":[{VALID},{_deep(3000, chr(34))}]}}', id="a-string-not-closed"),
    ],
)
def test_a_deep_body_that_is_not_json_is_still_refused_whole(make_client: ClientFactory, body: str) -> None:
    response = _post(make_client(), body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "body"
    assert response.json()["error"].startswith("body: not valid JSON")


def test_a_binary_extension_header_too_deep_to_read_is_not_called_invalid_json(make_client: ClientFactory) -> None:
    """The binary extension's sections are cut in the order of the header's tensors, which a header too deep to
    read does not give: the body is refused, saying why."""
    header = f'{{"model":"m1","request_id":"n2","logits":[1,2],"input":{_deep(3000)}}}'.encode()
    response = make_client().post(
        "/v1/events",
        content=header,
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))},
    )
    assert response.status_code == 422, response.text
    assert response.json() == {"error": "body: the JSON header is nested too deeply to read", "field": "body"}


def test_an_event_too_deep_to_walk_names_its_deepest_field() -> None:
    """A decoded event deeper than Python recurses (the binary extension's header, or just under the readers'
    limit) names the field, not the whole event."""
    nested: list[Any] = []
    for _ in range(sys.getrecursionlimit() + 100):
        nested = [nested]
    item = {"model": "m1", "request_id": "r", "logits": [1.0, 2.0], "input": nested}
    decoded = decode_object(0, item, via_json=True)
    assert isinstance(decoded, Rejected)
    assert (decoded.request_id, str(decoded.error)) == ("r", "input: nested too deeply")


def test_the_scanner_splits_items_at_their_own_level() -> None:
    text = rb' [1, [2, 3], {"a": [4]}, "x,]", "\\", "\\\"]["] '
    scanned = Scanned(text)
    items = scanned.items(1)
    assert [text[item.start : item.end].strip() for item in items] == [
        b"1",
        b"[2, 3]",
        b'{"a": [4]}',
        b'"x,]"',
        rb'"\\"',
        rb'"\\\"]["',
    ]
    assert [item.depth for item in items] == [0, 1, 2, 0, 0, 0]
    assert (scanned.count(1), scanned.end_of(1)) == (6, len(text) - 1)
    assert (Scanned(b"[ ]").items(0), Scanned(b"[ ]").count(0), Scanned(b"[ 0 ]").count(0)) == ([], 0, 1)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b"[1, {]", id="a-bracket-not-closed"),
        pytest.param(b'[1, "]', id="a-string-not-closed"),
        pytest.param(b"[1, {]}", id="brackets-crossed"),
        pytest.param(rb'[1, "\\"]"]', id="an-escaped-backslash-before-the-quote"),
    ],
)
def test_the_scanner_refuses_what_is_not_json(text: bytes) -> None:
    with pytest.raises(NotJson):
        Scanned(text).end_of(0)


def test_the_scanner_reads_a_large_body_without_a_python_loop_per_bracket() -> None:
    """8 MiB of brackets (the default body limit) took 6 s with a loop per bracket."""
    half = 4 * 1024 * 1024
    started = time.perf_counter()
    items = Scanned(b"[" * half + b"]" * half).items(0)
    assert [item.depth for item in items] == [half - 1]
    assert time.perf_counter() - started < 2


def test_depth_of_counts_levels_without_recursion() -> None:
    nested: list[Any] = []
    for _ in range(10_000):
        nested = [nested]
    assert [depth_of(1), depth_of([]), depth_of({"a": [1, {"b": []}]}), depth_of(nested)] == [0, 1, 4, 10_001]
