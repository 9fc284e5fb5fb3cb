"""Redis restarted empty (no persistence): a monitor stores back the calibrations and uploaded references it kept,
and a baseline nobody kept is said to be lost on ``/drift`` instead of being replaced by a warm-up on whatever
traffic flows now."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from common.redis import connect
from helpers import FAST_DRIFT, MonitorRunner, event, wait_until
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.reference import Reference
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases

DRIFT = FAST_DRIFT


def _embeddings(rows: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(rows, 8)).tolist()  # type: ignore[no-any-return]


def _status(client: TestClient, model: str = "m") -> dict[str, Any]:
    answer = client.get(f"/v1/models/{model}/drift")
    return answer.json() if answer.status_code == 200 else {}


def _post(client: TestClient, model: str, count: int, seed: int) -> None:
    for i, row in enumerate(_embeddings(count, seed)):
        assert (
            client.post("/v1/events", json=event(f"{model}-{seed}-{i}", model=model, embedding=row)).status_code == 202
        )


def test_a_monitor_stores_back_the_reference_and_calibration_redis_lost(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client()
    process = monitors.start(drift=DRIFT)
    assert client.put("/v1/models/m/reference", json={"embeddings": _embeddings(80)}).status_code == 202
    before = wait_until(
        lambda: (s := _status(client)).get("state") == "monitoring" and s, timeout_s=60, what="the calibration"
    )
    reference_id = before["reference_source"].removeprefix("upload:")
    assert redis_client.get(keys.drift_version("m")) == reference_id.encode()
    wait_until(lambda: process.owned["m"].calibrated is not None, what="the owner to hold its reference")

    with caplog.at_level(logging.WARNING, logger="monitors.fleet"):
        redis_client.flushall()  # as a Redis without persistence restarts
        wait_until(
            lambda: redis_client.hget(keys.drift_reference("m"), "id") == reference_id.encode(),
            what="the uploaded reference stored back, under its id",
        )
        after = wait_until(
            lambda: (s := _status(client)).get("state") == "monitoring" and s, what="the model watched again"
        )
    assert after["reference_source"] == f"upload:{reference_id}" and after["reference_lost"] is None
    assert after["reference_rows"] == 80 and after["owner"] == process.owner
    assert redis_client.get(keys.drift_version("m")) == reference_id.encode()
    assert redis_client.sismember(keys.MONITORED_MODELS, "m")
    said = [r.getMessage() for r in caplog.records]
    assert any("Redis lost its data" in m for m in said) and any("stored back: ['m']" in m for m in said), said
    _post(client, "m", 20, seed=5)
    wait_until(lambda: _status(client)["examined"] >= 20, what="the stored-back calibration to examine traffic")


def test_a_baseline_nobody_kept_is_reported_lost_not_replaced_by_a_warm_up(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    redis_client: redis.Redis,
) -> None:
    """The monitor that kept them died with Redis (here: a lease held by a process that is gone). The live one saw
    the models' baselines before Redis lost them: an uploaded reference is waited for, a warm-up is collected
    anew, and ``/drift`` says which."""
    client = make_client()
    assert client.put("/v1/models/m/reference", json={"embeddings": _embeddings(80)}).status_code == 202
    reference_id = redis_client.hget(keys.drift_reference("m"), "id").decode()  # type: ignore[union-attr]
    redis_client.sadd(keys.MONITORED_MODELS, "w")
    redis_client.set(keys.drift_version("w"), "warmup-0123")
    for model in ("m", "w"):
        redis_client.set(keys.monitor_lease(model), "gone", px=600_000)
    registry = CollectorRegistry()
    process = monitors.start(drift=DRIFT, registry=registry)
    wait_until(
        lambda: process.baselines.seen == {"m": f"upload:{reference_id}", "w": "warmup"},
        what="the live monitor to see both baselines",
    )

    redis_client.flushall()
    redis_client.sadd(keys.MONITORED_MODELS, "m", "w")  # as the sidecars announce their models again
    lost = wait_until(lambda: (s := _status(client)).get("state") == "reference_lost" and s, what="m said lost")
    assert lost["reference_source"] == f"upload:{reference_id}"
    assert f"uploaded reference {reference_id}" in lost["reference_lost"]
    assert "PUT /v1/models/m/reference" in lost["reference_lost"]
    wait_until(
        lambda: registry.get_sample_value("vai_drift_monitoring", {"model": "m"}) == 0, what="the gauge to say so"
    )
    warming = wait_until(lambda: (s := _status(client, "w")).get("state") == "warming_up" and s, what="w warming")
    assert warming["reference_source"] == "warmup" and "warm-up reference" in warming["reference_lost"]

    _post(client, "m", 30, seed=1)  # traffic is passed over, not made the reference
    wait_until(
        lambda: (registry.get_sample_value("vai_drift_events_skipped_total", {"model": "m"}) or 0) >= 30,
        what="m's records passed over",
    )
    passed = _status(client)
    assert passed["state"] == "reference_lost" and passed["warmup_collected"] is None
    assert passed["examined"] == 0, "read and passed over, not examined"

    assert client.put("/v1/models/m/reference", json={"embeddings": _embeddings(80, 3)}).status_code == 202
    again = wait_until(lambda: (s := _status(client)).get("state") == "monitoring" and s, timeout_s=60, what="again")
    assert again["reference_lost"] is None and again["reference_source"] != lost["reference_source"]
    wait_until(lambda: not redis_client.exists(keys.drift_lost("m")), what="the lost marker to go")


def _reference(rows: int) -> Reference:
    x = np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32)
    return Reference(
        predicted=np.zeros(rows, dtype=np.int64), confidence=np.ones(rows), embeddings=x, has_outputs=False
    )


def test_a_new_take_stores_back_what_this_process_kept_when_redis_has_neither(redis_url: str) -> None:
    async def run() -> None:
        client = connect(redis_url, timeout_s=5)
        leases = Leases(client, owner="a", ttl_ms=5000)
        assert await leases.acquire("m")
        states = DriftStates(
            client, leases, config=DriftConfig(**DRIFT), metrics=DriftMetrics(registry=CollectorRegistry())
        )
        reference_id = await states.references.put("m", _reference(200))
        started = await states.start("m")
        await asyncio.to_thread(started.monitor.calibrate)
        assert await states.store("m", started)
        kept = started.kept()
        assert kept is not None and kept.reference is not None

        await client.delete(keys.drift_state("m"), keys.drift_version("m"), keys.drift_reference("m"))
        resumed = await states.start("m", kept=kept)
        assert resumed.monitor is kept.monitor and resumed.stored and resumed.built_from == reference_id
        assert await states.references.latest_id("m") == reference_id
        assert await client.get(keys.drift_version("m")) == reference_id.encode()
        adopted = await states.start("m")
        assert adopted.stored and adopted.built_from == reference_id, "what was stored back is adopted as stored"
        await client.aclose()

    asyncio.run(run())
