"""The queue writer against a real Redis, including an outage."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from common import keys
from common.embedded_redis import EmbeddedRedis
from common.redis import connect
from helpers import event, paused_redis, stream_entries, wait_until
from sampler.contract import SampledEvent
from sampler.explanations import ExplanationStore
from sampler.metrics import SamplerMetrics
from sampler.queue import QueueWriter

pytestmark = pytest.mark.anyio


def message(request_id: str, model: str = "digits") -> SampledEvent:
    return SampledEvent(
        model=model,
        model_version="v",
        request_id=request_id,
        timestamp=1.0,
        received_at=1.0,
        reasons=("every_n",),
        predicted=0,
        confidence=0.9,
        margin=1.0,
        num_classes=3,
    )


WriterFactory = Callable[..., tuple[QueueWriter, CollectorRegistry]]
"""``make(max_events=..., max_bytes=..., queue_max_length=...)``: a writer on its own client, and its registry."""


@pytest.fixture
async def writer_factory(redis_url: str) -> AsyncIterator[WriterFactory]:
    clients = []

    def make(
        *, max_events: int = 100, max_bytes: int = 1 << 20, queue_max_length: int = 100
    ) -> tuple[QueueWriter, CollectorRegistry]:
        client = connect(redis_url, timeout_s=5.0)
        clients.append(client)
        registry = CollectorRegistry()
        store = ExplanationStore(client, ttl_s=3600)
        writer = QueueWriter(
            client,
            SamplerMetrics(registry),
            store,
            max_events=max_events,
            max_bytes=max_bytes,
            batch_size=10,
            stream_maxlen=1000,
            queue_max_length=queue_max_length,
            retry_s=0.05,
        )
        return writer, registry

    yield make
    for client in clients:
        await client.aclose()


async def test_flush_writes_versioned_messages_in_order(
    writer_factory: WriterFactory, redis_client: redis.Redis
) -> None:
    writer, registry = writer_factory()
    for i in range(25):
        assert writer.offer(message(f"r{i}")) is None
    while writer.buffered:
        assert await writer.flush_once()
    entries = stream_entries(redis_client, keys.sample_stream("digits"))
    assert [SampledEvent.decode(fields).request_id for _, fields in entries] == [f"r{i}" for i in range(25)]
    assert registry.get_sample_value("vai_sample_queued_total", {"model": "digits"}) == 25


async def test_queue_cap_counts_backlog_and_buffer(writer_factory: WriterFactory) -> None:
    writer, registry = writer_factory(queue_max_length=5)
    reasons = [writer.offer(message(f"r{i}")) for i in range(5)]
    while writer.buffered:
        assert await writer.flush_once(), "Redis did not answer"
    await writer.poll_lengths(["digits"])
    reasons += [writer.offer(message("late"))]
    assert reasons == [None] * 5 + ["queue_full"]
    assert writer.queue_lengths() == {"digits": 5}
    assert registry.get_sample_value("vai_sample_dropped_total", {"model": "digits", "reason": "queue_full"}) == 1


async def test_buffer_bounds_by_count_and_bytes(writer_factory: WriterFactory) -> None:
    writer, _ = writer_factory(max_events=3)
    assert [writer.offer(message(f"r{i}")) for i in range(4)] == [None, None, None, "buffer_full"]
    size = len(message("r0").encode()[b"m"])
    small, _ = writer_factory(max_bytes=2 * size + 1)
    assert [small.offer(message(f"r{i}")) for i in range(3)] == [None, None, "buffer_full"]


async def test_entry_refused_by_redis_is_dropped_not_retried(
    writer_factory: WriterFactory, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.set(keys.sample_stream("broken"), "not a stream")
    writer, registry = writer_factory()
    writer.offer(message("a", model="broken"))
    writer.offer(message("a2", model="broken"))
    writer.offer(message("b"))
    assert await writer.flush_once()
    assert writer.buffered == 0
    assert registry.get_sample_value("vai_sample_dropped_total", {"model": "broken", "reason": "redis_error"}) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused 2 of 3" in errors[0], "one line a batch (Redis out of memory refuses all)"
    assert redis_client.xlen(keys.sample_stream("digits")) == 1
    assert redis_client.hget(keys.explanation("broken", "a"), "status") == b"failed", "not left 'queued' forever"
    assert redis_client.hget(keys.explanation("digits", "b"), "status") == b"queued"


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``predicate`` while the event loop runs the task under test."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_an_unexpected_error_costs_its_batch_counted_never_the_writer(
    writer_factory: WriterFactory, redis_client: redis.Redis
) -> None:
    """A batch that cannot even be written (here a confidence that the record store refuses) is dropped and
    counted; the writer task goes on with the next batch instead of ending and leaving the buffer to fill."""
    writer, registry = writer_factory()
    writer.offer(message("bad").model_copy(update={"confidence": float("nan")}))
    task = asyncio.create_task(writer.run())
    try:
        await _until(lambda: writer.buffered == 0)
        writer.offer(message("next"))
        await _until(lambda: redis_client.xlen(keys.sample_stream("digits")) == 1)
        assert not task.done()
        assert registry.get_sample_value("vai_sample_dropped_total", {"model": "digits", "reason": "error"}) == 1
        assert [
            SampledEvent.decode(f).request_id for _, f in stream_entries(redis_client, keys.sample_stream("digits"))
        ] == ["next"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_redis_outage_loses_nothing_up_to_the_buffer_bound(
    own_redis: EmbeddedRedis, make_client: Callable[..., TestClient]
) -> None:
    registry = CollectorRegistry()
    client = make_client(
        registry=registry,
        redis_url=own_redis.url,
        buffer_max_events=50,
        flush_retry_s=0.05,
        sampling={"every_n": 1, "max_per_second": 10_000},
    )
    stream = keys.sample_stream("digits")
    direct = redis.Redis.from_url(own_redis.url)

    def queued() -> float:
        return registry.get_sample_value("vai_sample_queued_total", {"model": "digits"}) or 0.0

    client.post("/v1/events", json={"events": [event(f"before{i}") for i in range(10)]})
    wait_until(lambda: queued() == 10, what="first 10 queued")
    own_redis.stop()
    wait_until(lambda: registry.get_sample_value("vai_redis_up") == 0, what="redis_up to drop")

    response = client.post("/v1/events", json={"events": [event(f"during{i}") for i in range(80)]})
    assert response.status_code == 202
    assert response.json()["accepted"] == 80
    dropped = registry.get_sample_value("vai_sample_dropped_total", {"model": "digits", "reason": "redis_unavailable"})
    assert dropped == 30
    assert client.get("/status").json()["buffered_events"] == 50

    restarted = EmbeddedRedis(data_dir=own_redis.data_dir, port=own_redis.port).start()
    try:
        wait_until(lambda: queued() == 60, what="buffer flushed after restart")
        ids = [SampledEvent.decode(fields).request_id for _, fields in stream_entries(direct, stream)]
        assert ids == [f"before{i}" for i in range(10)] + [f"during{i}" for i in range(50)]
        assert registry.get_sample_value("vai_redis_up") == 1
    finally:
        direct.close()
        restarted.stop()


def _small_writer(client: Redis, registry: CollectorRegistry | None = None) -> QueueWriter:
    return QueueWriter(
        client,
        SamplerMetrics(registry or CollectorRegistry()),
        ExplanationStore(client, ttl_s=3600),
        max_events=10,
        max_bytes=1 << 20,
        batch_size=10,
        stream_maxlen=100,
        queue_max_length=100,
        retry_s=0.05,
    )


async def test_a_redis_that_stops_answering_times_out_and_holds_no_connection(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A paused Redis (SIGSTOP: no refusal, just silence) costs the flush its timeout, not a hang; the
    event stays buffered and is written once Redis answers, and no pipeline is left holding a
    connection (redis-py logs 'Unclosed Pipeline client' for one)."""
    client = connect(own_redis.url, timeout_s=0.2)
    writer = _small_writer(client)
    assert writer.offer(message("r1")) is None
    with paused_redis(own_redis.data_dir):
        assert await writer.flush_once() is False
    gc.collect()
    assert await writer.flush_once() is True
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
    await client.aclose()


async def test_drain_gives_up_near_its_deadline_while_redis_is_hung(own_redis: EmbeddedRedis) -> None:
    """Shutdown must not wait on a hung Redis past the drain's time (a pod that does not stop is killed, its
    buffer lost): the drain stops between flushes at its deadline, the event not written counted as dropped,
    and two flushes never run at once (the drain may meet a writer task that did not stop)."""
    client = connect(own_redis.url, timeout_s=0.5)
    registry = CollectorRegistry()
    writer = _small_writer(client, registry)
    assert writer.offer(message("r1")) is None
    with paused_redis(own_redis.data_dir):
        still_running = asyncio.create_task(writer.flush_once())  # a writer task's flush, not yet given up
        await asyncio.wait_for(writer.drain(timeout_s=1.5), timeout=30)  # a liveness bound, not a speed figure
        assert await still_running is False
        assert writer.buffered == 0
    dropped = registry.get_sample_value("vai_sample_dropped_total", {"model": "digits", "reason": "redis_unavailable"})
    assert dropped == 1
    await client.aclose()
