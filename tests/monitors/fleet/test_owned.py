"""An owned model's prediction feed against a real Redis: what a previous owner left pending is claimed."""

from __future__ import annotations

import time

import redis

from common import keys
from helpers import MonitorRunner, wait_until

FEED = keys.prediction_feed("m")
JUNK = b"not a monitoring record"
"""Counted as invalid, acknowledged and deleted like any examined entry."""


def calls(client: redis.Redis, command: str) -> int:
    """How many times Redis ran ``command`` since its statistics were reset."""
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def xautoclaims(client: redis.Redis) -> int:
    return calls(client, "xautoclaim")


def pending(client: redis.Redis) -> int:
    summary: dict[str, int] = client.xpending(FEED, keys.MONITOR_GROUP)
    return int(summary["pending"])


def left_by_a_previous_owner(client: redis.Redis, entries: int) -> None:
    client.xgroup_create(FEED, keys.MONITOR_GROUP, id="0", mkstream=True)
    for _ in range(entries):
        client.xadd(FEED, {b"x": JUNK})
    client.xreadgroup(keys.MONITOR_GROUP, "gone", {FEED: ">"}, count=entries)
    assert pending(client) == entries


def test_a_new_owner_claims_what_was_left_once_not_before_every_read(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    left_by_a_previous_owner(redis_client, 3)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    redis_client.config_resetstat()
    process = monitors.start()
    wait_until(lambda: "m" in process.owned, what="the monitor to own m")
    wait_until(lambda: pending(redis_client) == 0 and redis_client.xlen(FEED) == 0, what="the left entries examined")
    claims = xautoclaims(redis_client)
    reads = calls(redis_client, "xreadgroup")
    # An idle feed: wait for several more blocking reads, each of which used to claim first.
    wait_until(lambda: calls(redis_client, "xreadgroup") >= reads + 4, what="four more reads of the feeds")
    assert xautoclaims(redis_client) == claims <= 2


def test_an_entry_another_consumer_leaves_is_claimed_once_idle_past_the_ttl(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    redis_client.xgroup_create(FEED, keys.MONITOR_GROUP, id="0", mkstream=True)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start()
    wait_until(lambda: "m" in process.owned, what="the monitor to own m")
    # Delivered to another consumer (a paused former owner) and never acknowledged; the owner never sees it new.
    entry_id = f"{int(time.time() * 1000) + 1000}-0"
    pipe = redis_client.pipeline(transaction=True)
    pipe.xadd(FEED, {b"x": JUNK}, id=entry_id)
    pipe.xgroup_setid(FEED, keys.MONITOR_GROUP, id="$")
    pipe.xclaim(FEED, keys.MONITOR_GROUP, "paused", 0, [entry_id], force=True)
    pipe.execute()
    assert pending(redis_client) == 1
    wait_until(
        lambda: redis_client.xlen(FEED) == 0 and pending(redis_client) == 0, timeout_s=20, what="the entry claimed"
    )


def test_each_task_of_an_owned_model_is_named_by_its_step(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    """A stuck or failing task is logged by name: each names its step and the model, no two alike."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start()
    views = ["views-m-distributions", *(f"views-m-{method}" for method in process.settings.projection_methods)]
    expected = sorted(["feed-m", "labelled-m", "status-m", "warmup-m", "quality-m", *views])

    def names() -> list[str]:
        owned = process.owned.get("m")
        return [] if owned is None else sorted(task.get_name() for task in owned._tasks)

    # The labelled task starts the others once it has rebuilt the labelled window.
    wait_until(lambda: names() == expected, what=f"the tasks {expected}, not {names()}")
