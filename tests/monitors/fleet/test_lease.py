"""Leases: one owner per model, renewal, fencing, membership and fair shares."""

from __future__ import annotations

import asyncio
import time

import pytest

from common import keys
from common.redis import connect
from monitors.fleet import lease
from monitors.fleet.lease import Leases, fair_share


def test_one_owner_per_model_and_only_the_owner_renews_releases_and_writes(redis_url: str) -> None:
    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        a, b = Leases(redis, owner="a", ttl_ms=300), Leases(redis, owner="b", ttl_ms=300)
        assert await a.acquire("m") and not await b.acquire("m")
        assert await a.renew_all(["m"]) == [True] and await b.renew_all(["m"]) == [False]
        await b.release("m")
        assert await redis.get(keys.monitor_lease("m")) == b"a"
        assert await a.set_if_owner("m", {keys.drift_status("m"): "x"})
        assert not await b.set_if_owner("m", {keys.drift_status("m"): "y"})
        assert await redis.get(keys.drift_status("m")) == b"x"
        await asyncio.sleep(0.4)  # a stopped renewing: the lease lapses and b may take it
        assert await redis.get(keys.monitor_lease("m")) is None and await b.acquire("m")
        assert await a.renew_all(["m"]) == [False], "a lost lease is not renewed back"
        await a.release("m")
        assert await redis.get(keys.monitor_lease("m")) == b"b", "only the holder releases"
        await b.release("m")
        assert await redis.get(keys.monitor_lease("m")) is None
        await redis.aclose()

    asyncio.run(run())


def test_renewing_several_leases_is_one_round_trip_per_model_held(redis_url: str) -> None:
    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        a, b = Leases(redis, owner="a", ttl_ms=5000), Leases(redis, owner="b", ttl_ms=5000)
        assert await a.acquire("m1") and await b.acquire("m2")
        assert await a.renew_all([]) == []
        assert await a.renew_all(["m1", "m2", "m3"]) == [True, False, False]
        await redis.aclose()

    asyncio.run(run())


def test_membership_counts_live_processes_only(redis_url: str) -> None:
    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        a, b = Leases(redis, owner="a", ttl_ms=200), Leases(redis, owner="b", ttl_ms=5000)
        assert await a.heartbeat() == 1
        assert await b.heartbeat() == 2
        await asyncio.sleep(0.3)
        assert await b.heartbeat() == 1, "a stopped beating and no longer counts"
        await b.leave()
        assert await redis.zcard(keys.MONITOR_MEMBERS) == 0
        await redis.aclose()

    asyncio.run(run())


class _FastClock:
    """``time`` of a host whose wall clock runs ``ahead_s`` ahead."""

    def __init__(self, ahead_s: float) -> None:
        self.ahead_s = ahead_s

    def time(self) -> float:
        return time.time() + self.ahead_s


def test_membership_does_not_depend_on_the_hosts_clocks(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A monitor whose clock runs 10 s ahead (more than the TTL) still counts the others, and they count it."""

    async def run() -> None:
        redis = connect(redis_url, timeout_s=5)
        slow, fast = Leases(redis, owner="slow", ttl_ms=3000), Leases(redis, owner="fast", ttl_ms=3000)
        assert await slow.heartbeat() == 1
        monkeypatch.setattr(lease, "time", _FastClock(10.0), raising=False)
        assert await fast.heartbeat() == 2, "the fast clock evicted a live monitor"
        monkeypatch.setattr(lease, "time", _FastClock(-10.0), raising=False)
        assert await slow.heartbeat() == 2
        await redis.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("models", "monitors", "share"),
    [
        pytest.param(0, 1, 0, id="nothing-to-do"),
        pytest.param(2, 2, 1, id="even"),
        pytest.param(3, 2, 2, id="odd"),
        pytest.param(1, 3, 1, id="more-monitors-than-models"),
        pytest.param(5, 0, 5, id="no-member-counted-yet"),
    ],
)
def test_fair_share(models: int, monitors: int, share: int) -> None:
    assert fair_share(models, monitors) == share
