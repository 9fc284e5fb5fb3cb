"""The activation-shift baseline is shared through a real Redis: the first worker to complete one stores it, and a
worker started later (a restart, another replica) adopts it instead of re-basing the shift on the traffic it starts
on. Real digits CNN (eager: hooks reach every layer), real demo corruptions."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from small_models import eager_digits, sampled_digit

from attribution_workers.config import AttributionConfig
from attribution_workers.inspection_health import HealthSnapshot
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.upkeep import BatchUpkeep
from common import keys
from common.codec import EncodedArray
from common.redis import connect
from demo.corruptions import corrupt
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent
from sampler.explanations import ExplanationStore
from sampler.layers import LayerBaselineRecord, LayerBaselineStore, LayerHealthReport, LayerHealthStore

K = 32
"""``inspect_window``: the baseline completes after K inputs."""
BATCH = 16


def _config(digits_path: Path) -> AttributionConfig:
    return AttributionConfig.model_validate(
        {
            "model": eager_digits(digits_path),
            "methods": ["saliency"],
            "fidelity_steps": 4,
            "fidelity_random_orders": 1,
            "inspect_window": K,
        }
    )


def _events(images: NDArray[np.float32], prefix: str) -> list[SampledEvent]:
    return [sampled_digit(f"{prefix}{row}", image) for row, image in enumerate(images)]


class Worker:
    """A runtime with the upkeep the attribution worker runs around each batch, on a real Redis."""

    def __init__(self, name: str, config: AttributionConfig, redis_url: str) -> None:
        self.client = connect(redis_url, timeout_s=5)
        self.runtime = ModelRuntime("digits", config, device="cpu")
        self.upkeep = BatchUpkeep(
            ExplanationStore(self.client, ttl_s=3600),
            LayerHealthStore(self.client),
            WorkerMetrics(CollectorRegistry()),
            baselines=LayerBaselineStore(self.client),
            worker=name,
            job_timeout_s=60,
        )

    async def feed(self, images: NDArray[np.float32], prefix: str) -> HealthSnapshot:
        snapshot = None
        for start in range(0, len(images), BATCH):
            batch = _events(images[start : start + BATCH], f"{prefix}{start}-")
            baselines = await self.upkeep.stored_baselines("digits", self.runtime, batch)
            result = self.runtime.explain(batch, {}, baselines)
            await self.upkeep.after_batch("digits", self.runtime, result)
            snapshot = result.layer_health[0]
        assert snapshot is not None
        return snapshot


def _shift(snapshot: HealthSnapshot) -> dict[str, float | None]:
    return {layer.name: layer.activation_shift for layer in snapshot.layers if layer.name.startswith("conv")}


@pytest.fixture(scope="module")
def clean(digits_split: DatasetSplit) -> NDArray[np.float32]:
    return np.asarray(digits_split.test.features[: 2 * K], dtype=np.float32)


@pytest.fixture(scope="module")
def drifted(digits_split: DatasetSplit) -> NDArray[np.float32]:
    images, _ = corrupt(np.asarray(digits_split.test.features[200 : 200 + 2 * K], dtype=np.float32), seed=7)
    return np.asarray(images, dtype=np.float32)


def test_a_worker_started_during_drift_measures_the_shift_against_the_stored_baseline(
    redis_url: str, digits_path: Path, clean: NDArray[np.float32], drifted: NDArray[np.float32]
) -> None:
    """A takes its baseline on clean digits and stores it; B, started while the traffic is drifted, adopts it: its
    shift after K drifted inputs is A's, not the low shift of C, which re-based its own baseline on drifted inputs."""
    config = _config(digits_path)

    async def scenario() -> tuple[HealthSnapshot, HealthSnapshot, list[LayerHealthReport], LayerBaselineRecord]:
        a, b = Worker("a", config, redis_url), Worker("b", config, redis_url)
        try:
            await a.feed(clean[:K], "a-clean")
            on_a = await a.feed(drifted[:K], "a-drift")
            on_b = await b.feed(drifted[:K], "b-drift")  # B's first inputs: drifted
            stored = await LayerBaselineStore(b.client).fetch("digits", ["v1"], b.runtime.model.digest)
            return on_a, on_b, await LayerHealthStore(b.client).reports("digits"), stored["v1"]
        finally:
            await a.client.aclose()
            await b.client.aclose()

    on_a, on_b, reports, record = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    c = ModelRuntime("digits", config, device="cpu")  # a worker on its own: its baseline is drifted traffic
    for start in range(0, 2 * K, BATCH):
        on_c = c.explain(_events(drifted[start : start + BATCH], f"c{start}-")).layer_health[0]

    assert record.worker == "a" and record.window == K and record.model_digest == c.model.digest
    shift_a, shift_b, shift_c = _shift(on_a), _shift(on_b), _shift(on_c)
    assert None not in shift_a.values() and None not in shift_c.values()
    assert shift_b == pytest.approx(shift_a, rel=1e-6)  # same baseline, same recent inputs
    assert np.mean(list(shift_c.values())) < 0.6 * np.mean(list(shift_a.values()))  # type: ignore[arg-type]
    by_worker = {report.worker: report for report in reports}
    assert by_worker["b"].baseline_stored and by_worker["b"].baseline_worker == "a"
    assert by_worker["b"].baseline_taken_at == record.taken_at
    assert by_worker["a"].baseline_stored and by_worker["a"].baseline_worker == "a"


def test_a_baseline_stored_by_other_weights_is_not_adopted(
    redis_url: str, digits_path: Path, clean: NDArray[np.float32], drifted: NDArray[np.float32]
) -> None:
    """A baseline of other weights under the same version name measures nothing here: the worker keeps its own
    (shift after 2K inputs, not K) and stores it for the workers of its weights, instead of failing SET NX on the
    other weights' record after every batch."""
    config = _config(digits_path)

    async def scenario() -> tuple[HealthSnapshot, HealthSnapshot]:
        a, b = Worker("a", config, redis_url), Worker("b", config, redis_url)
        try:
            await a.feed(clean[:K], "a-clean")
            store = LayerBaselineStore(a.client)
            digest = a.runtime.model.digest
            record = (await store.fetch("digits", ["v1"], digest))["v1"]
            await a.client.delete(keys.layer_baseline("digits", "v1", digest))
            assert await store.store("digits", "v1", record.model_copy(update={"model_digest": "0123456789abcdef"}))
            after_k = await b.feed(drifted[:K], "b-drift")
            after_2k = await b.feed(drifted[K:], "b-more")
            stored = await store.fetch("digits", ["v1"], digest)
            assert stored["v1"].worker == "b"  # stored for the workers of these weights
            foreign = await store.fetch("digits", ["v1"], "0123456789abcdef")
            assert foreign["v1"].worker == "a"  # the other weights' record is left alone
            return after_k, after_2k
        finally:
            await a.client.aclose()
            await b.client.aclose()

    after_k, after_2k = asyncio.run(asyncio.wait_for(scenario(), timeout=120))

    assert set(_shift(after_k).values()) == {None} and not after_k.baseline_stored
    assert None not in _shift(after_2k).values() and after_2k.baseline_worker == "b"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b'{"v": 0, "mu": [0.1], "sigma": [1.0]}', id="older-format"),
        pytest.param(None, id="undecodable-arrays"),
    ],
)
def test_an_unreadable_stored_baseline_is_ignored(
    redis_url: str, digits_path: Path, clean: NDArray[np.float32], body: bytes | None
) -> None:
    """A record the worker cannot read (damaged, another format, arrays that do not decode) is no baseline: the
    worker keeps its own, and its batches are explained."""
    config = _config(digits_path)

    async def scenario() -> HealthSnapshot:
        b = Worker("b", config, redis_url)
        key = keys.layer_baseline("digits", "v1", b.runtime.model.digest)
        try:
            if body is None:  # a readable record whose arrays are not base64
                junk = EncodedArray(shape=(8,), dtype="float64", data="!!")
                layers = [{"name": "conv.0", "units": 8, "mean": junk, "std": junk, "eps": 0.1}]
                record = LayerBaselineRecord.model_validate(
                    {
                        "model_digest": b.runtime.model.digest,
                        "window": K,
                        "worker": "x",
                        "taken_at": 1.0,
                        "layers": layers,
                    }
                )
                await b.client.set(key, record.model_dump_json())
            else:
                await b.client.set(key, body)
            return await b.feed(clean[: 2 * K], "b")
        finally:
            await b.client.aclose()

    snapshot = asyncio.run(asyncio.wait_for(scenario(), timeout=120))

    assert snapshot.samples == 2 * K and not snapshot.baseline_stored
    assert None not in _shift(snapshot).values()  # its own baseline: shown after 2K inputs


def test_redis_down_fails_the_fetch_as_an_outage_and_a_failed_store_is_retried_after_the_next_batch(
    redis_url: str, digits_path: Path, clean: NDArray[np.float32]
) -> None:
    """Reading the stored baselines is part of the batch: unreadable, it is an outage (the worker waits, entries
    pending). Storing one comes after the batch's results: when it fails, the results and the layer report stand, and
    the baseline is stored after the next batch."""
    config = _config(digits_path)
    with socket.socket() as probe:  # a port nothing listens on: Redis is down
        probe.bind(("127.0.0.1", 0))
        down_url = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"

    async def scenario() -> tuple[bool, int, bool]:
        live = Worker("a", config, redis_url)
        down = connect(down_url, timeout_s=1)
        upkeep = BatchUpkeep(
            ExplanationStore(live.client, ttl_s=3600),
            LayerHealthStore(live.client),
            WorkerMetrics(CollectorRegistry()),
            baselines=LayerBaselineStore(down),
            worker="a",
            job_timeout_s=60,
        )
        key = keys.layer_baseline("digits", "v1", live.runtime.model.digest)
        try:
            with pytest.raises(ConnectionError):
                await upkeep.stored_baselines("digits", live.runtime, _events(clean[:BATCH], "x"))
            for start in range(0, K, BATCH):
                result = live.runtime.explain(_events(clean[start : start + BATCH], f"a{start}-"), {})
                await upkeep.after_batch("digits", live.runtime, result)  # the store fails: logged, not raised
            pending = bool(result.new_baselines) and not await live.client.exists(key)
            reports = len(await LayerHealthStore(live.client).reports("digits"))
            await live.feed(clean[K : K + BATCH], "a-next")  # the next batch, Redis back
            return pending, reports, bool(await live.client.exists(key))
        finally:
            await live.client.aclose()
            await down.aclose()

    pending, reports, stored = asyncio.run(asyncio.wait_for(scenario(), timeout=120))

    assert pending and reports == 1 and stored
