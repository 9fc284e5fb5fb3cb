"""What a monitor's ``/metrics`` shows of its models: their series only while its leases are surely held."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from common import keys
from helpers import MonitorRunner, wait_until
from monitors.fleet.owned import OwnedModel
from monitors.fleet.process import MonitorProcess
from monitors.fleet.served_metrics import ServedMetrics


def test_model_series_are_left_out_while_the_leases_may_have_lapsed() -> None:
    registry = CollectorRegistry()
    Gauge("vai_calibration_ece", "ECE", ["model"], registry=registry).labels("m").set(0.1)
    Gauge("vai_monitor_members", "members", registry=registry).set(2)
    fresh = True
    served = ServedMetrics(registry, lambda model: fresh)
    assert b'vai_calibration_ece{model="m"} 0.1' in generate_latest(served)
    fresh = False
    text = generate_latest(served)
    assert b'model="m"' not in text and b"vai_monitor_members 2.0" in text
    named = generate_latest(served.restricted_registry(["vai_calibration_ece"]))
    assert b'model="m"' not in named
    fresh = True
    assert b'model="m"' in generate_latest(served.restricted_registry(["vai_calibration_ece"]))


def _exported(process: MonitorProcess) -> bool:
    served = ServedMetrics(process.registry, process.lease_round.exported)
    return b'model="m"' in generate_latest(served)


def test_a_monitor_paused_past_its_lease_exports_none_of_its_models(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """The process paused (SIGSTOP, a long garbage collection) past the lease TTL: another monitor may own its models
    by now, and a scrape answered as it resumes, before its event loop has renewed or given up anything, must leave
    their series out. Here the event loop alone is held (the metrics thread answers meanwhile)."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start(monitor_lease_ttl_s=1.5)
    wait_until(lambda: "m" in process.owned and _exported(process), what="the model owned and exported")
    resume = threading.Event()
    process_loop = monitors.loop_of(process)
    process_loop.call_soon_threadsafe(resume.wait, 30)  # the loop stops here until resumed
    try:
        wait_until(lambda: not process.lease_round.leases_fresh(), what="the leases' TTL past")
        assert "m" in process.owned and not _exported(process)
    finally:
        resume.set()
    wait_until(lambda: "m" in process.owned and _exported(process), what="the model exported again")


def test_a_model_whose_lease_was_lost_leaves_the_scrape_before_it_is_stopped(
    monitors: MonitorRunner, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping a model takes up to seconds (its tasks, a replay page, the windows settled): its series must not be
    exported meanwhile, since the monitor that took its lease exports them already."""
    release = threading.Event()
    stop = OwnedModel.stop

    async def held(part: OwnedModel, **kwargs: Any) -> None:
        while not release.is_set():
            await asyncio.sleep(0.01)
        await stop(part, **kwargs)

    monkeypatch.setattr(OwnedModel, "stop", held)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start(monitor_lease_ttl_s=1.5)
    try:
        wait_until(lambda: "m" in process.owned and _exported(process), what="the model owned and exported")
        redis_client.set(keys.monitor_lease("m"), "another monitor", px=60_000)
        wait_until(lambda: not _exported(process), what="its series out of the scrape")
        assert process.lease_round.leases_fresh(), "left out for being dropped, not for a lapse"
    finally:
        release.set()
    wait_until(lambda: "m" not in process.owned, what="the model dropped")
