"""The detectors' verdicts carried over a takeover: only of the calibration adopted, an alarm's ``since`` kept while
it goes on, the gauges shown without counting tests."""

from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client import CollectorRegistry

from common import keys
from common.redis import connect
from monitors.drift.base import DriftResult, OnlineResult
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.reference import Reference
from monitors.fleet.carried import CarriedVerdicts, FleetDriftMetrics, StoredVerdicts, load
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases
from monitors.fleet.results import DetectorVerdict

CONFIG = DriftConfig(
    reference_events=200, max_reference=100, pca_components=4, ert=50, window_size=10, window_tests=False
)
ALARM = DetectorVerdict(name="mmd_online", score=3.0, threshold=1.0, drift=True, since=100.0)
QUIET = DetectorVerdict(name="output_class_chi2", score=0.5, threshold=1.3, drift=False, p_value=0.3)


def _stored(calibration: str) -> StoredVerdicts:
    return StoredVerdicts(calibration=calibration, owner="a", updated_at=500.0, examined=900, verdicts=(ALARM, QUIET))


def _result(drift: bool, since: float | None) -> OnlineResult:
    return OnlineResult(name="mmd_online", score=2.0 if drift else 0.1, threshold=1.0, drift=drift, since=since)


def test_verdicts_stored_before_a_recalibration_are_not_carried_over(redis_url: str) -> None:
    """Recalibrated on the same uploaded reference (settings changed), the state keeps its version, the reference's
    id: storing it replaces the verdicts of the calibration before, in the same call."""

    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        leases = Leases(redis, owner="b", ttl_ms=5000)
        states = DriftStates(redis, leases, config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
        assert await leases.acquire("m")
        x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
        reference_id = await states.references.put(
            "m", Reference(predicted=np.zeros(200, np.int64), confidence=np.ones(200), embeddings=x, has_outputs=False)
        )
        await redis.set(keys.drift_verdicts("m"), _stored(reference_id).model_dump_json())
        carried = await load(redis, "m", calibration=reference_id)
        assert carried is not None and carried.verdicts == (ALARM, QUIET), "of the calibration adopted: carried"
        assert await load(redis, "m", calibration="another") is None, "of another calibration: not carried"

        started = await states.start("m")
        assert started.built_from == reference_id and not started.stored
        await asyncio.to_thread(started.monitor.calibrate)
        assert await states.store("m", started)
        assert await load(redis, "m", calibration=reference_id) is None
        await redis.aclose()

    asyncio.run(run())


def test_an_alarm_that_goes_on_keeps_its_since_until_a_result_clears_it() -> None:
    carried = CarriedVerdicts(_stored("v"))
    assert carried.merge([]) == (
        ALARM.model_copy(update={"carried": True}),
        QUIET.model_copy(update={"carried": True}),
    )
    first = _result(True, since=200.0)
    # Published before the detection thread reported it, and after: the alarm goes on from 100.
    for step in range(2):
        (mmd,) = [v for v in carried.merge([first]) if v.name == "mmd_online"]
        assert (mmd.drift, mmd.since, mmd.carried, mmd.score) == (True, 100.0, False, 2.0)
        if not step:
            carried.observe(first)
    carried.observe(_result(False, since=None))
    carried.observe(_result(True, since=300.0))
    (mmd,) = [v for v in carried.merge([_result(True, since=300.0)]) if v.name == "mmd_online"]
    assert mmd.since == 300.0, "cleared in between: a new alarm, since its own start"
    # A break and a new run inside one batch, published before the thread reported the batch: not the old since.
    later = CarriedVerdicts(_stored("v"))
    later.observe(first)
    (mmd,) = [v for v in later.merge([_result(True, since=250.0)]) if v.name == "mmd_online"]
    assert mmd.since == 250.0


def test_carried_gauges_are_shown_without_counting_tests_and_replaced_by_own_results() -> None:
    registry = CollectorRegistry()
    metrics = FleetDriftMetrics(registry=registry)
    carried = CarriedVerdicts(_stored("v"))
    metrics.carry("m", carried)

    def sample(name: str, detector: str = "mmd_online") -> float | None:
        return registry.get_sample_value(name, {"model": "m", "detector": detector})

    assert sample("vai_drift_detected") == 1.0 and sample("vai_drift_score") == 3.0
    assert sample("vai_drift_detected", "output_class_chi2") == 0.0
    assert sample("vai_drift_p_value", "output_class_chi2") == 0.3
    assert sample("vai_drift_tests_total") is None, "the previous owner counted its tests"
    metrics.record("m", DriftResult(name="mmd_online", score=0.2, threshold=1.0, drift=False))
    assert (sample("vai_drift_detected"), sample("vai_drift_tests_total")) == (0.0, 1.0)
    assert carried.merge([])[0].since == 100.0  # nothing of its own passed in: the carried verdict
    (mmd,) = [v for v in carried.merge([_result(True, since=400.0)]) if v.name == "mmd_online"]
    assert mmd.since == 400.0, "the detection thread reported the result that cleared it"
    metrics.forget("m")
    assert sample("vai_drift_detected") is None
