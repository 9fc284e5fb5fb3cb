"""One monitor process against a real Redis: what it can own at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from common.embedded_redis import EmbeddedRedis
from helpers import MonitorRunner, event, paused_redis, wait_until
from monitors.feed import MonitoringRecord
from monitors.fleet.process import MonitorProcess
from monitors.fleet.settings import MonitorSettings

MODELS = 24
"""More than one connection pool of 32 would hold with two blocking reads per model."""


def test_a_monitor_keeps_reading_and_renewing_with_many_models(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    client = make_client(max_models=MODELS, sampling={"every_n": 1_000_000})
    names = [f"m{index:02d}" for index in range(MODELS)]

    def post(round_: int) -> None:
        events = [event(f"{round_}-{name}-{i}", model=name) for name in names for i in range(3)]
        assert client.post("/v1/events", json={"events": events}).json()["accepted"] == len(events)

    def examined(name: str) -> int:
        answer = client.get(f"/v1/models/{name}/drift")
        body: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
        return int(body.get("examined") or 0)

    post(0)
    # The defaults (the tests' 1 s lease and 0.1 s cadences would make 24 models a load test of a busy CI host).
    process = monitors.start(monitor_lease_ttl_s=3.0, monitor_status_s=0.5, monitor_report_s=2.0)
    wait_until(lambda: len(process.owned) == MODELS, timeout_s=30, what="the monitor to own every model")
    wait_until(lambda: all(examined(name) >= 3 for name in names), timeout_s=30, what="every feed read")
    for round_ in range(1, 4):  # lease renewals and reads going on together
        post(round_)
        wait_until(
            lambda r=round_: all(examined(name) >= 3 * (r + 1) for name in names),  # type: ignore[misc]
            timeout_s=30,
            what=f"round {round_} read for every model",
        )
    assert len(process.owned) == MODELS
    owners = {redis_client.get(keys.monitor_lease(name)) for name in names}
    assert owners == {process.owner.encode()}, owners


def test_a_round_stops_taking_models_while_the_leases_it_took_still_hold(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Taking a model costs round trips: a round stops taking after a third of the lease's life, so that the next
    round's membership heartbeat is on time, and no lease it took runs out within the round even without the
    renewals (taking 300 models in one round took over a second here, past a 1 s lease)."""
    names = [f"t{index:03d}" for index in range(300)]
    redis_client.sadd(keys.MONITORED_MODELS, *names)
    settings = MonitorSettings(redis_url=redis_url, monitor_metrics_port=0, monitor_lease_ttl_s=1.0)

    async def one_round() -> tuple[list[str], int]:
        process = MonitorProcess(settings, registry=CollectorRegistry())
        process.runner.start()
        try:
            await process.tick()
            taken = sorted(process.owned)
            return taken, int(redis_client.pttl(keys.monitor_lease(taken[0])))
        finally:
            await process.stop()

    taken, first_left_ms = asyncio.run(one_round())
    assert taken
    assert first_left_ms > 0, "the first lease taken ran out within the round"


def test_a_model_removed_from_the_monitored_set_is_given_up(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    """(The retired model sorts first, so it is the one taken even if another test's monitor still counts as a
    member and the fair share is one.)"""
    redis_client.sadd(keys.MONITORED_MODELS, "a-retired", "b-kept")
    process = monitors.start()
    wait_until(lambda: "a-retired" in process.owned, what="the model owned")
    redis_client.srem(keys.MONITORED_MODELS, "a-retired")
    wait_until(
        lambda: "a-retired" not in process.owned and redis_client.get(keys.monitor_lease("a-retired")) is None,
        what="the retired model given up, its lease with it",
    )


def _warmup_collected(process: MonitorProcess, model: str) -> int:
    owned = process.owned.get(model)
    monitor = owned.warming_up if owned is not None else None
    progress = monitor.warmup_progress if monitor is not None else None
    return 0 if progress is None else progress[0]


def test_a_monitor_cut_off_from_redis_past_its_lease_stops_acting_as_owner(own_redis: EmbeddedRedis) -> None:
    """Its leases ran out while Redis did not answer, so another monitor may own its models by now: it drops them
    (and the figures it exported as their owner, which would otherwise stay frozen and read as current), then
    takes them again once Redis answers, resuming the warm-up it had collected (the records it examined are
    gone from the feed, and a flaky Redis would otherwise keep the model warming up for good)."""
    direct = redis.Redis.from_url(own_redis.url)
    direct.sadd(keys.MONITORED_MODELS, "m")
    runner = MonitorRunner(own_redis.url)
    process = runner.start(redis_timeout_s=0.3)
    rng = np.random.default_rng(3)
    try:
        wait_until(lambda: "m" in process.owned, what="the model owned")
        for index in range(40):
            record = MonitoringRecord(
                "m", f"r{index}", "v1", time.time(), 0, 0.9, 0.8, 2, embedding=rng.normal(size=8).astype(np.float32)
            )
            direct.xadd(keys.prediction_feed("m"), {b"r": record.blob()})
        wait_until(lambda: _warmup_collected(process, "m") == 40, what="the warm-up collected")
        with paused_redis(own_redis.data_dir):
            wait_until(lambda: "m" not in process.owned, what="the model given up once its lease lapsed")
        wait_until(lambda: "m" in process.owned, what="the model taken again")
        assert _warmup_collected(process, "m") == 40
    finally:
        runner.stop(process)
        direct.close()


def test_a_model_handed_back_publishes_what_it_examined_since_its_last_status(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """The stop acknowledges every record examined: its last status says so, or the next owner, which carries the
    count on from it, would count the records examined since the previous status nowhere."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start(monitor_status_s=3600.0)  # one status at the take, then none before the stop
    rng = np.random.default_rng(5)
    wait_until(lambda: redis_client.get(keys.drift_status("m")) is not None, what="the first status")
    for index in range(30):
        record = MonitoringRecord(
            "m", f"r{index}", "v1", time.time(), 0, 0.9, 0.8, 2, embedding=rng.normal(size=8).astype(np.float32)
        )
        redis_client.xadd(keys.prediction_feed("m"), {b"r": record.blob()})
    wait_until(lambda: _warmup_collected(process, "m") == 30, what="the records examined (collected)")
    monitors.stop(process)
    status = json.loads(redis_client.get(keys.drift_status("m")) or b"{}")
    assert status["examined"] == 30
