"""Entries in hand are kept from looking idle to the other workers, until the deadline of the work on them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry
from small_models import sampled_digit

from attribution_workers.batch_result import BatchResult
from attribution_workers.bounded import WorkTimedOut
from attribution_workers.config import AttributionConfig
from attribution_workers.consumer import GroupConsumer
from attribution_workers.holding import EntryKeeper
from attribution_workers.loader import ModelSpec
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.worker import AttributionWorker
from common import keys
from common.redis import connect
from demo.models import digits
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent
from sampler.explanation_records import SanityFigure
from sampler.explanations import ExplanationStore
from sampler.layers import LayerBaselineRecord

STREAM = keys.sample_stream("digits")
RETRY_AFTER_MS = 150


class SlowRuntime(ModelRuntime):
    """The digits runtime, holding each batch until ``release`` is set (a slow or hung batch)."""

    release: threading.Event | None = None

    def explain(
        self,
        events: Sequence[SampledEvent],
        sanity: Mapping[str, SanityFigure] | None = None,
        baselines: Mapping[str, LayerBaselineRecord] | None = None,
    ) -> BatchResult:
        if self.release is not None:
            self.release.wait()
        return super().explain(events, sanity, baselines)


def runtime(digits_path: Path) -> SlowRuntime:
    spec = ModelSpec(torchscript=digits_path, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES)
    return SlowRuntime("digits", AttributionConfig(model=spec, methods=("saliency",)), device="cpu")


def make_worker(
    redis_url: str,
    consumer: str,
    model: ModelRuntime,
    registry: CollectorRegistry,
    *,
    job_timeout_s: float = 30.0,
    max_deliveries: int = 3,
) -> AttributionWorker:
    client = connect(redis_url, timeout_s=5)
    return AttributionWorker(
        client,
        ExplanationStore(client, ttl_s=3600),
        {"digits": model},
        WorkerMetrics(registry),
        consumer=consumer,
        block_ms=10,
        retry_after_ms=RETRY_AFTER_MS,
        job_timeout_s=job_timeout_s,
        max_deliveries=max_deliveries,
    )


def post(client: redis.Redis, split: DatasetSplit, *request_ids: str) -> None:
    for index, request_id in enumerate(request_ids):
        image, label = split.test.features[index], int(split.test.labels[index])
        client.xadd(STREAM, sampled_digit(request_id, image, predicted=label).encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions


def pending_on(client: redis.Redis, consumer: str) -> list[int]:
    """The delivery counts of the entries pending on ``consumer``."""
    found = cast(
        list[dict[str, Any]],
        client.xpending_range(STREAM, keys.CONSUMER_GROUP, min="-", max="+", count=100, consumername=consumer),
    )
    return [int(item["times_delivered"]) for item in found]


def counted(registry: CollectorRegistry, status: str) -> float:
    labels = {"model": "digits", "method": "saliency", "status": status}
    return registry.get_sample_value("vai_explanations_total", labels) or 0.0


def test_a_batch_slower_than_retry_after_is_not_taken_over_and_ends_once(
    redis_url: str, redis_client: redis.Redis, digits_path: Path, digits_split: DatasetSplit
) -> None:
    """Nothing refreshed the idle time of a batch in hand: a second worker's ``XAUTOCLAIM`` took over any batch
    slower than ``retry_after_ms`` (72 of 200 entries explained twice with two workers), each takeover counting a
    delivery. Here a batch takes eight times ``retry_after_ms`` while another worker keeps claiming."""
    model = runtime(digits_path)
    model.release = threading.Event()  # opened once the batch has been in hand for 8 x retry_after_ms
    slow_s = 8 * RETRY_AFTER_MS / 1000
    registries = {name: CollectorRegistry() for name in ("xA", "xB")}
    workers = {name: make_worker(redis_url, name, model, registries[name], max_deliveries=2) for name in registries}
    requests = [f"r{i}" for i in range(4)]

    async def scenario() -> list[int]:
        try:
            await workers["xA"].ensure_groups()
            post(redis_client, digits_split, *requests)
            slow = asyncio.create_task(workers["xA"].step())
            began = time.monotonic()
            taken_by_b: list[int] = []
            while not slow.done():
                taken_by_b.append(await workers["xB"].step())
                if time.monotonic() - began >= slow_s and len(taken_by_b) > 10:
                    model.release.set()  # type: ignore[union-attr]  # set above
                await asyncio.sleep(0.02)
                if not slow.done():
                    assert set(pending_on(redis_client, "xA")) <= {1}, "no delivery counted"
            assert await slow == len(requests)
            return taken_by_b
        finally:
            model.release.set()  # type: ignore[union-attr]  # never left holding a thread
            for worker in workers.values():
                await worker.aclose()

    taken_by_b = asyncio.run(asyncio.wait_for(scenario(), timeout=60))

    assert len(taken_by_b) > 10 and not any(taken_by_b), "the other worker kept claiming, and took nothing"
    assert counted(registries["xA"], "ok") == len(requests)
    assert sum(counted(r, "duplicate") for r in registries.values()) == 0
    assert redis_client.xlen(STREAM) == 0 and redis_client.xpending(STREAM, keys.CONSUMER_GROUP)["pending"] == 0


def test_a_hung_batch_s_entries_go_to_another_worker_once_it_timed_out(
    redis_url: str, redis_client: redis.Redis, digits_path: Path, digits_split: DatasetSplit
) -> None:
    """Until its deadline a hung batch is kept like any other; after it, the worker ends (``WorkTimedOut``) and its
    entry comes back to the fleet ``retry_after_ms`` later, with the deliveries it really had."""
    hung, healthy = runtime(digits_path), runtime(digits_path)
    hung.release = threading.Event()
    registries = {name: CollectorRegistry() for name in ("xA", "xB")}
    first = make_worker(redis_url, "xA", hung, registries["xA"], job_timeout_s=1.0)
    second = make_worker(redis_url, "xB", healthy, registries["xB"], job_timeout_s=30.0)

    async def scenario() -> list[int]:
        try:
            await first.ensure_groups()
            post(redis_client, digits_split, "stuck")
            stuck = asyncio.create_task(first.step())
            taken_by_b: list[int] = []
            while not stuck.done():
                taken_by_b.append(await second.step())
                await asyncio.sleep(0.02)
            with pytest.raises(WorkTimedOut):
                await stuck
            assert redis_client.xlen(STREAM) == 1, "left pending, to be reclaimed"
            deadline = time.monotonic() + 10
            while not await second.step():
                assert time.monotonic() < deadline, "the hung batch's entry never came back"
            return taken_by_b
        finally:
            hung.release.set()  # type: ignore[union-attr]  # set above
            await first.aclose()
            await second.aclose()

    taken_by_b = asyncio.run(asyncio.wait_for(scenario(), timeout=60))

    assert not any(taken_by_b), "not taken over while it was within its deadline"
    assert counted(registries["xB"], "ok") == 1 and counted(registries["xB"], "duplicate") == 0
    assert redis_client.xlen(STREAM) == 0


def test_the_keeper_stops_at_the_work_s_deadline_and_never_takes_another_worker_s_entry(
    redis_url: str, redis_client: redis.Redis, digits_split: DatasetSplit
) -> None:
    """A worker whose work hangs on and on (its process not ended) must not keep its entries for ever: the
    refreshing stops ``job_timeout_s`` after the work began. And it refreshes only what is still its own."""
    post(redis_client, digits_split, "held", "stolen")

    async def scenario() -> tuple[float, int, int]:
        client = connect(redis_url, timeout_s=5)
        ours, theirs = (
            GroupConsumer(
                client,
                [STREAM],
                consumer=name,
                batch_size=16,
                block_ms=10,
                retry_after_ms=RETRY_AFTER_MS,
                max_deliveries=3,
            )
            for name in ("xA", "xB")
        )
        keeper = EntryKeeper(ours, retry_after_ms=RETRY_AFTER_MS, job_timeout_s=0.8)
        try:
            await ours.ensure_groups()
            held = (await ours.read_new())[STREAM]
            stolen = held[1].entry_id
            redis_client.xclaim(STREAM, keys.CONSUMER_GROUP, "xC", 0, [stolen])  # another worker took it
            async with keeper.keeping():
                keeper.hold(STREAM, held)
                keeper.working()
                began = time.monotonic()
                assert await keeper.refresh_due() == 1, "only the entry still its own"
                assert pending_on(redis_client, "xC") == [2], "the other's entry left with it, its count untouched"
                redis_client.xack(STREAM, keys.CONSUMER_GROUP, stolen)  # which settles it
                while not (claimed := await theirs.claim_idle(STREAM)):
                    await asyncio.sleep(0.02)
                waited_s = time.monotonic() - began
            (delivery,) = claimed
            return waited_s, delivery.deliveries, len(keeper.held)
        finally:
            await client.aclose()

    waited_s, deliveries, still_held = asyncio.run(asyncio.wait_for(scenario(), timeout=30))

    assert 0.8 <= waited_s < 0.8 + 2.0, waited_s
    assert deliveries == 2, "its read and this claim: refreshing counted none"
    assert still_held == 0, "nothing is held once the step is over"
