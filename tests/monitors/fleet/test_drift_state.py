"""Which drift monitor a new owner starts with: adopted, recalibrated, or warming up."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from prometheus_client import CollectorRegistry

from common import keys
from common.redis import connect
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.reference import Reference
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases
from previous_release import PreviousDriftConfig

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
        rows = len(_reference())
        assert adopted.monitor.reference_rows == rows, "/drift says how large the adopted reference is"

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


PREVIOUS_CONFIG = {
    "reference_events": 200,
    "max_reference": 100,
    "pca_components": 4,
    "online_detector": "mmd",
    "ert": 50,
    "window_size": 10,
    "n_bootstraps": None,
    "steady_steps_per_ert": 0,
    "window_events": 500,
    "window_tests": False,
    "n_permutations": 100,
    "p_value": 0.05,
    "device": "cpu",
    "seed": 0,
}
"""``CONFIG`` as the previous release stored it: ``steady_steps_per_ert`` at its default then, 0."""


def _previous_state(reference: Reference) -> str:
    """The state the previous release stored at its default settings: built as ``steady_steps_per_ert=0`` builds,
    its settings written out as it wrote them."""
    monitor = DriftMonitor(
        model="m",
        config=CONFIG.model_copy(update={"steady_steps_per_ert": 0}),
        metrics=DriftMetrics(registry=CollectorRegistry()),
        reference=reference,
    )
    monitor.calibrate()
    state = json.loads(monitor.export_state().model_dump_json())
    return json.dumps({**state, "config": PREVIOUS_CONFIG})


def test_a_state_of_the_previous_release_s_default_is_adopted_below_5000_rows(redis_url: str) -> None:
    """Rolling upgrade: the stored states of the previous default build as the automatic setting builds under
    5,000 reference rows (uploaded, or a warm-up of ``reference_events``), so the new release adopts them."""

    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        leases = Leases(redis, owner="a", ttl_ms=5000)
        states = DriftStates(redis, leases, config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
        assert CONFIG.steady_steps_per_ert is None
        body = _previous_state(_reference())
        reference_id = await states.references.put("uploaded", _reference())
        await redis.set(keys.drift_state("uploaded"), body)
        await redis.set(keys.drift_version("uploaded"), reference_id)
        await redis.set(keys.drift_state("warm"), body)
        await redis.set(keys.drift_version("warm"), "warmup-0123")

        for model in ("uploaded", "warm"):
            adopted = await states.start(model)
            assert adopted.stored and adopted.monitor.phase.value == "monitoring", model
            assert adopted.monitor.export_state().config == CONFIG.resolved(200)
        await redis.aclose()

    asyncio.run(run())


def test_from_5000_rows_a_previous_default_state_is_recalibrated_steady_and_stored_as_before(redis_url: str) -> None:
    """On a 5,000-row reference the automatic setting builds otherwise than the previous default: the owner
    calibrates afresh, stores the integer it used (which a monitor of the previous release reads), and the next
    owner adopts that."""

    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        leases = Leases(redis, owner="a", ttl_ms=5000)
        states = DriftStates(redis, leases, config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
        assert await leases.acquire("m")
        large = _reference(5000)
        reference_id = await states.references.put("m", large)
        await redis.set(keys.drift_state("m"), _previous_state(large))
        await redis.set(keys.drift_version("m"), reference_id)

        started = await states.start("m")
        assert started.monitor.phase.value == "calibrating", "the previous default built without the steady stream"
        await asyncio.to_thread(started.monitor.calibrate)
        assert await states.store("m", started)

        body = await redis.get(keys.drift_state("m"))
        assert body is not None
        stored = json.loads(body)["config"]
        assert PreviousDriftConfig.model_validate(stored).steady_steps_per_ert == 1000  # refuses null, unknown keys
        assert stored == {**PREVIOUS_CONFIG, "steady_steps_per_ert": 1000}
        adopted = await states.start("m")
        assert adopted.stored and adopted.monitor.phase.value == "monitoring"
        await redis.aclose()

    asyncio.run(run())


def test_a_warm_up_state_resolves_on_reference_events(redis_url: str) -> None:
    """A warm-up collects ``reference_events`` events: at 5,000 the automatic setting is 1,000, so a state stored
    with 0 (the previous default) is not adopted and one stored with 1,000 is."""
    config = CONFIG.model_copy(update={"reference_events": 5000})
    previous = json.loads(_previous_state(_reference()))

    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        leases = Leases(redis, owner="a", ttl_ms=5000)
        states = DriftStates(redis, leases, config=config, metrics=DriftMetrics(registry=CollectorRegistry()))
        for model, steady in (("previous", 0), ("steady", 1000)):
            stored = {**PREVIOUS_CONFIG, "reference_events": 5000, "steady_steps_per_ert": steady}
            await redis.set(keys.drift_state(model), json.dumps({**previous, "model": model, "config": stored}))
            await redis.set(keys.drift_version(model), "warmup-0123")
        assert (await states.start("previous")).monitor.phase.value == "warming_up"
        adopted = await states.start("steady")
        assert adopted.stored and adopted.monitor.phase.value == "monitoring"
        assert adopted.monitor.reference_rows == 5000, "a warm-up collects reference_events"
        await redis.aclose()

    asyncio.run(run())
