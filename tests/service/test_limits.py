"""Bodies of FastAPI routes: the token is checked before a byte is read, then at most the route's limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api import POLICY_BODY_BYTES

ClientFactory = Callable[..., TestClient]
TOKENS = {"ingest_tokens": ("i",), "read_tokens": ("r",), "admin_tokens": ("a",)}
PATH = "/v1/models/digits/sampling"
HUGE = 200 * 1024 * 1024
CHUNK = b" " * 4096


async def _put_asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[int, int, bytes]:
    """PUT ``PATH`` by driving the app directly with ``chunks`` chunks on offer; (status, chunks pulled, body)."""
    pulled = 0
    status = 0
    answer = b""

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled >= chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": CHUNK, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, answer
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer += message.get("body", b"")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return status, pulled, answer


def _drive(client: TestClient, headers: list[tuple[bytes, bytes]], chunks: int) -> tuple[int, int, bytes]:
    async def run() -> tuple[int, int, bytes]:
        return await _put_asgi(client.app, headers, chunks)

    assert client.portal is not None
    return client.portal.call(run)


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(None, 401, id="no-token"),
        pytest.param(b"Bearer wrong", 401, id="unknown-token"),
        pytest.param(b"Bearer r", 403, id="read-token"),
        pytest.param(b"Bearer i", 403, id="ingest-token"),
    ],
)
def test_huge_body_without_the_admin_token_is_refused_before_reading_it(
    make_client: ClientFactory, authorization: bytes | None, status: int
) -> None:
    client = make_client(**TOKENS)
    headers = [(b"content-length", str(HUGE).encode())]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    answer, pulled, body = _drive(client, headers, chunks=HUGE // len(CHUNK))
    assert answer == status, body
    assert pulled == 0
    assert b'"field":"authorization"' in body


def test_huge_content_length_with_the_admin_token_is_413_before_reading(make_client: ClientFactory) -> None:
    client = make_client(**TOKENS)
    headers = [(b"content-length", str(HUGE).encode()), (b"authorization", b"Bearer a")]
    answer, pulled, body = _drive(client, headers, chunks=HUGE // len(CHUNK))
    assert (answer, pulled) == (413, 0), body
    assert b'"field":"body"' in body


def test_oversize_chunked_body_with_the_admin_token_is_413_once_past_the_limit(make_client: ClientFactory) -> None:
    client = make_client(**TOKENS)
    headers = [(b"transfer-encoding", b"chunked"), (b"authorization", b"Bearer a")]
    answer, pulled, body = _drive(client, headers, chunks=1024)  # 4 MiB on offer
    assert answer == 413, body
    assert pulled <= POLICY_BODY_BYTES // len(CHUNK) + 1


def test_body_within_the_limit_is_read_and_applied(make_client: ClientFactory) -> None:
    client = make_client(**TOKENS)
    padding = " " * (POLICY_BODY_BYTES - 100)
    response = client.put(
        PATH,
        content=f'{{"every_n": 7{padding}}}'.encode(),
        headers={"authorization": "Bearer a", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["every_n"] == 7
    too_big = client.put(
        PATH,
        content=f'{{"every_n": 8{padding}{padding}}}'.encode(),
        headers={"authorization": "Bearer a", "content-type": "application/json"},
    )
    assert too_big.status_code == 413
    assert client.get(PATH, headers={"authorization": "Bearer r"}).json()["every_n"] == 7


def test_put_sampling_body_is_documented_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/models/{model}/sampling"]["put"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"every_n", "flagged_cohorts", "max_per_second"} <= set(schema["properties"])
