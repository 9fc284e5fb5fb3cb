"""A monitor taking a model forgets the consumers of its feed's group that monitors gone left behind (each restart
or rollout added one for good), except one that still holds pending entries."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from common import keys
from helpers import MonitorRunner, wait_until
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet import owned_feed

FEED = keys.prediction_feed("m")


def _consumers(client: redis.Redis) -> set[str]:
    return {c["name"].decode() for c in client.xinfo_consumers(FEED, keys.MONITOR_GROUP)}


def test_consumers_of_monitors_gone_are_forgotten_unless_they_hold_entries(
    monitors: MonitorRunner, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owned_feed, "GONE_AFTER_MS", 0)  # idle for any time at all counts as gone
    redis_client.xgroup_create(FEED, keys.MONITOR_GROUP, id="0", mkstream=True)
    redis_client.xgroup_createconsumer(FEED, keys.MONITOR_GROUP, "gone-empty")  # nothing pending
    record = MonitoringRecord("m", "r0", "v1", 1.0, 0, 0.8, 0.5, 3, embedding=np.ones(8, dtype=np.float32))
    redis_client.xadd(FEED, {ENTRY_FIELD: record.blob()})
    redis_client.xreadgroup(keys.MONITOR_GROUP, "gone-holding", {FEED: ">"}, count=1)  # died holding an entry
    assert _consumers(redis_client) == {"gone-empty", "gone-holding"}
    redis_client.sadd(keys.MONITORED_MODELS, "m")

    process = monitors.start()
    wait_until(lambda: "m" in process.owned, what="the monitor to own m")
    remaining = _consumers(redis_client)
    assert "gone-empty" not in remaining and "gone-holding" in remaining
