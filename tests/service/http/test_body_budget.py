"""The process-wide budget of request bodies being read (``VAI_MAX_PENDING_BODY_BYTES``): a body that would pass
it is a 503 with ``Retry-After``, counted as its route counts body refusals, and every read gives its share back
however it ends."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kserve_events import REQUEST, cloudevent_headers
from prometheus_client import CollectorRegistry

from common.errors import Overloaded, PayloadTooLarge, RequestTimeout
from helpers import event, serve_app, wait_until
from service.app import create_app
from service.http.body import BodyDeadlines, collect_body
from service.settings import SidecarSettings

LIMIT = 64 * 1024
"""Each route's limit here (events, references): two declared bodies of it fill the budget."""
BUDGET = 2 * LIMIT
MODELS: dict[str, Any] = {"iris": {"kserve": {"scores_are": "probabilities", "input": "instances"}}}


async def _sent(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def _stalled(first: bytes, started: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    started.set()
    await asyncio.Event().wait()
    yield b"never"


async def _read(deadlines: BodyDeadlines, chunks: AsyncIterator[bytes], declared: int | None = None) -> bytes:
    return await collect_body(
        chunks,
        content_length=None if declared is None else str(declared),
        content_encoding=None,
        limit_bytes=LIMIT,
        deadlines=deadlines,
    )


def test_a_declared_body_past_the_budget_is_a_503_with_retry_after_before_a_byte_is_read() -> None:
    async def scenario() -> None:
        deadlines = BodyDeadlines(60.0, max_pending_bytes=BUDGET)
        started = asyncio.Event()
        held = asyncio.create_task(_read(deadlines, _stalled(b"{", started), declared=LIMIT))
        await started.wait()
        assert deadlines.budget.pending_bytes == LIMIT
        assert await _read(deadlines, _sent(b"{}"), declared=2) == b"{}"  # fits beside it
        second = asyncio.Event()
        also_held = asyncio.create_task(_read(deadlines, _stalled(b"{", second), declared=LIMIT))
        await second.wait()
        read = False

        async def unread() -> AsyncIterator[bytes]:
            nonlocal read
            read = True
            yield b"{}"

        with pytest.raises(Overloaded) as refused:
            await _read(deadlines, unread(), declared=2)
        assert not read
        assert refused.value.status == 503
        assert refused.value.headers == {"Retry-After": "1"}  # a declared length the server discards: kept open
        assert refused.value.body()["field"] == "body"
        assert "VAI_MAX_PENDING_BODY_BYTES" in refused.value.message
        for task in (held, also_held):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert deadlines.budget.pending_bytes == 0

    asyncio.run(scenario())


def test_a_chunked_body_is_counted_as_it_arrives_and_refused_with_its_connection_closed() -> None:
    async def scenario() -> None:
        deadlines = BodyDeadlines(60.0, max_pending_bytes=BUDGET)
        started = [asyncio.Event(), asyncio.Event()]
        held = [asyncio.create_task(_read(deadlines, _stalled(b"x" * (LIMIT - 5), each))) for each in started]
        for each in started:
            await each.wait()
        assert deadlines.budget.pending_bytes == BUDGET - 10
        assert await _read(deadlines, _sent(b"12345", b"67890")) == b"1234567890"  # exactly fills it
        with pytest.raises(Overloaded) as refused:
            await _read(deadlines, _sent(b"12345", b"678901"))
        assert refused.value.headers == {"Retry-After": "1", "Connection": "close"}
        assert deadlines.budget.pending_bytes == BUDGET - 10
        for task in held:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert deadlines.budget.pending_bytes == 0

    asyncio.run(scenario())


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refused_cancelled_timed_out_and_completed_reads_leave_the_budget_at_zero() -> None:
    async def scenario() -> None:
        clock = _Clock()
        deadlines = BodyDeadlines(60.0, max_pending_bytes=BUDGET, clock=clock)
        for round_ in range(50):
            started = [asyncio.Event() for _ in range(3)]
            stalled = [
                asyncio.create_task(_read(deadlines, _stalled(b"{", started[0]), declared=LIMIT)),
                asyncio.create_task(_read(deadlines, _stalled(b"x" * 1000, started[1]))),
                asyncio.create_task(_read(deadlines, _stalled(b"{", started[2]), declared=LIMIT - 2000)),
            ]
            for each in started:
                await each.wait()
            assert deadlines.budget.pending_bytes == 2 * LIMIT - 1000
            outcomes = await asyncio.gather(
                _read(deadlines, _sent(b"{}"), declared=2),  # completed
                _read(deadlines, _sent(b"{}"), declared=LIMIT),  # refused at once: past the budget
                _read(deadlines, _sent(b"y" * 999, b"y" * 2)),  # refused mid-body (chunked)
                _read(deadlines, _sent(b"y" * (LIMIT + 1))),  # too large
                _read(deadlines, _sent(b"{"), declared=2),  # ends short (the server would say the client left)
                return_exceptions=True,
            )
            assert [type(outcome) for outcome in outcomes] == [bytes, Overloaded, Overloaded, PayloadTooLarge, bytes]
            stalled[0].cancel()  # a shutdown: BodyCutOff
            stalled[2].cancel()
            if round_ % 2:  # past its deadline: the sweep makes it a 408
                clock.now += 61
                deadlines.sweep()
            else:
                stalled[1].cancel()
            results = await asyncio.gather(*stalled, return_exceptions=True)
            assert isinstance(results[1], RequestTimeout if round_ % 2 else asyncio.CancelledError), results
            assert deadlines.budget.pending_bytes == 0, round_

    asyncio.run(scenario())


def _open(url: str, request_head: bytes, first: bytes = b"{") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.sendall(request_head + first)
    return connection


def _head(method: str, path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(connection: socket.socket) -> tuple[bytes, Any]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return head, json.loads(body)


@pytest.mark.parametrize(
    ("path", "headers", "counted"),
    [
        pytest.param(
            "/v1/events",
            {"authorization": "Bearer i", "content-type": "application/json"},
            ("vai_events_rejected_total", {"reason": "body_budget"}),
            id="events",
        ),
        pytest.param(
            "/v1/cloudevents",
            cloudevent_headers("ce-1", REQUEST, "iris"),  # unauthenticated: VAI_KSERVE_OPEN
            ("vai_kserve_events_total", {"model": "iris", "outcome": "body_budget"}),
            id="cloudevents-open",
        ),
    ],
)
def test_concurrent_bodies_past_the_budget_get_503_and_the_budget_comes_back_when_they_close(
    make_settings: Callable[..., SidecarSettings], path: str, headers: dict[str, str], counted: tuple[str, Any]
) -> None:
    """Two connections each declaring the route's limit and sending one byte fill the budget: a third body (on
    any route) is refused at once with 503, Retry-After and the error shape, counted; once they leave, a body is
    read again and nothing is held."""
    registry = CollectorRegistry()
    settings = make_settings(
        max_body_bytes=LIMIT,
        max_reference_bytes=LIMIT,
        max_pending_body_bytes=BUDGET,
        ingest_tokens=("i",),
        read_tokens=("r",),
        admin_tokens=("a",),
        kserve_open=True,
        models=MODELS,
    )
    app = create_app(settings, registry=registry)
    with serve_app(app) as url:
        budget = app.state.sidecar.body_deadlines.budget
        holders = [_open(url, _head("POST", path, LIMIT, headers)) for _ in range(2)]
        try:
            wait_until(lambda: budget.pending_bytes == BUDGET, what="both bodies held")
            body = json.dumps(event()).encode()
            refused = _open(url, _head("POST", path, len(body), headers), body)
            try:
                head, answer = _answer(refused)
            finally:
                refused.close()
            assert head.startswith(b"HTTP/1.1 503"), head
            assert b"retry-after: 1" in head.lower().split(b"\r\n")
            assert answer["field"] == "body" and "VAI_MAX_PENDING_BODY_BYTES" in answer["error"]
            assert registry.get_sample_value(*counted) == 1
            reference = _open(url, _head("PUT", "/v1/models/iris/reference", 10, {"authorization": "Bearer a"}))
            try:
                assert _answer(reference)[0].startswith(b"HTTP/1.1 503")  # the budget is the process's
            finally:
                reference.close()
        finally:
            for holder in holders:
                holder.close()
        wait_until(lambda: budget.pending_bytes == 0, what="the budget given back")
        accepted = _open(url, _head("POST", "/v1/events", len(body), {"authorization": "Bearer i"}), body)
        try:
            assert _answer(accepted)[0].startswith(b"HTTP/1.1 202")
        finally:
            accepted.close()
    assert budget.pending_bytes == 0


def test_a_budget_smaller_than_a_route_s_limit_stops_the_sidecar_at_start_up(
    make_settings: Callable[..., SidecarSettings],
) -> None:
    with pytest.raises(ValueError, match=r"VAI_MAX_PENDING_BODY_BYTES \(\d+\) must be at least"):
        make_settings(max_pending_body_bytes=LIMIT, max_reference_bytes=LIMIT + 1)
