"""Which drift monitor a new owner starts with: adopted, recalibrated, or warming up."""

from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client import CollectorRegistry

from common.redis import connect
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.reference import Reference
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases

CONFIG = DriftConfig(
    reference_events=200, max_reference=100, pca_components=4, ert=50, window_size=10, window_tests=False
)


def _reference(rows: int = 200) -> Reference:
    x = np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32)
    return Reference(
        predicted=np.zeros(rows, dtype=np.int64), confidence=np.ones(rows), embeddings=x, has_outputs=False
    )


def test_a_stored_calibration_is_adopted_only_with_the_same_settings_and_reference(redis_url: str) -> None:
    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        leases = Leases(redis, owner="a", ttl_ms=5000)
        states = DriftStates(redis, leases, config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
        assert await leases.acquire("m")
        fresh = await states.start("m")
        assert fresh.monitor.phase.value == "warming_up" and fresh.built_from is None

        reference_id = await states.references.put("m", _reference())
        started = await states.start("m")
        assert started.built_from == reference_id and started.monitor.phase.value == "calibrating"
        await asyncio.to_thread(started.monitor.calibrate)
        assert await states.store("m", started)

        adopted = await states.start("m")
        assert adopted.stored and adopted.monitor.phase.value == "monitoring"

        changed = DriftStates(
            redis,
            leases,
            config=CONFIG.model_copy(update={"ert": 60}),
            metrics=DriftMetrics(registry=CollectorRegistry()),
        )
        assert (await changed.start("m")).monitor.phase.value == "calibrating", "new settings: calibrate afresh"

        newer = await states.references.put("m", _reference(300))
        again = await states.start("m")
        assert again.built_from == newer and again.monitor.phase.value == "calibrating"

        other = Leases(redis, owner="b", ttl_ms=5000)
        intruder = DriftStates(redis, other, config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
        await asyncio.to_thread(again.monitor.calibrate)
        assert not await intruder.store("m", again), "only the lease holder writes"
        await redis.aclose()

    asyncio.run(run())
