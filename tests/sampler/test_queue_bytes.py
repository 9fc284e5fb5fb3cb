"""What the sample streams may hold in bytes: an input over ``VAI_MAX_INPUT_BYTES`` is not queued (its event is still
accepted and monitored), and a stream's approximate backlog bytes are capped by ``VAI_QUEUE_MAX_BYTES``."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from common.redis import connect
from helpers import event, stream_entries, wait_until
from sampler.contract import InputTensor, SampledEvent
from sampler.explanations import ExplanationStore
from sampler.metrics import SamplerMetrics
from sampler.queue import QueueWriter

pytestmark = pytest.mark.anyio
KIB = 1024


def _message(request_id: str, input_bytes: int | None, model: str = "digits") -> SampledEvent:
    """A sampled event whose input has ``input_bytes`` raw bytes (``None``: no input)."""
    tensor = None
    if input_bytes is not None:
        tensor = InputTensor.of(np.zeros(input_bytes, dtype=np.uint8))
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
        input=tensor,
    )


WriterFactory = Callable[..., tuple[QueueWriter, CollectorRegistry]]


@pytest.fixture
async def make_writer(redis_url: str) -> AsyncIterator[WriterFactory]:
    clients = []

    def make(**limits: int) -> tuple[QueueWriter, CollectorRegistry]:
        client = connect(redis_url, timeout_s=5.0)
        clients.append(client)
        registry = CollectorRegistry()
        writer = QueueWriter(
            client,
            SamplerMetrics(registry),
            ExplanationStore(client, ttl_s=3600),
            max_events=1000,
            max_bytes=64 << 20,
            batch_size=100,
            stream_maxlen=10_000,
            queue_max_length=1000,
            retry_s=0.05,
            **limits,
        )
        return writer, registry

    yield make
    for client in clients:
        await client.aclose()


def _dropped(registry: CollectorRegistry, reason: str, model: str = "digits") -> float | None:
    return registry.get_sample_value("vai_sample_dropped_total", {"model": model, "reason": reason})


async def test_an_input_over_the_cap_is_not_queued_and_is_counted(
    make_writer: WriterFactory, redis_client: redis.Redis
) -> None:
    writer, registry = make_writer(max_input_bytes=4 * KIB)
    cap_raw = 4 * KIB * 3 // 4  # base64 takes 4 characters for 3 bytes: this is exactly the cap encoded
    assert writer.offer(_message("at-cap", cap_raw)) is None
    assert writer.offer(_message("past-cap", cap_raw + 1)) == "input_too_large"
    assert writer.offer(_message("no-input", None)) is None
    assert await writer.flush_once()
    queued = [SampledEvent.decode(fields).request_id for _, fields in stream_entries(redis_client, "vai:stream:digits")]
    assert queued == ["at-cap", "no-input"]
    assert _dropped(registry, "input_too_large") == 1
    assert writer.buffered_bytes == 0


async def test_a_stream_s_backlog_is_capped_in_bytes_from_its_polled_length(
    make_writer: WriterFactory, redis_client: redis.Redis
) -> None:
    """Entries of ~10 KiB against a 100 KiB cap: about ten fit, counting those buffered; once the poll sees them in
    the stream they still count, and once a worker deletes them there is room again. Another model is unaffected."""
    writer, registry = make_writer(queue_max_bytes=100 * KIB)
    answers = [writer.offer(_message(f"r{i}", 7 * KIB)) for i in range(15)]  # ~9.4 KiB encoded each
    kept = answers.count(None)
    assert 9 <= kept <= 10 and answers[kept:] == ["queue_bytes_full"] * (15 - kept), answers
    assert _dropped(registry, "queue_bytes_full") == 15 - kept
    assert writer.offer(_message("other", 7 * KIB, model="iris")) is None
    while writer.buffered:
        assert await writer.flush_once()
    await writer.poll_lengths(["digits", "iris"])
    assert writer.offer(_message("still-full", 7 * KIB)) == "queue_bytes_full"
    assert writer.offer(_message("small-fits", None)) is None  # a small entry still fits the bytes left
    entries = stream_entries(redis_client, "vai:stream:digits")
    redis_client.xdel("vai:stream:digits", *[entry_id for entry_id, _ in entries[:5]])  # explained and deleted
    await writer.poll_lengths(["digits"])
    assert writer.offer(_message("room-again", 7 * KIB)) is None


def test_an_event_whose_input_is_too_large_to_queue_is_accepted_and_monitored(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """The serving stack's event is kept (metrics, drift, labels): only its explanation is lost, and counted."""
    registry = CollectorRegistry()
    client = make_client(registry=registry, max_input_bytes=64 * KIB, sampling={"every_n": 1})
    raw = np.zeros(64 * KIB, dtype=np.float32).tobytes()  # 256 KiB: 341 KiB encoded
    big = {"shape": [64 * KIB], "dtype": "float32", "data": base64.b64encode(raw).decode()}
    small = {"shape": [4], "dtype": "float32", "data": base64.b64encode(bytes(16)).decode()}
    answer = client.post("/v1/events", json={"events": [event("big", input=big), event("small", input=small)]})
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 2 and answer.json()["rejected"] == []
    assert [sampled["request_id"] for sampled in answer.json()["sampled"]] == ["small"]
    assert registry.get_sample_value("vai_sample_dropped_total", {"model": "digits", "reason": "input_too_large"}) == 1
    wait_until(lambda: redis_client.xlen(keys.sample_stream("digits")) == 1, what="the small one queued")
    (_, fields), *_ = stream_entries(redis_client, keys.sample_stream("digits"))
    assert SampledEvent.decode(fields).request_id == "small"
