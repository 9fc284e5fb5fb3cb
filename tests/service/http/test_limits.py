"""Request bodies: the token is checked before a byte is read, then at most the route's limit, within the
body timeout; a client that leaves half-way costs a debug line."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from helpers import serve_app, wait_until
from service.app import create_app
from service.routes.monitoring import LABELS_BODY_BYTES
from service.routes.operations import POLICY_BODY_BYTES
from service.settings import SidecarSettings

ClientFactory = Callable[..., TestClient]
TOKENS = {"ingest_tokens": ("i",), "read_tokens": ("r",), "admin_tokens": ("a",)}
PATH = "/v1/models/digits/sampling"
HUGE = 200 * 1024 * 1024
CHUNK = b" " * 4096


async def _put_asgi(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: int, path: str = PATH
) -> tuple[int, int, bytes]:
    """PUT ``path`` by driving the app directly with ``chunks`` chunks on offer; (status, chunks pulled, body)."""
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
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return status, pulled, answer


def _drive(
    client: TestClient, headers: list[tuple[bytes, bytes]], chunks: int, path: str = PATH
) -> tuple[int, int, bytes]:
    async def run() -> tuple[int, int, bytes]:
        return await _put_asgi(client.app, headers, chunks, path)

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


def test_a_reference_over_64_mib_is_413_by_default_before_reading(make_client: ClientFactory) -> None:
    """The default reference limit is one an upload can reach and the detectors can use (an .npy of 20,000
    768-d rows is 61 MB): a larger one, which once answered 503 while Redis stored it late, is refused unread."""
    client = make_client(**TOKENS)
    over = 64 * 1024 * 1024 + 1
    headers = [(b"content-length", str(over).encode()), (b"authorization", b"Bearer a")]
    answer, pulled, body = _drive(client, headers, chunks=over // len(CHUNK) + 1, path="/v1/models/digits/reference")
    assert (answer, pulled) == (413, 0), body
    assert b"VAI_MAX_REFERENCE_BYTES" in body


def test_put_sampling_body_is_documented_in_openapi(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/models/{model}/sampling"]["put"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"every_n", "flagged_cohorts", "max_per_second"} <= set(schema["properties"])


BODY_ROUTES = [
    pytest.param("POST", "/v1/events", id="events"),
    pytest.param("POST", "/v1/labels", id="labels"),
    pytest.param("POST", "/v1/cloudevents", id="cloudevents"),
    pytest.param("PUT", PATH, id="sampling"),
    pytest.param("PUT", "/v1/models/digits/reference", id="reference"),
]


def _half_sent(url: str, method: str, path: str) -> socket.socket:
    """A connection that sent its headers (with the admin token) and 1 byte of a 100-byte body."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    return connection


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_body_that_stops_half_way_is_408_after_the_body_timeout(
    make_settings: Callable[..., SidecarSettings], method: str, path: str
) -> None:
    """A client that stops sending would otherwise hold its connection, and a graceful shutdown, for good."""
    registry = CollectorRegistry()
    with serve_app(create_app(make_settings(body_timeout_s=0.5, **TOKENS), registry=registry)) as url:
        connection = _half_sent(url, method, path)
        connection.settimeout(10)
        try:
            answer = connection.recv(65536)
        finally:
            connection.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), answer
    assert json.loads(body) == {"error": "body: not all received within 0.5 s (VAI_BODY_TIMEOUT_S)", "field": "body"}
    if path == "/v1/events":
        assert registry.get_sample_value("vai_events_rejected_total", {"reason": "body_timeout"}) == 1


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_client_that_leaves_mid_body_costs_no_traceback(
    make_settings: Callable[..., SidecarSettings],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    method: str,
    path: str,
) -> None:
    """Any client that can reach the port could otherwise fill the log with one traceback per disconnect."""
    caplog.set_level(logging.DEBUG, logger="service.app")
    with serve_app(create_app(make_settings(**TOKENS))) as url:
        _half_sent(url, method, path).close()
        if path != "/v1/events":  # the ingest route answers nobody without a word; the others say so at debug
            wait_until(lambda: "disconnected before sending its whole body" in caplog.text, what="the disconnect")
        with httpx2.Client(base_url=url) as client:
            assert client.get("/livez").status_code == 200
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text
    written = capfd.readouterr().err  # uvicorn logs "Exception in ASGI application" to stderr, not to caplog
    assert "Traceback" not in written and "Exception in ASGI" not in written, written


def _post_whole_then_read(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, str, bytes]:
    """POST as ``http.client`` does: the whole body first, then the answer; (status, connection header, body)."""
    connection.request(
        "POST", path, body=body, headers={"Authorization": "Bearer i", "Content-Type": "application/json"}
    )
    response = connection.getresponse()
    return response.status, response.getheader("connection") or "", response.read()


SMALL_BODY_BYTES = 64 * 1024


@pytest.mark.parametrize(
    ("path", "limit", "event"),
    [
        pytest.param(
            "/v1/events",
            SMALL_BODY_BYTES,
            {"model": "digits", "request_id": "r", "probabilities": [0.5, 0.5]},
            id="events",
        ),
        pytest.param("/v1/labels", LABELS_BODY_BYTES, {"model": "digits", "request_id": "r", "label": 1}, id="labels"),
    ],
)
def test_a_client_that_writes_its_whole_body_first_reads_the_413_and_keeps_its_connection(
    make_settings: Callable[..., SidecarSettings], path: str, limit: int, event: dict[str, Any]
) -> None:
    """A socket closed with a body still arriving resets the connection, and the 413 with it: the client
    would see a reset and retry the same body for ever. Within 4x the limit the server discards the rest."""
    with serve_app(create_app(make_settings(max_body_bytes=SMALL_BODY_BYTES, **TOKENS))) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            status, close, answer = _post_whole_then_read(connection, path, b" " * (3 * limit) + b"{}")
            assert (status, close) == (413, ""), answer
            assert json.loads(answer)["field"] == "body"
            small = json.dumps({"events": [event]} if path == "/v1/events" else {"labels": [event]}).encode()
            assert _post_whole_then_read(connection, path, small)[0] in (200, 202)  # the same connection
        finally:
            connection.close()


def test_a_body_declared_far_over_the_limit_is_refused_with_the_connection_closed(
    make_settings: Callable[..., SidecarSettings],
) -> None:
    """Past what the server would discard, it closes: a client may then see a reset rather than the 413."""
    limit = 1024
    with serve_app(create_app(make_settings(max_body_bytes=limit, **TOKENS))) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer i\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {64 * 2**20 + 1}\r\n\r\n".encode()
            )
            head = connection.recv(65536).partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 413") and b"connection: close" in head, head
