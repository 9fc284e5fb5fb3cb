"""A Redis outage does not count against the entries it held up; a real failure still does, and every dead letter's
explanation reads ``failed``; the lag is the wait in the stream. The real worker, the digits model, a real Redis
made to refuse writes (``maxmemory`` with ``noeviction``: ``OOM command not allowed``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from attribution_workers.main import build_runtimes, make_worker
from attribution_workers.settings import WorkerSettings
from attribution_workers.worker import AttributionWorker
from common import keys
from common.redis import connect, execute
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import hash_field, read_group, stream_entries, wait_until
from poison_net import POISON
from sampler.contract import InputTensor, SampledEvent
from sampler.explanations import ExplanationStore

STREAM = keys.sample_stream("digits")
DEAD = keys.dead_letter_stream("digits")
GROUP = keys.CONSUMER_GROUP


@pytest.fixture
def worker_settings(
    make_worker_settings: Callable[..., WorkerSettings], digits_path: Path
) -> Callable[..., WorkerSettings]:
    def make(model: dict[str, Any] | None = None, **overrides: Any) -> WorkerSettings:
        spec = model or {"torchscript": str(digits_path), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10}
        values: dict[str, Any] = {
            "models": {"digits": {"attribution": {"model": spec, "methods": ["saliency"], "fidelity_steps": 2}}},
            "worker_retry_after_ms": 50,
            "worker_max_deliveries": 2,
            "worker_consumer": "me",
        }
        return make_worker_settings(**(values | overrides))

    return make


def sampled(
    request_id: str, values: npt.NDArray[Any], predicted: int, *, timestamp: float | None = None
) -> SampledEvent:
    now = time.time()
    return SampledEvent(
        model="digits",
        model_version="v1",
        request_id=request_id,
        timestamp=now if timestamp is None else timestamp,
        received_at=now,
        reasons=("every_n",),
        predicted=predicted,
        confidence=0.9,
        margin=0.5,
        num_classes=10,
        input=InputTensor.of(np.ascontiguousarray(values, dtype=np.float32)),
    )


def status(client: redis.Redis, request_id: str) -> bytes | None:
    return hash_field(client, keys.explanation("digits", request_id), "status")


def settled(client: redis.Redis) -> bool:
    """Every entry ended: stored and deleted, or dead-lettered."""
    return client.xlen(STREAM) == 0 and client.xpending(STREAM, GROUP)["pending"] == 0


def times_delivered(client: redis.Redis) -> dict[bytes, int]:
    pending: list[dict[str, Any]] = client.xpending_range(STREAM, GROUP, min="-", max="+", count=100)
    return {item["message_id"]: int(item["times_delivered"]) for item in pending}


def idle_for(client: redis.Redis, ms: int) -> bool:
    pending: list[dict[str, Any]] = client.xpending_range(STREAM, GROUP, min="-", max="+", count=100)
    return bool(pending) and all(item["time_since_delivered"] > ms for item in pending)


def refuse_writes(pipe: redis.Redis) -> None:
    """Queue what makes Redis refuse every write that needs memory (``OOM``), as a full Redis does."""
    pipe.config_set("maxmemory-policy", "noeviction")
    pipe.config_set("maxmemory", 1)


@pytest.fixture
def outage(redis_client: redis.Redis) -> Iterator[Callable[[], None]]:
    """Call it to end the outage a test started with :func:`refuse_writes`; ended after the test in any case (the
    Redis server is the whole session's)."""
    before = redis_client.config_get("maxmemory*")
    limit, policy = str(before["maxmemory"]), str(before["maxmemory-policy"])

    def end() -> None:
        redis_client.config_set("maxmemory", limit)
        redis_client.config_set("maxmemory-policy", policy)

    yield end
    end()


async def refused_then_dead_lettered(
    worker: AttributionWorker,
    redis_client: redis.Redis,
    outage: Callable[[], None],
    after_refusal: Callable[[], None] = lambda: None,
) -> None:
    """Once the pending entry may be reclaimed, a step whose writes Redis refuses (out of memory) raises; then,
    ``after_refusal()`` checked and the outage over, steps until the entry is dead-lettered."""
    wait_until(lambda: idle_for(redis_client, 60), what="the entry idle long enough to be reclaimed")
    refuse_writes(redis_client)
    with pytest.raises(redis.RedisError, match=r"OOM|maxmemory"):
        await worker.step()
    after_refusal()
    outage()
    wait_until(lambda: idle_for(redis_client, 60), what="the entry idle long enough to be reclaimed")
    while not redis_client.xlen(DEAD):
        await worker.step()


def failures_logged(caplog: pytest.LogCaptureFixture) -> int:
    """Failed Redis rounds of the worker loop so far (the first is logged as a warning, the others at debug)."""
    return sum(
        "Redis unavailable" in r.getMessage() or "Redis still unavailable" in r.getMessage() for r in caplog.records
    )


class WorkerThread:
    """``AttributionWorker.run`` in a thread of its own, as ``vai-sidecar worker`` runs it, until :meth:`stop`."""

    def __init__(self, settings: WorkerSettings, registry: CollectorRegistry) -> None:
        self._runtimes = build_runtimes(settings)
        self._settings = settings
        self._registry = registry
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._main, name="worker", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        async def work() -> None:
            worker = make_worker(self._settings, self._runtimes, self._registry)
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._started.set()
            try:
                await worker.run(self._stop)
            finally:
                await worker.aclose()

        try:
            asyncio.run(work())
        except BaseException as error:  # re-raised by stop(), in the test's thread
            self._errors.append(error)
        finally:
            self._started.set()

    def stop(self) -> None:
        assert self._started.wait(timeout=60), "the worker did not start"
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the worker did not stop"
        if self._errors:
            raise self._errors[0]


@contextmanager
def running(settings: WorkerSettings, registry: CollectorRegistry) -> Iterator[WorkerThread]:
    worker = WorkerThread(settings, registry)
    try:
        yield worker
    finally:
        worker.stop()


def test_entries_reclaimed_while_redis_refuses_writes_are_explained_once_it_accepts_them(
    worker_settings: Callable[..., WorkerSettings],
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
    outage: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that died left three entries pending; Redis fills up as the running worker reclaims them. Each
    claim during the outage once counted a delivery, and after it they were dead-lettered untried."""
    caplog.set_level(logging.DEBUG, logger="attribution_workers.reconnect")
    images, labels = digits_split.test.features, digits_split.test.labels
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    registry = CollectorRegistry()
    with running(worker_settings(), registry):
        wait_until(
            lambda: registry.get_sample_value("vai_worker_redis_up") == 1,
            timeout_s=60,
            what="the worker's first round with Redis",
        )
        pipe = redis_client.pipeline(transaction=True)  # one step: the worker cannot take them before the outage
        for i in range(3):
            pipe.xadd(STREAM, sampled(f"img{i}", images[i], int(labels[i])).encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
        pipe.xreadgroup(GROUP, "gone", {STREAM: ">"})  # their first delivery, to a worker that died
        refuse_writes(pipe)
        pipe.execute()

        wait_until(lambda: failures_logged(caplog) >= 6, timeout_s=60, what="the worker retrying through the outage")
        assert [status(redis_client, f"img{i}") for i in range(3)] == [None] * 3
        assert set(times_delivered(redis_client).values()) == {1}, "the outage's claims were taken back"
        outage()

        wait_until(lambda: settled(redis_client), timeout_s=60, what="the three settled after the outage")
    assert redis_client.xlen(DEAD) == 0, stream_entries(redis_client, DEAD)[0][1][b"error"]
    assert [status(redis_client, f"img{i}") for i in range(3)] == [b"done"] * 3
    assert registry.get_sample_value("vai_dead_letters_total", {"model": "digits"}) == 0
    assert registry.get_sample_value("vai_worker_models", {"model": "digits"}) == 1  # it says what it explains
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_each_claim_a_refused_result_cost_is_taken_back(
    worker_settings: Callable[..., WorkerSettings],
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
    outage: Callable[[], None],
) -> None:
    """Step by step, with no pause between the outage's claims: the worker reads the entry and then reclaims it
    three times while Redis refuses its result; once Redis accepts writes it stores it (``max_deliveries`` 2)."""
    settings = worker_settings()

    async def scenario() -> None:
        worker = make_worker(settings, build_runtimes(settings), CollectorRegistry())
        try:
            await worker.ensure_groups()
            redis_client.xadd(STREAM, sampled("img0", digits_split.test.features[0], 0).encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
            refuse_writes(redis_client)
            for _ in range(4):  # its read, and three reclaims
                with pytest.raises(redis.RedisError, match=r"OOM|maxmemory"):
                    await worker.step()
                assert times_delivered(redis_client) != {}, "still pending"
                assert set(times_delivered(redis_client).values()) == {0}, "the delivery was taken back"
                wait_until(lambda: idle_for(redis_client, 60), what="the entry idle long enough to be reclaimed")
            outage()
            while not settled(redis_client):
                await worker.step()
        finally:
            await worker.aclose()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert redis_client.xlen(DEAD) == 0, stream_entries(redis_client, DEAD)[0][1][b"error"]
    assert status(redis_client, "img0") == b"done"


def test_an_entry_whose_worker_died_on_every_delivery_is_dead_lettered_and_reads_failed(
    worker_settings: Callable[..., WorkerSettings],
    make_client: Callable[..., TestClient],
    digits_split: DatasetSplit,
    redis_url: str,
    redis_client: redis.Redis,
    outage: Callable[[], None],
) -> None:
    """Queued as the sidecar queues it (a ``queued`` record, then the entry); delivered three times to workers that
    died on it. The worker dead-letters it; Redis refusing the record's write the first time leaves the entry
    pending, settled again once Redis accepts writes. The record once stayed ``queued`` for the retention."""
    settings = worker_settings()
    event = sampled("cursed", digits_split.test.features[0], 0)

    async def queue() -> None:
        client = connect(redis_url, timeout_s=5)
        try:
            pipe = client.pipeline(transaction=False)
            ExplanationStore(client, ttl_s=3600).mark_queued(pipe, event)
            pipe.xadd(STREAM, event.encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
            await execute(pipe)
        finally:
            await client.aclose()

    async def scenario() -> None:
        worker = make_worker(settings, build_runtimes(settings), CollectorRegistry())
        try:
            await worker.ensure_groups()
            await queue()
            assert status(redis_client, "cursed") == b"queued"
            ((_, ((entry_id, _),)),) = read_group(redis_client, GROUP, "died", STREAM)
            redis_client.xclaim(STREAM, GROUP, "died-again", 0, [entry_id])
            redis_client.xclaim(STREAM, GROUP, "died-once-more", 0, [entry_id])

            def still_pending() -> None:  # its record could not be written: pending, its delivery taken back
                assert redis_client.xlen(DEAD) == 0 and status(redis_client, "cursed") == b"queued"
                assert times_delivered(redis_client) == {entry_id: 3}

            await refused_then_dead_lettered(worker, redis_client, outage, still_pending)
        finally:
            await worker.aclose()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    ((_, dead),) = stream_entries(redis_client, DEAD)
    assert dead[b"error"] == b"no result after 4 deliveries"
    assert redis_client.xlen(STREAM) == 0
    record = make_client().get("/v1/explanations/digits/cursed").json()
    assert record["status"] == "failed", record
    assert record["error"] == "no result after 4 deliveries"


def test_an_input_that_fails_on_each_delivery_is_dead_lettered_though_an_outage_came_between(
    worker_settings: Callable[..., WorkerSettings],
    redis_client: redis.Redis,
    outage: Callable[[], None],
    tmp_path: Path,
) -> None:
    """Its first delivery fails on the input itself (counted); the second is refused by Redis (not counted); the
    third, its second real try, fails on the input again: dead-lettered after 2 deliveries, its record failed."""
    import poison_net

    weights = tmp_path / "poison.pt"
    torch.save(poison_net.build().state_dict(), weights)
    model = {"factory": "poison_net:build", "weights": str(weights), "input_shape": [64], "num_classes": 10}
    settings = worker_settings(model)
    values = np.random.default_rng(0).random(64).astype(np.float32)
    values[10] = POISON

    async def scenario() -> None:
        worker = make_worker(settings, build_runtimes(settings), CollectorRegistry())
        try:
            await worker.ensure_groups()
            redis_client.xadd(STREAM, sampled("poison", values, 1).encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
            await worker.step()  # fails on the input: pending for a retry, the record failed for now
            assert status(redis_client, "poison") == b"failed" and redis_client.xlen(DEAD) == 0
            await refused_then_dead_lettered(worker, redis_client, outage)
        finally:
            await worker.aclose()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    ((_, dead),) = stream_entries(redis_client, DEAD)
    assert dead[b"deliveries"] == b"2"
    assert b"poison input" in dead[b"error"] and dead[b"error"].endswith(b"(after 2 deliveries)")
    assert status(redis_client, "poison") == b"failed"
    detail = hash_field(redis_client, keys.explanation("digits", "poison"), "detail")
    assert detail is not None and b"poison input" in detail and b"(after 2 deliveries)" in detail


def test_the_lag_is_the_wait_in_the_stream_not_the_age_of_the_client_s_timestamp(
    worker_settings: Callable[..., WorkerSettings], digits_split: DatasetSplit, redis_client: redis.Redis
) -> None:
    """The client stamped the event 10 minutes ago (its clock, or a replay); it entered the stream 2 minutes ago
    by Redis's clock (the entry's id). The lag is those 2 minutes, and the test's own seconds."""
    seconds, _ = redis_client.time()
    entry_id = f"{(seconds - 120) * 1000}-0"
    event = sampled("late", digits_split.test.features[0], 0, timestamp=time.time() - 600)
    redis_client.xadd(STREAM, event.encode(), id=entry_id)  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
    registry = CollectorRegistry()
    settings = worker_settings()

    async def scenario() -> None:
        worker = make_worker(settings, build_runtimes(settings), registry)
        try:
            await worker.ensure_groups()
            while status(redis_client, "late") != b"done":
                await worker.step()
        finally:
            await worker.aclose()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert registry.get_sample_value("vai_explanation_lag_seconds_count", {"model": "digits"}) == 1
    waited = registry.get_sample_value("vai_explanation_lag_seconds_sum", {"model": "digits"})
    assert waited is not None and 120 <= waited < 300, waited
