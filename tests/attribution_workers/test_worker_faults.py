"""Entries and stored data that must fail alone: the real worker, the real digits model, a real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from attribution_workers.consumer import GroupConsumer
from attribution_workers.settings import WorkerSettings
from common import keys
from common.redis import connect
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import drain_worker, hash_field, stream_entries, wait_until
from sampler.contract import MESSAGE_FIELD, InputTensor, SampledEvent

STREAM = keys.sample_stream("digits")
DEAD = keys.dead_letter_stream("digits")


@pytest.fixture
def worker_settings(
    make_worker_settings: Callable[..., WorkerSettings], digits_path: Path
) -> Callable[..., WorkerSettings]:
    def make(**overrides: Any) -> WorkerSettings:
        spec = {"torchscript": str(digits_path), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10}
        values: dict[str, Any] = {
            "models": {"digits": {"attribution": {"model": spec, "methods": ["saliency"], "fidelity_steps": 2}}},
            "worker_retry_after_ms": 50,
            "worker_max_deliveries": 2,
        }
        return make_worker_settings(**(values | overrides))

    return make


def event(request_id: str, values: npt.NDArray[Any], predicted: int, **fields: Any) -> SampledEvent:
    now = time.time()
    body: dict[str, Any] = {
        "model": "digits",
        "model_version": "v1",
        "request_id": request_id,
        "timestamp": now,
        "received_at": now,
        "reasons": ("every_n",),
        "predicted": predicted,
        "confidence": 0.9,
        "margin": 0.5,
        "num_classes": 10,
        "input": InputTensor.of(np.ascontiguousarray(values, dtype=np.float32)),
    }
    return SampledEvent.model_validate(body | fields)


def add(client: redis.Redis, *events: SampledEvent) -> None:
    for item in events:
        client.xadd(STREAM, item.encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions


def add_raw(client: redis.Redis, item: SampledEvent, **fields: float) -> None:
    """``item`` with ``fields`` overridden as ``json.dumps`` writes them (``NaN``, ``Infinity``)."""
    body = json.loads(item.model_dump_json(exclude_none=True)) | fields
    client.xadd(STREAM, {MESSAGE_FIELD: json.dumps(body).encode()})


def status(client: redis.Redis, request_id: str, model: str = "digits") -> bytes | None:
    return hash_field(client, keys.explanation(model, request_id), "status")


def settled(client: redis.Redis) -> bool:
    return client.xlen(STREAM) == 0 and client.xpending(STREAM, keys.CONSUMER_GROUP)["pending"] == 0


def dead(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    """Dead-lettered entries by request id (from their message, when it decodes)."""
    found = {}
    for _, fields in stream_entries(client, DEAD):
        found[json.loads(fields[MESSAGE_FIELD])["request_id"].encode()] = fields  # json: NaN too
    return found


def counted(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_an_unreadable_sanity_figure_does_not_stop_the_worker(
    worker_settings: Callable[..., WorkerSettings],
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_client.hset(keys.sanity("digits"), "saliency", '{"similarity":"high","flagged":false}')
    images, labels = digits_split.test.features, digits_split.test.labels
    add(redis_client, *(event(f"img{i}", images[i], int(labels[i])) for i in range(3)))
    caplog.set_level(logging.WARNING)

    # one event a batch: the figure is read for each
    drain_worker(worker_settings(worker_batch_size=1), lambda: settled(redis_client))

    assert [status(redis_client, f"img{i}") for i in range(3)] == [b"done"] * 3
    assert redis_client.xlen(DEAD) == 0
    warnings = [r.getMessage() for r in caplog.records if "unreadable stored saliency" in r.getMessage()]
    assert len(warnings) == 1, warnings


def test_non_finite_numbers_are_dead_lettered_at_once_and_their_neighbours_stored(
    worker_settings: Callable[..., WorkerSettings],
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
) -> None:
    images, labels = digits_split.test.features, digits_split.test.labels
    good = [event(f"good{i}", images[i], int(labels[i])) for i in range(3)]
    add(redis_client, good[0])
    add_raw(redis_client, event("nan-time", images[3], int(labels[3])), timestamp=float("nan"))
    add(redis_client, good[1])
    add_raw(redis_client, event("inf-time", images[4], int(labels[4])), timestamp=float("inf"))
    add_raw(redis_client, event("nan-confidence", images[5], int(labels[5])), confidence=float("nan"))
    add(redis_client, good[2])
    registry = CollectorRegistry()

    drain_worker(worker_settings(), lambda: settled(redis_client), registry=registry)

    assert [status(redis_client, f"good{i}") for i in range(3)] == [b"done"] * 3
    found = dead(redis_client)
    assert sorted(found) == [b"inf-time", b"nan-confidence", b"nan-time"]
    for request_id, field in (
        (b"nan-time", "timestamp"),
        (b"inf-time", "timestamp"),
        (b"nan-confidence", "confidence"),
    ):
        assert found[request_id][b"deliveries"] == b"1"
        assert f"undecodable entry: not a version-1 sampled event: {field}: Input should be a finite number" in (
            found[request_id][b"error"].decode()
        )
        assert status(redis_client, request_id.decode()) is None, "nothing stored for it"


def test_a_result_redis_refuses_fails_alone_and_is_no_outage(
    worker_settings: Callable[..., WorkerSettings],
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
) -> None:
    """One event's index key holds the wrong type: its save fails on every delivery; the others are stored."""
    images = digits_split.test.features
    redis_client.set(keys.explanation_index("digits", "predicted", "9"), "not a sorted set")
    add(redis_client, event("a", images[0], 1), event("refused", images[1], 9), event("b", images[2], 2))
    registry = CollectorRegistry()

    drain_worker(
        worker_settings(), lambda: settled(redis_client), registry=registry
    )  # a step raising (an "outage") fails it

    assert status(redis_client, "a") == status(redis_client, "b") == b"done"
    assert status(redis_client, "refused") is None, "a failed save writes nothing"
    (fields,) = dead(redis_client).values()
    assert b"WRONGTYPE" in fields[b"error"] and fields[b"deliveries"] == b"2"
    assert counted(registry, "vai_worker_errors_total", model="digits") == 2


def test_non_finite_input_is_dead_lettered_at_once(
    worker_settings: Callable[..., WorkerSettings], digits_split: DatasetSplit, redis_client: redis.Redis
) -> None:
    image = digits_split.test.features[0].copy()
    image.reshape(-1)[[3, 7]] = [np.nan, np.inf]
    add(redis_client, event("odd", image, 1))
    drain_worker(worker_settings(worker_max_deliveries=3), lambda: settled(redis_client))
    fields = dead(redis_client)[b"odd"]
    assert fields[b"deliveries"] == b"1"
    assert b"input has 2 non-finite values (NaN or infinity) of 64" in fields[b"error"]


def test_an_input_is_explained_in_the_model_s_shape_or_flat_and_refused_in_another_of_as_many_values(
    worker_settings: Callable[..., WorkerSettings], digits_split: DatasetSplit, redis_client: redis.Redis
) -> None:
    """Reshaping by the number of values alone would explain a channels-last image of a channels-first model
    scrambled; events of a model with another number of classes are another model's."""
    image = digits_split.test.features[0].reshape(8, 8)
    add(
        redis_client,
        event("exact", image.reshape(1, 8, 8), 1),
        event("squeezed", image, 1),
        event("trailing-one", image.reshape(8, 8, 1), 1),
        event("flat", image.reshape(64), 1),
        event("other-layout", image.reshape(4, 16), 1),
        event("three-classes", image.reshape(1, 8, 8), 1, num_classes=3),
    )
    drain_worker(worker_settings(), lambda: settled(redis_client))
    assert [status(redis_client, name) for name in ("exact", "squeezed", "trailing-one", "flat")] == [b"done"] * 4
    refused = dead(redis_client)
    assert set(refused) == {b"other-layout", b"three-classes"}
    assert b"input of shape [4, 16] does not fit the model's [1, 8, 8]" in refused[b"other-layout"][b"error"]
    assert b"summarised 3 scores, but the model has 10 classes" in refused[b"three-classes"][b"error"]


def test_an_entry_of_another_model_is_dead_lettered_unexplained(
    worker_settings: Callable[..., WorkerSettings], digits_split: DatasetSplit, redis_client: redis.Redis
) -> None:
    add(redis_client, event("intruder", digits_split.test.features[0], 1, model="victim"))
    drain_worker(worker_settings(), lambda: settled(redis_client))
    fields = dead(redis_client)[b"intruder"]
    assert fields[b"error"] == b"entry of model 'victim' in the stream of 'digits'"
    assert status(redis_client, "intruder", "victim") is None
    assert status(redis_client, "intruder") is None


def test_the_dead_letter_stream_is_capped_and_expires(
    worker_settings: Callable[..., WorkerSettings], redis_client: redis.Redis
) -> None:
    count = 400
    pipe = redis_client.pipeline()
    for i in range(count):
        pipe.xadd(STREAM, {MESSAGE_FIELD: f"not json {i}".encode()})
    pipe.execute()
    registry = CollectorRegistry()
    settings = worker_settings(worker_dead_letter_max_entries=10, worker_batch_size=64, explanation_ttl_s=600)

    drain_worker(settings, lambda: settled(redis_client), registry=registry)

    kept = redis_client.xlen(DEAD)
    assert kept < count // 2, "trimmed (MAXLEN ~ drops whole stream nodes of up to 100 entries)"
    assert counted(registry, "vai_dead_letters_trimmed_total", model="digits") == count - kept
    assert counted(registry, "vai_dead_letters_total", model="digits") == count
    assert 0 < redis_client.ttl(DEAD) <= 600
    _, newest = stream_entries(redis_client, DEAD)[-1]
    assert newest[MESSAGE_FIELD] == f"not json {count - 1}".encode(), "the newest are kept"


def test_a_large_input_is_not_copied_into_the_dead_letter_stream(
    worker_settings: Callable[..., WorkerSettings], redis_client: redis.Redis
) -> None:
    huge = event("huge", np.ones(4096, dtype=np.float32), 1)  # the wrong shape: dead-lettered at once
    add(redis_client, huge)
    drain_worker(worker_settings(worker_dead_letter_max_input_bytes=2048), lambda: settled(redis_client))
    fields = dead(redis_client)[b"huge"]
    assert b"does not fit the model's [1, 8, 8]" in fields[b"error"]
    assert int(fields[b"m_bytes"]) == len(huge.encode()[MESSAGE_FIELD]) > 2048
    kept = orjson.loads(fields[MESSAGE_FIELD])
    assert "input" not in kept and kept == huge.model_dump(mode="json", exclude_none=True, exclude={"input"})


def test_consumers_of_workers_long_gone_are_forgotten(redis_url: str, redis_client: redis.Redis) -> None:
    """Each worker that ever ran leaves a consumer in the group; one that holds nothing pending and has not read
    for the threshold is deleted, one with pending entries (to be reclaimed) and our own stay."""
    redis_client.xgroup_create(STREAM, keys.CONSUMER_GROUP, id="0", mkstream=True)
    redis_client.xadd(STREAM, {"m": b"x"})
    redis_client.xreadgroup(keys.CONSUMER_GROUP, "gone-with-work", {STREAM: ">"}, count=1)
    redis_client.xgroup_createconsumer(STREAM, keys.CONSUMER_GROUP, "gone-idle")
    redis_client.xgroup_createconsumer(STREAM, keys.CONSUMER_GROUP, "me")  # ours: idle too, but kept

    async def forget(idle_ms: int) -> int:
        client = connect(redis_url, timeout_s=2.0)
        consumer = GroupConsumer(
            client, [STREAM], consumer="me", batch_size=1, block_ms=10, retry_after_ms=50, max_deliveries=2
        )
        try:
            return await consumer.forget_gone_consumers(idle_ms=idle_ms)
        finally:
            await client.aclose()

    assert asyncio.run(forget(idle_ms=3_600_000)) == 0  # none gone that long
    wait_until(
        lambda: all(
            c["idle"] > 20 for c in redis_client.xinfo_consumers(STREAM, keys.CONSUMER_GROUP) if c["name"] != b"me"
        ),
        what="the others idle for 20 ms",
    )
    assert asyncio.run(forget(idle_ms=20)) == 1
    names = {c["name"] for c in redis_client.xinfo_consumers(STREAM, keys.CONSUMER_GROUP)}
    assert names == {b"gone-with-work", b"me"}


def test_an_entry_whose_dead_letter_cannot_be_written_stays_pending(redis_url: str, redis_client: redis.Redis) -> None:
    """A transaction does not stop at a failing command: the entry was once deleted though its copy failed."""
    redis_client.xgroup_create(STREAM, keys.CONSUMER_GROUP, id="0", mkstream=True)
    entry = redis_client.xadd(STREAM, {"m": b"not a sampled event"})
    redis_client.set(DEAD, b"a string where the dead-letter stream goes")

    async def move() -> None:
        client = connect(redis_url, timeout_s=2.0)
        consumer = GroupConsumer(
            client, [STREAM], consumer="me", batch_size=1, block_ms=10, retry_after_ms=50, max_deliveries=2
        )
        try:
            (delivery,) = (await consumer.read_new())[STREAM]
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                await consumer.dead_letter("digits", STREAM, delivery, "undecodable")
        finally:
            await client.aclose()

    asyncio.run(move())
    assert [entry_id for entry_id, _ in redis_client.xrange(STREAM) or []] == [entry]
    assert redis_client.xpending(STREAM, keys.CONSUMER_GROUP)["pending"] == 1


def test_claimed_entries_keep_their_delivery_counts_between_other_workers_entries(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Idle entries of a dead worker sit between fresh entries another worker holds; each claimed entry gets its
    own delivery count. A lookup over the claimed range across all consumers, with a count limit, once missed
    the later ones, which then counted as at ``max_deliveries`` and were dead-lettered after one failure."""
    redis_client.xgroup_create(STREAM, keys.CONSUMER_GROUP, id="0", mkstream=True)
    ids: list[Any] = [redis_client.xadd(STREAM, {"m": str(i).encode()}) for i in range(100)]
    redis_client.xreadgroup(keys.CONSUMER_GROUP, "busy", {STREAM: ">"}, count=100)  # fresh, not to be claimed
    idle = ids[::10]  # every tenth entry belongs to a worker gone an hour ago, delivered 3 times so far
    redis_client.xclaim(STREAM, keys.CONSUMER_GROUP, "gone", 0, idle, idle=3_600_000, retrycount=3)

    async def claim() -> list[tuple[bytes, int]]:
        client = connect(redis_url, timeout_s=2.0)
        consumer = GroupConsumer(
            client, [STREAM], consumer="me", batch_size=10, block_ms=10, retry_after_ms=60_000, max_deliveries=10
        )
        try:
            return [(d.entry_id, d.deliveries) for d in await consumer.claim_idle(STREAM)]
        finally:
            await client.aclose()

    assert asyncio.run(claim()) == [(entry_id, 4) for entry_id in idle]  # 3, and this claim


def test_idle_entries_behind_more_fresh_ones_than_one_claim_looks_at_are_claimed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """``XAUTOCLAIM`` looks at ten times its count of pending entries. A dead worker's entries behind more fresh
    ones than that (live workers' batches in flight) were never reached while every claim started at the head;
    going on from the returned cursor reaches them within a few steps, and goes round again after them."""
    redis_client.xgroup_create(STREAM, keys.CONSUMER_GROUP, id="0", mkstream=True)
    for i in range(200):
        redis_client.xadd(STREAM, {"m": str(i).encode()})
    redis_client.xreadgroup(keys.CONSUMER_GROUP, "busy", {STREAM: ">"}, count=200)  # fresh, not to be claimed
    idle: list[Any] = [redis_client.xadd(STREAM, {"m": b"late"}) for _ in range(3)]
    redis_client.xreadgroup(keys.CONSUMER_GROUP, "gone", {STREAM: ">"}, count=3)
    redis_client.xclaim(STREAM, keys.CONSUMER_GROUP, "gone", 0, idle, idle=3_600_000)

    async def claims() -> list[list[bytes]]:
        client = connect(redis_url, timeout_s=2.0)
        consumer = GroupConsumer(
            client, [STREAM], consumer="me", batch_size=2, block_ms=10, retry_after_ms=60_000, max_deliveries=10
        )
        try:
            return [[d.entry_id for d in await consumer.claim_idle(STREAM)] for _ in range(14)]
        finally:
            await client.aclose()

    found = asyncio.run(claims())
    assert sorted(entry_id for claim in found for entry_id in claim) == sorted(idle)
    assert found[:9] == [[]] * 9, "the first nine claims look at the 180 fresh entries at the head"
    assert redis_client.xpending(STREAM, keys.CONSUMER_GROUP)["consumers"] == [
        {"name": b"busy", "pending": 200},
        {"name": b"me", "pending": 3},
    ]


def test_a_model_s_failure_counters_start_at_zero_so_the_first_dead_letter_alerts(
    worker_settings: Callable[..., WorkerSettings], redis_client: redis.Redis
) -> None:
    """A counter that first appears at 1 is invisible to increase(): VaiDeadLetters would miss the first."""
    registry = CollectorRegistry()
    drain_worker(worker_settings(), lambda: settled(redis_client), registry=registry)
    for name in ("vai_dead_letters_total", "vai_dead_letters_trimmed_total", "vai_worker_errors_total"):
        assert registry.get_sample_value(name, {"model": "digits"}) == 0.0, name  # present, not absent
