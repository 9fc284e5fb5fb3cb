"""A full Redis (``maxmemory`` under ``noeviction``) refuses the membership heartbeat but renews leases: the owners
keep their models instead of handing them round every few seconds."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry

from common import keys
from common.embedded_redis import EmbeddedRedis
from helpers import MonitorRunner, wait_until
from monitors.fleet.process import MonitorProcess


@pytest.fixture
def full(own_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the test's own Redis; ``fill(client)`` makes it full, and the teardown gives it room again."""
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.config_set("maxmemory", 0)
    client.close()


def fill(client: redis.Redis) -> None:
    """Leave Redis a little room, then use it up: from here every write that takes memory is refused (the limit
    then drawn well below what it uses, so that what its buffers give back now and then never makes room)."""
    client.config_set("maxmemory-policy", "noeviction")
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used + 1_000_000)
    for i in range(1_000):
        try:
            client.set(f"junk:{i}", b"x" * 16_384)
        except redis.exceptions.OutOfMemoryError:
            client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
            return
    raise AssertionError("Redis never said it was full")


def test_leases_stay_with_their_owners_while_redis_is_full(
    own_redis: EmbeddedRedis, full: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    runner = MonitorRunner(own_redis.url)
    try:
        full.sadd(keys.MONITORED_MODELS, "a", "b")
        registries = [CollectorRegistry(), CollectorRegistry()]
        first = runner.start(monitor_id="first", registry=registries[0])
        second = runner.start(monitor_id="second", registry=registries[1])

        def shared() -> dict[str, MonitorProcess] | None:
            owners = {model: p for p in (first, second) for model in p.owned}
            counted = all(r.get_sample_value("vai_monitor_members") == 2 for r in registries)
            return owners if counted and len(owners) == 2 and first.owned and second.owned else None

        owners = wait_until(shared, timeout_s=20, what="each monitor to count both and own one model")
        with caplog.at_level(logging.WARNING, logger="monitors.fleet.lease_round"):
            fill(full)
            renewed = {model: 0 for model in owners}
            last = {model: full.pttl(keys.monitor_lease(model)) for model in owners}

            def renewed_past_the_ttl() -> bool:
                for model, process in owners.items():
                    assert full.get(keys.monitor_lease(model)) == process.owner.encode(), f"{model} changed hands"
                    assert model in process.owned
                    ttl = full.pttl(keys.monitor_lease(model))
                    renewed[model] += ttl > last[model]
                    last[model] = ttl
                return min(renewed.values()) >= 6  # six renewals a third of the TTL apart: past the TTL

            wait_until(renewed_past_the_ttl, timeout_s=30, what="the leases to be renewed while Redis is full")
        refused = [r for r in caplog.records if "refused its membership heartbeat" in r.getMessage()]
        assert sorted(r.getMessage().split()[1] for r in refused) == ["first:", "second:"], "said once per monitor"
        assert [r.get_sample_value("vai_monitor_members") for r in registries] == [2, 2], "the last count Redis gave"
    finally:
        full.config_set("maxmemory", 0)
        for process in reversed(runner.started):
            runner.stop(process)
