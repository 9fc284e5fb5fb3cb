"""Redis down, hung or out of memory: every route that needs it answers 503 with Retry-After, in the error
shape, without Redis's address, and the client's keep-alive connection survives."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis

from common.embedded_redis import EmbeddedRedis
from helpers import event, full_redis, paused_redis, serve_app
from service.app import create_app

READS = [
    "GET /v1/explanations?model=digits",
    "GET /v1/explanations",
    "GET /v1/explanations/digits/r1",
    "GET /v1/explanations/digits/r1/heatmap.png?method=saliency",
]
WRITES = ["PUT /v1/models/digits/sampling", "DELETE /v1/models/digits/sampling"]


@contextmanager
def _broken(server: EmbeddedRedis, how: str) -> Iterator[None]:
    """Redis ``down`` (killed), ``hung`` (SIGSTOP) or ``oom`` (maxmemory 1, noeviction) inside the block."""
    if how == "down":
        server.kill()
        yield
        return
    if how == "oom":
        client = redis.Redis(port=server.port)
        try:
            with full_redis(client):
                yield
        finally:
            client.close()
        return
    with paused_redis(server.data_dir):
        yield


def _send(client: httpx.Client, route: str) -> httpx.Response:
    method, path = route.split(" ")
    return client.request(method, path, json={"every_n": 7} if method == "PUT" else None)


def _local_port(response: httpx.Response) -> int:
    """The client-side port of the connection that carried ``response``."""
    sock = response.extensions["network_stream"].get_extra_info("socket")
    return int(sock.getsockname()[1])


def _assert_unavailable(response: httpx.Response, port: int) -> None:
    assert response.status_code == 503, (response.request.url, response.text)
    assert response.headers["retry-after"].isdigit()
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) <= {"error", "field"} and body["error"], body
    assert "127.0.0.1" not in response.text and str(port) not in response.text, response.text


@pytest.fixture
def sidecar_url(own_redis: EmbeddedRedis, make_settings: Callable[..., Any]) -> Iterator[str]:
    with serve_app(create_app(make_settings(redis_url=own_redis.url, redis_timeout_s=0.2))) as url:
        assert httpx.post(f"{url}/v1/events", json=event()).status_code == 202  # digits is a model of the fleet
        yield url


@pytest.mark.parametrize("how", [pytest.param("down", id="down"), pytest.param("hung", id="hung")])
def test_every_redis_route_is_503_and_the_connection_survives(
    own_redis: EmbeddedRedis, sidecar_url: str, how: str
) -> None:
    with httpx.Client(base_url=sidecar_url, timeout=10) as client:
        assert client.get("/v1/explanations?model=digits").status_code == 200
        with _broken(own_redis, how):
            answers = [_send(client, route) for route in READS + WRITES + READS[:1]]
        for response in answers:
            _assert_unavailable(response, own_redis.port)
        assert len({_local_port(response) for response in answers}) == 1, "the keep-alive connection was dropped"


def test_two_requests_on_one_connection_with_redis_down_are_both_answered(
    own_redis: EmbeddedRedis, sidecar_url: str
) -> None:
    with httpx.Client(base_url=sidecar_url, timeout=10) as client, _broken(own_redis, "down"):
        first = client.get("/v1/explanations?model=digits")
        second = client.get("/v1/explanations/digits/r1/heatmap.png?method=saliency")
        assert _local_port(first) == _local_port(second), "the keep-alive connection was dropped"
    _assert_unavailable(first, own_redis.port)
    _assert_unavailable(second, own_redis.port)


def test_out_of_memory_refuses_writes_with_503_and_reads_still_work(own_redis: EmbeddedRedis, sidecar_url: str) -> None:
    with httpx.Client(base_url=sidecar_url, timeout=10) as client:
        with _broken(own_redis, "oom"):
            for route in WRITES:
                _assert_unavailable(_send(client, route), own_redis.port)
            assert client.get("/v1/models/digits/sampling").json()["every_n"] == 100, "a refused change was applied"
            assert client.get("/v1/explanations?model=digits").status_code == 200
            assert client.get("/v1/explanations/digits/r1").status_code == 404
        assert _send(client, WRITES[0]).status_code == 200
