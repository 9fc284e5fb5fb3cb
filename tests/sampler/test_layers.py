"""The stored activation-shift baseline on a real Redis: the first stored wins, unreadable records are skipped, and
layer reports of older workers (without the baseline's origin) stay readable."""

from __future__ import annotations

import asyncio

import numpy as np
import redis

from common import keys
from common.codec import EncodedArray
from common.redis import connect
from sampler.layers import BASELINE_TTL_S, LayerBaseline, LayerBaselineRecord, LayerBaselineStore, LayerHealthReport


def _record(worker: str) -> LayerBaselineRecord:
    mean, std = np.linspace(0.0, 1.0, 4), np.full(4, 0.5)
    layer = LayerBaseline(name="conv.0", units=4, mean=EncodedArray.of(mean), std=EncodedArray.of(std), eps=0.05)
    return LayerBaselineRecord(model_digest="d1", window=8, worker=worker, taken_at=10.0, layers=[layer])


def test_the_first_stored_baseline_wins_and_expires_late(redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario() -> tuple[bool, bool, dict[str, LayerBaselineRecord]]:
        client = connect(redis_url, timeout_s=5)
        store = LayerBaselineStore(client)
        try:
            first = await store.store("digits", "v1", _record("a"))
            second = await store.store("digits", "v1", _record("b"))
            return first, second, await store.fetch("digits", ["v1", "v2"], "d1")
        finally:
            await client.aclose()

    first, second, found = asyncio.run(scenario())

    assert (first, second) == (True, False)
    assert list(found) == ["v1"] and found["v1"].worker == "a"
    arrays = found["v1"].layers[0].arrays()
    assert arrays is not None and np.array_equal(arrays[0], np.linspace(0.0, 1.0, 4))
    ttl = int(redis_client.ttl(keys.layer_baseline("digits", "v1", "d1")))
    assert BASELINE_TTL_S - 60 < ttl <= BASELINE_TTL_S


def test_an_unreadable_baseline_is_skipped_not_raised(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.set(keys.layer_baseline("digits", "old", "d1"), b'{"v": 0, "mu": [1.0]}')
    redis_client.set(keys.layer_baseline("digits", "bad", "d1"), b"{not json")

    async def scenario() -> dict[str, LayerBaselineRecord]:
        client = connect(redis_url, timeout_s=5)
        try:
            await LayerBaselineStore(client).store("digits", "v1", _record("a"))
            return await LayerBaselineStore(client).fetch("digits", ["old", "bad", "v1"], "d1")
        finally:
            await client.aclose()

    assert list(asyncio.run(scenario())) == ["v1"]


def test_a_layer_baseline_whose_arrays_do_not_fit_its_units_has_none() -> None:
    record = _record("a")
    wrong = record.layers[0].model_copy(update={"units": 5})
    assert wrong.arrays() is None


def test_a_report_of_an_older_worker_reads_without_the_baselines_origin() -> None:
    old = '{"worker": "w", "version": "v1", "samples": 3, "window": 3, "updated_at": 1.0, "layers": []}'
    report = LayerHealthReport.model_validate_json(old)
    assert report.baseline == "first_window" and not report.baseline_stored
    assert report.baseline_worker is None and report.baseline_taken_at is None
