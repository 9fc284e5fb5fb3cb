"""Bodies over the sidecar's limit: cut to ``max_request_bytes`` before they are sent, and a sidecar that refuses
one without reading it (413 and a closed connection, which the client sees as a reset while it sends) never leaves
a batch stuck."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from client_servers import HungServer, scripted, timed_logs
from vai_client import AsyncClient, Client, RetryPolicy

from common.embedded_redis import free_port
from helpers import wait_until

FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)
LIMIT = 8 * 2**20
"""The sidecar's default ``VAI_MAX_BODY_BYTES``, and the client's default ``max_request_bytes``."""


class RefusingServer:
    """A sidecar as an audit found it: a body declared larger than ``limit_bytes`` gets 413 and ``Connection: close``
    before a byte of it is read, and the connection is closed with the body unread, which resets it. Its receive
    buffer is kept small, so a client still sending a body of a few MB gets the reset, never the 413."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.accepted: list[str] = []
        """Request ids of the events taken, in arrival order."""
        self.refused = 0
        self.largest = 0
        """The largest body taken."""
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                if length > outer.limit_bytes:
                    with lock:
                        outer.refused += 1
                    self.close_connection = True
                    self.answer(413, {"error": "body too large", "field": "body"}, close=True)
                    return
                events = json.loads(self.rfile.read(length))["events"]
                with lock:
                    outer.accepted += [event["request_id"] for event in events]
                    outer.largest = max(outer.largest, length)
                self.answer(202, {"accepted": len(events), "rejected": [], "sampled": []})

            def answer(self, status: int, document: dict[str, Any], *, close: bool = False) -> None:
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                if close:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def server_bind(self) -> None:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # accepted sockets inherit it
                super().server_bind()

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def refusing() -> Any:
    server = RefusingServer(LIMIT)
    yield server
    server.close()


def log_vectors(client: Client | AsyncClient, n: int, *, width: int, start: int = 0) -> None:
    """``n`` events each with a float32 input of ``width`` values (4/3 × 4 × ``width`` bytes in the body)."""
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        client.log(model="m", request_id=f"m-{i}", logits=[1.0, 0.0], input=rng.random(width, dtype=np.float32))


@pytest.mark.parametrize("client_class", [pytest.param(Client, id="thread"), pytest.param(AsyncClient, id="async")])
def test_a_batch_is_cut_to_max_request_bytes(
    refusing: RefusingServer, client_class: type[Client | AsyncClient]
) -> None:
    """The audit's case: 60 events of 30,000 float32 inputs, 9.6 MB as one body. By default every body is at most
    8 MiB, so the sidecar takes all of them, in order, none refused and none retried. (The batch is sent once
    it is full, so it is the whole 9.6 MB, however busy the machine is.)"""

    async def run(client: AsyncClient) -> bool:
        await client.start()
        log_vectors(client, 60, width=30_000)
        return await client.flush(30) and await client.close(5)

    client = client_class(refusing.url, batch_size=60, flush_interval_s=3600, timeout_s=30, retry_policy=FAST_RETRY)
    if isinstance(client, AsyncClient):
        assert asyncio.run(run(client)), client.stats
    else:
        log_vectors(client, 60, width=30_000)
        assert client.flush(30) and client.close(5), client.stats
    stats = client.stats
    assert (stats.sent, stats.rejected, stats.retried, stats.failed) == (60, 0, 0, 0)
    assert refusing.accepted == [f"m-{i}" for i in range(60)]
    assert refusing.refused == 0 and LIMIT // 2 < refusing.largest <= LIMIT


def test_an_event_over_max_request_bytes_is_rejected_unsent(caplog: pytest.LogCaptureFixture) -> None:
    with scripted() as server, caplog.at_level(logging.WARNING, logger="vai_client"):
        client = Client(server.url, max_request_bytes=64 * 1024, batch_size=10, flush_interval_s=0.01)
        log_vectors(client, 5, width=100)
        log_vectors(client, 20, width=20_000, start=5)  # 107 KB each
        log_vectors(client, 5, width=100, start=25)
        assert client.flush(10)
        assert (client.stats.sent, client.stats.rejected, client.stats.retried) == (10, 20, 0)
        sent = [f"m-{i}" for i in (*range(5), *range(25, 30))]
        assert [e["request_id"] for e in server.items()] == sent
        assert all(len(json.dumps(document)) <= 64 * 1024 for _, _, document, _ in server.requests)
        client.close()
    warnings = [r.getMessage() for r in caplog.records if "max_request_bytes" in r.getMessage()]
    assert len(warnings) == 1, warnings


def test_max_request_bytes_has_a_floor() -> None:
    with pytest.raises(ValueError, match="max_request_bytes"):
        Client("http://127.0.0.1:9", max_request_bytes=1000)


def test_a_body_refused_unread_splits_the_batch_and_nothing_is_stuck(refusing: RefusingServer) -> None:
    """``max_request_bytes`` above the sidecar's limit (a proxy's, or an older sidecar's): each body over it is
    cut off while it is sent; the batch is split in halves until the pieces fit, and later batches follow."""
    client = Client(
        refusing.url, batch_size=60, max_request_bytes=64 * 2**20, flush_interval_s=3600, retry_policy=FAST_RETRY
    )  # sent once the batch is full (or flushed): the 60 events in one 9.6 MB body
    log_vectors(client, 60, width=30_000)
    assert client.flush(30), client.stats
    timed_logs(client, 10, start=60)
    assert client.flush(10), client.stats
    stats = client.stats
    assert (stats.sent, stats.rejected, stats.errored, stats.failed) == (70, 0, 0, 0)
    assert refusing.refused >= 1 and stats.retried >= 60
    assert refusing.accepted == [f"m-{i}" for i in range(70)]
    assert client.close(5)


def test_one_event_cut_off_alone_is_rejected_after_its_attempts(
    refusing: RefusingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One event over the sidecar's limit (and under ``max_request_bytes``): tried alone ``server_error_attempts``
    times with the backoff, then counted as rejected with one warning, and the events after it are delivered."""
    with caplog.at_level(logging.WARNING, logger="vai_client"):
        client = Client(
            refusing.url, batch_size=10, max_request_bytes=64 * 2**20, flush_interval_s=0.01, retry_policy=FAST_RETRY
        )
        log_vectors(client, 2, width=100)
        log_vectors(client, 1, width=2_000_000, start=2)  # 10.7 MB as a body
        log_vectors(client, 2, width=100, start=3)
        assert client.flush(30), client.stats
        stats = client.stats
        assert (stats.sent, stats.rejected, stats.errored, stats.failed) == (4, 1, 0, 0)
        assert refusing.refused >= FAST_RETRY.server_error_attempts
        assert refusing.accepted == ["m-0", "m-1", "m-3", "m-4"]
        assert client.close(5)
    (warning,) = [r.getMessage() for r in caplog.records if "cutting the connection off" in r.getMessage()]
    assert "max_request_bytes" in warning


@pytest.mark.parametrize("kind", [pytest.param("refused", id="down"), pytest.param("hung", id="hung")])
def test_a_sidecar_down_or_hung_is_waited_out_not_taken_for_a_refusal(kind: str) -> None:
    """A refused connection or a timeout is not a body cut off: one event is retried far more than
    ``server_error_attempts`` times, never given up while the client is open."""
    hung = HungServer() if kind == "hung" else None
    try:
        url = hung.url if hung else f"http://127.0.0.1:{free_port()}"
        client = Client(url, timeout_s=0.05, flush_interval_s=0.01, retry_policy=FAST_RETRY)
        timed_logs(client, 1)
        attempts = 3 * FAST_RETRY.server_error_attempts
        wait_until(lambda: client.stats.retried >= attempts, what=f"{attempts} failed attempts")
        stats = client.stats
        assert (stats.sent, stats.rejected, stats.errored, stats.failed) == (0, 0, 0, 0)
        assert not client.close(0.1)
        assert client.stats.failed == 1
    finally:
        if hung:
            hung.close()
