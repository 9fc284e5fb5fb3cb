"""``AsyncClient``: the same guarantees, with an asyncio task as the sender."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

import pytest
from client_servers import Answer, HungServer, accept_all, report, scripted, timed_logs
from vai_client import AsyncClient, Client, RetryPolicy

from common.embedded_redis import free_port
from helpers import wait_until

FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)


def test_events_and_labels_arrive_in_order() -> None:
    async def main(url: str) -> AsyncClient:
        async with AsyncClient(url, batch_size=16, flush_interval_s=0.01) as client:
            durations = []
            for i in range(100):
                durations += timed_logs(client, 1, model="a", start=i)
                durations += timed_logs(client, 1, model="b", start=i)
            client.label("a", "a-0", 1)
            report("async, sidecar up", durations)
            assert await client.flush(10)
        return client

    with scripted() as server:
        client = asyncio.run(main(server.url))
        assert client.stats.sent == 201
        for model in ("a", "b"):
            assert [e["request_id"] for e in server.items() if e["model"] == model] == [
                f"{model}-{i}" for i in range(100)
            ]
        assert server.items("/v1/labels") == [{"model": "a", "request_id": "a-0", "label": 1}]


def test_retry_after_then_close_drains() -> None:
    calls: list[float] = []

    def busy_once(path: str, document: dict[str, Any]) -> Answer:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return 503, {"Retry-After": "1"}, {"error": "busy", "field": "body"}
        return accept_all(path, document)

    async def main(url: str) -> AsyncClient:
        client = AsyncClient(url, flush_interval_s=0.01, retry_policy=FAST_RETRY)
        await client.start()
        timed_logs(client, 30)
        assert await client.close(10)
        return client

    with scripted(busy_once) as server:
        client = asyncio.run(main(server.url))
        assert (client.stats.sent, client.stats.retried) == (30, 30)
        assert calls[1] - calls[0] >= 0.95


@pytest.mark.parametrize("kind", [pytest.param("refused", id="down"), pytest.param("hung", id="hung")])
def test_unreachable_sidecar_leaves_the_loop_free(kind: str) -> None:
    hung = HungServer() if kind == "hung" else None
    url = hung.url if hung else f"http://127.0.0.1:{free_port()}"

    async def main() -> AsyncClient:
        client = AsyncClient(
            url, timeout_s=0.2, max_buffer=50, batch_size=10, flush_interval_s=0.01, retry_policy=FAST_RETRY
        )
        await client.start()
        durations = []
        lags = []
        for i in range(200):
            began = time.perf_counter()
            await asyncio.sleep(0)  # the loop keeps turning while the sender waits on the sidecar
            lags.append(time.perf_counter() - began)
            durations += timed_logs(client, 1, start=i)
        await asyncio.sleep(0.5)
        report(f"async, sidecar {kind}", durations)
        report(f"async, sidecar {kind}: event-loop turn", lags)
        assert client.stats.retried > 0 and client.stats.dropped >= 200 - 50 - 10
        assert not await client.close(0.3)
        return client

    try:
        client = asyncio.run(main())
        stats = client.stats
        assert stats.sent == 0 and stats.dropped + stats.failed == 200
    finally:
        if hung:
            hung.close()


def test_log_before_the_loop_starts_is_kept() -> None:
    with scripted() as server:
        client = AsyncClient(server.url, flush_interval_s=0.01)
        client.log(model="m", request_id="early", logits=[1.0, 0.0])  # no running loop yet: buffered

        async def main() -> None:
            await client.start()
            assert await client.flush(10)
            await client.close()

        asyncio.run(main())
        wait_until(lambda: server.items(), what="the early event")
        assert [e["request_id"] for e in server.items()] == ["early"]


@pytest.mark.parametrize("method", [pytest.param("log", id="log"), pytest.param("label", id="label")])
def test_both_clients_share_one_log_and_label(method: str) -> None:
    """``log()`` and ``label()`` are written once for both clients: same signature, same event, one definition."""
    threaded, asynchronous = getattr(Client, method), getattr(AsyncClient, method)
    assert inspect.signature(threaded) == inspect.signature(asynchronous)
    assert threaded is asynchronous


def test_close_during_encoding_counts_each_event_once() -> None:
    """``close()`` cancels the sender while the worker thread encodes a batch: the thread still counts what it
    cannot encode (rejected), so the cancel may count as failed only what the thread did encode."""
    slow_logits = [float(i % 7) for i in range(20_000)]  # a list: encoded on the worker thread, not in log()
    events = 600

    async def main(url: str) -> AsyncClient:
        client = AsyncClient(
            url, batch_size=events, max_buffer_bytes=2**30, flush_interval_s=0.01, tensor_encoding="compact"
        )
        await client.start()
        timed_logs(client, events - 1, logits=slow_logits)
        client.log(model="m", request_id="m-overflow", logits=[10**400, 1.0])  # unreadable, last in the batch
        while client.stats.buffered:  # until the sender has taken the batch (it then encodes it for ~1 s)
            await asyncio.sleep(0.001)
        await client.close(timeout_s=0)
        return client

    with scripted() as server:
        client = asyncio.run(main(server.url))
        wait_until(lambda: not any(t.name.startswith("vai-client-http") for t in threading.enumerate()), timeout_s=30)
        stats = client.stats
        assert stats.rejected == 1
        assert stats.sent + stats.rejected + stats.failed + stats.dropped + stats.errored == events
