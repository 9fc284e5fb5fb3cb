"""A previous owner of a model died with records read and unexamined, and the sidecars' ``MAXLEN`` trimmed some
of them while they were pending: the new owner's claim acknowledges the trimmed ones, examines the rest, and its
later claims go on without failing (real Redis 6.2, whose ``XAUTOCLAIM`` answers nil for each trimmed entry)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import redis

from common import keys
from helpers import MonitorRunner, wait_until
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet import owned_feed
from monitors.fleet.process import MonitorProcess

FEED = keys.prediction_feed("m")
RECORDS = 40
TRIMMED = 10
"""The oldest records, trimmed by ``MAXLEN`` while the dead owner held them."""


def left_by_a_dead_owner(client: redis.Redis) -> list[Any]:
    """``RECORDS`` records read by an owner that then died (pending on it, idle), the oldest ``TRIMMED`` and one in
    the middle deleted from the feed since; returns the deleted ids."""
    client.xgroup_create(FEED, keys.MONITOR_GROUP, id="0", mkstream=True)
    rng = np.random.default_rng(3)
    ids: list[Any] = []
    for index in range(RECORDS):
        record = MonitoringRecord(
            "m", f"r{index}", "v1", 1.0, index % 3, 0.8, 0.5, 3, embedding=rng.normal(size=8).astype(np.float32)
        )
        ids.append(client.xadd(FEED, {ENTRY_FIELD: record.blob()}))
    client.xreadgroup(keys.MONITOR_GROUP, "dead-owner", {FEED: ">"}, count=RECORDS)
    client.xtrim(FEED, maxlen=RECORDS - TRIMMED, approximate=False)
    client.xdel(FEED, ids[RECORDS // 2])
    return [*ids[:TRIMMED], ids[RECORDS // 2]]


def collected(process: MonitorProcess) -> int:
    """Records the model's drift monitor has collected into its warm-up reference: each examined record once."""
    owned = process.owned.get("m")
    monitor = owned.warming_up if owned is not None else None
    progress = monitor.warmup_progress if monitor is not None else None
    return 0 if progress is None else progress[0]


def pending(client: redis.Redis) -> int:
    summary: dict[str, int] = client.xpending(FEED, keys.MONITOR_GROUP)
    return int(summary["pending"])


def calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_the_new_owner_acknowledges_trimmed_entries_and_examines_the_rest(
    monitors: MonitorRunner,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(owned_feed, "RECLAIM_EVERY_TTLS", 1)  # a claim every lease TTL (1 s) after the first
    deleted = left_by_a_dead_owner(redis_client)
    live = RECORDS - len(deleted)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    with caplog.at_level(logging.INFO, logger="monitors"):
        process = monitors.start()
        wait_until(lambda: "m" in process.owned, what="the monitor to own m")
        wait_until(
            lambda: collected(process) >= live and redis_client.xlen(FEED) == 0 and pending(redis_client) == 0,
            what="the live records examined and every entry acknowledged",
        )
        claims = calls(redis_client, "xautoclaim")
        wait_until(lambda: calls(redis_client, "xautoclaim") >= claims + 2, timeout_s=10, what="two more claims")
    assert collected(process) == live, "the trimmed entries are not examined, the live ones once"
    assert pending(redis_client) == 0
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]
    said = [r.getMessage() for r in caplog.records if r.name == owned_feed.__name__]
    assert all(m.endswith(" pending entries of the feed of m were trimmed unexamined") for m in said), said
    assert sum(int(m.split()[0]) for m in said) == len(deleted), said
