"""A request's head is bounded by the server the sidecar runs on (service.http.protocol): too many bytes or
header lines is a 431, a head that never completes a 408, both in the error shape and closing the connection;
ordinary requests, keep-alive ones included, pass."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from helpers import event, serve_app
from service.app import create_app
from service.http.protocol import BoundedHttpToolsProtocol
from service.settings import SidecarSettings


class _QuickHead(BoundedHttpToolsProtocol):
    """The sidecar's protocol with a head timeout and a body linger a test can wait for."""

    head_timeout_s = 0.5
    body_linger_s = 0.5


@pytest.fixture
def address(make_settings: Callable[..., SidecarSettings]) -> Iterator[tuple[str, int]]:
    with serve_app(create_app(make_settings()), http=_QuickHead) as base:
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def _exchange(address: tuple[str, int], *parts: bytes, pause_s: float = 0.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``parts`` (pausing between them) and read the answer until the server closes the connection."""
    received = b""
    with socket.create_connection(address, timeout=10) as connection:
        for part in parts:
            try:
                connection.sendall(part)
            except (BrokenPipeError, ConnectionResetError):  # refused mid-way: its answer is waiting
                break
            if pause_s and _answered_within(connection, pause_s):  # a slow client's gap, unless answered meanwhile
                received = connection.recv(65536)
                break
        connection.settimeout(10)
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def _answered_within(connection: socket.socket, seconds: float) -> bool:
    """Wait up to ``seconds`` for the server to send something (or close), without reading it: the wait on the
    socket itself, where a sleep would only hope the server is quiet meanwhile."""
    connection.settimeout(seconds)
    try:
        connection.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        return False
    return True


def _post_head(length: int) -> bytes:
    return (
        b"POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % length
    )


def _get(path: str = "/livez", *extra: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nhost: 127.0.0.1\r\n" + b"".join(extra)


def test_a_head_over_the_byte_bound_is_refused_and_closed(address: tuple[str, int]) -> None:
    big = b"x-filler: " + b"a" * 8000 + b"\r\n"
    status, headers, body = _exchange(address, _get("/livez", *[big] * 20) + b"\r\n")
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body) == {
        "error": "headers: the request's line and headers exceed 65536 bytes",
        "field": "headers",
    }


def test_one_endless_header_is_refused_before_it_ends(address: tuple[str, int]) -> None:
    """A single header line never finished: httptools would hold it whole before any callback."""
    status, _, body = _exchange(address, _get("/livez", b"x-endless: "), *[b"a" * 16384] * 16)
    assert status == 431 and json.loads(body)["field"] == "headers"


def test_too_many_header_lines_are_refused(address: tuple[str, int]) -> None:
    lines = [b"x-h%d: 1\r\n" % number for number in range(150)]
    status, _, body = _exchange(address, _get("/livez", *lines) + b"\r\n")
    assert status == 431
    assert json.loads(body) == {"error": "headers: more than 100 header lines", "field": "headers"}


def test_a_head_that_never_completes_is_timed_out(address: tuple[str, int]) -> None:
    started = time.monotonic()
    status, headers, body = _exchange(address, _get("/livez", b"x-slow: 1\r\n"))
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {"error": "headers: not received in full within 0.5 s", "field": "headers"}
    assert time.monotonic() - started < 5


def test_a_connection_opened_and_left_silent_is_closed(address: tuple[str, int]) -> None:
    status, _, _ = _exchange(address)
    assert status == 408


def test_a_slow_but_steady_head_still_times_out(address: tuple[str, int]) -> None:
    """A header line every so often never extends the time the whole head may take."""
    lines = [b"x-drip-%d: 1\r\n" % number for number in range(10)]
    status, _, _ = _exchange(address, _get(), *lines, pause_s=0.1)
    assert status == 408


def test_keep_alive_requests_and_bodies_pass(address: tuple[str, int]) -> None:
    """Three requests on one connection, the second after the head timeout: each next head gets its own time;
    a body (not part of the head) of any length the route takes is not counted."""
    payload = json.dumps({"events": [event(f"r{n}", embedding=[0.5] * 4000) for n in range(5)]}).encode()
    assert len(payload) > 65536
    post = (
        b"POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(payload)
    ) + payload
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(_get() + b"\r\n")
        first = connection.recv(65536)
        # idle past the head timeout (0.5 s), within uvicorn's keep-alive (5 s): the server must not answer or close
        assert not _answered_within(connection, 0.8)
        connection.settimeout(10)
        connection.sendall(post)
        second = b""
        while b'"accepted"' not in second:
            second += connection.recv(65536)
        connection.sendall(_get() + b"connection: close\r\n\r\n")
        third = b""
        while chunk := connection.recv(65536):
            third += chunk
    assert (
        first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 202") and third.startswith(b"HTTP/1.1 200")
    )


def test_a_refused_head_is_answered_once(address: tuple[str, int]) -> None:
    """Refused in the read that completes the head, then checked again after it: one answer, not two."""
    lines = [b"x-h%d: 1\r\n" % number for number in range(150)]
    status, _, body = _exchange(address, _get("/livez", *lines) + b"\r\n" + b"x" * 70000)
    assert status == 431 and body.count(b'"error"') == 1


def test_the_rest_of_a_body_answered_early_is_read_for_a_bounded_time(address: tuple[str, int]) -> None:
    """A 413 on a declared length the server discards (the connection kept, so the client reads the answer): a
    client trickling the rest kept the connection open for as long as it liked (100 s at a byte every 5 s)."""
    head = _post_head(9_000_000)  # over the 8 MiB limit, under the length whose rest is discarded
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(head + b"{")
        answer = b""
        while b'"field": "body"' not in answer and b'"field":"body"' not in answer:
            answer += connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < 5:
            try:
                connection.sendall(b" ")
                connection.settimeout(0.1)
                if connection.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed and time.monotonic() - started < 3
