"""The monitor's and the worker's /metrics server: it answers scrapes, times idle connections out and serves a
bounded number at once (prometheus_client's kept one thread per connection for ever)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from common import metrics_server
from common.embedded_redis import free_port
from helpers import wait_until


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(metrics_server._Handler, "timeout", 0.5)  # a timeout a test can wait for
    registry = CollectorRegistry()
    Counter("vai_probe", "A counter to find on the page.", registry=registry).inc()
    port = free_port()
    server = metrics_server.start_metrics_server(port, host="127.0.0.1", registry=registry)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def test_a_scrape_reads_the_registry(port: int) -> None:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200 and "vai_probe_total 1.0" in response.text


def test_idle_connections_are_closed(port: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        for connection in idle:
            connection.settimeout(5)
            assert connection.recv(1) == b""  # closed by the server after its timeout (0.5 s here)
    finally:
        for connection in idle:
            connection.close()
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200


def test_connections_past_the_cap_are_closed_at_once(port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_server._Handler, "timeout", 30.0)  # the served ones stay open through the test
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(metrics_server.MAX_CONNECTIONS + 4)]
    try:
        for connection in held[-4:]:
            connection.settimeout(5)
            assert connection.recv(1) == b""
        for connection in held[: metrics_server.MAX_CONNECTIONS]:
            connection.settimeout(0.05)
            with pytest.raises(TimeoutError):
                connection.recv(1)
    finally:
        for connection in held:
            connection.close()

    def scraped() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(scraped, what="a scrape once the connections are gone")
