"""Monitors whose drift settings differ: each publishes its own, uploads are checked against the strictest, the
difference is said and exported, and a model changing hands keeps the calibration stored with it rather than
recalibrating into a failure."""

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

LAX = FAST_DRIFT
"""8-d embeddings (no PCA): a reference needs 41 distinct rows."""
STRICT = {**LAX, "window_size": 30}
"""121 rows."""
ROWS = 80
"""Enough for ``LAX``, too few for ``STRICT``."""


def _embeddings(rows: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(rows, 8)).tolist()  # type: ignore[no-any-return]


def _next_round(client: redis.Redis) -> None:
    """Wait for both monitors to renew their membership (and so write their settings) once more."""

    def scores() -> dict[Any, Any]:
        return dict(client.zrange(keys.MONITOR_MEMBERS, 0, -1, withscores=True))  # type: ignore[arg-type]

    before = scores()
    wait_until(lambda: all(scores().get(m) != s for m, s in before.items()), what="another lease round")


def _configs(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("vai_monitor_drift_configs")


def test_uploads_are_checked_against_the_strictest_live_monitor(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client()
    lax_registry, strict_registry = CollectorRegistry(), CollectorRegistry()
    monitors.start(monitor_id="lax", drift=LAX, registry=lax_registry)
    strict = monitors.start(monitor_id="strict", drift=STRICT, registry=strict_registry)
    wait_until(
        lambda: _configs(lax_registry) == 2 and _configs(strict_registry) == 2,
        what="both monitors to count two different drift settings",
    )
    published = redis_client.hgetall(keys.DRIFT_CONFIGS)
    assert sorted(published) == [b"lax", b"strict"], "each monitor publishes its own settings"
    for attempt in range(6):  # whichever wrote last: the same answer
        refused = client.put("/v1/models/m/reference", json={"embeddings": _embeddings(ROWS, attempt)})
        assert refused.status_code == 422, refused.text
        assert "need at least 121 for 8-d embeddings (VAI_DRIFT__WINDOW_SIZE=30)" in refused.json()["error"]
        _next_round(redis_client)
    said = [r.getMessage() for r in caplog.records if "different drift settings" in r.getMessage()]
    assert len(said) == 2, f"each monitor says it once: {said}"
    assert any("window_size=30 (ours: 10)" in message for message in said), said

    monitors.stop(strict)
    wait_until(lambda: _configs(lax_registry) == 1, what="the strict monitor's settings to go with it")
    assert redis_client.hkeys(keys.DRIFT_CONFIGS) == [b"lax"]
    accepted = client.put("/v1/models/m/reference", json={"embeddings": _embeddings(ROWS)})
    assert accepted.status_code == 202, accepted.text


def _status(client: TestClient) -> dict[str, Any]:
    answer = client.get("/v1/models/m/drift")
    return answer.json() if answer.status_code == 200 else {}


def test_a_take_over_by_stricter_settings_keeps_the_stored_calibration(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit's case: a 250-row reference calibrated by one monitor, taken over by one whose settings need 321
    rows. Recalibrating would fail and leave the model unwatched; the stored calibration is valid, and runs."""
    client = make_client()
    lax = monitors.start(monitor_id="lax", drift=LAX)
    assert client.put("/v1/models/m/reference", json={"embeddings": _embeddings(ROWS)}).status_code == 202
    calibrated = wait_until(
        lambda: (s := _status(client)).get("state") == "monitoring" and s,
        timeout_s=60,
        what="the lax monitor to calibrate",
    )
    source = calibrated["reference_source"]
    assert source.startswith("upload:")

    strict = monitors.start(monitor_id="strict", drift=STRICT)
    monitors.stop(lax)  # hands the model over
    with caplog.at_level(logging.WARNING, logger="monitors.fleet.drift_state"):
        wait_until(lambda: _status(client).get("owner") == "strict", timeout_s=20, what="the strict monitor to take")
    adopted = [r.getMessage() for r in caplog.records if "with the settings stored with it" in r.getMessage()]
    assert adopted and "window_size=10 (ours: 30)" in adopted[0], adopted
    wait_until(
        lambda: strict.states.fleet == (DriftConfig(**STRICT),), what="the strict monitor to see the lax one gone"
    )
    for i in range(30):
        posted = client.post("/v1/events", json=event(f"e{i}", model="m", embedding=_embeddings(1, 100 + i)[0]))
        assert posted.status_code == 202
    seen: set[float] = set()

    def watched_for_a_while() -> bool:
        status = _status(client)
        assert status["owner"] == "strict" and status["state"] == "monitoring", status
        assert status["calibration_error"] is None and status["reference_source"] == source
        seen.add(status["updated_at"])
        return len(seen) >= 5 and status["examined"] >= 30

    wait_until(watched_for_a_while, timeout_s=30, what="the strict owner to watch with the stored calibration")
    assert strict.owned["m"].calibrated is not None
    kept = strict.states.keeps_stored(DriftConfig(**LAX).resolved(ROWS), ROWS, 8)
    assert kept is not None and "fewer than the 121" in kept, "too small for its settings: kept, alone in the fleet"
    assert strict.owned["m"].calibrated is not None


def _reference(rows: int) -> Reference:
    x = np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32)
    return Reference(
        predicted=np.zeros(rows, dtype=np.int64), confidence=np.ones(rows), embeddings=x, has_outputs=False
    )


def test_stored_settings_are_kept_while_a_live_monitor_runs_them_and_recalibrated_after(redis_url: str) -> None:
    """Settings that differ from the stored ones are a deliberate change once no live monitor runs the stored ones
    (and the reference suits ours); before that, a hand-over keeps the calibration."""
    lax, strict = DriftConfig(**LAX), DriftConfig(**STRICT)

    async def run() -> None:
        client = connect(redis_url, timeout_s=5)
        leases = Leases(client, owner="a", ttl_ms=5000)
        assert await leases.acquire("m")
        first = DriftStates(client, leases, config=lax, metrics=DriftMetrics(registry=CollectorRegistry()))
        await first.references.put("m", _reference(200))
        started = await first.start("m")
        await asyncio.to_thread(started.monitor.calibrate)
        assert await first.store("m", started)

        second = DriftStates(client, leases, config=strict, metrics=DriftMetrics(registry=CollectorRegistry()))
        second.fleet = (lax, strict)
        kept = await second.start("m")
        assert kept.stored and kept.monitor.config == lax.resolved(200) and kept.foreign is not None
        assert "a live monitor runs those settings" in kept.foreign
        second.fleet = (strict,)
        assert second.keeps_stored(kept.monitor.config, kept.rows, kept.dims) is None, "no reason left to keep them"
        assert (await second.start("m")).monitor.phase.value == "calibrating", "ours, on the 200-row reference"
        await client.aclose()

    asyncio.run(run())
