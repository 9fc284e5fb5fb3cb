"""An owned model's feed entries are acknowledged and deleted only once the detectors have examined them: what an
owner read into its buffer and never examined stays pending, for the next owner to claim (real Redis, real classes)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from common import keys
from helpers import MonitorRunner, wait_until
from monitors.drift.base import DriftEvent
from monitors.drift.monitor import DriftMonitor
from monitors.drift.runner import DriftRunner
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet import owned_feed
from monitors.fleet.process import MonitorProcess

FEED = keys.prediction_feed("m")
RECORDS = 60


def send(client: redis.Redis, count: int) -> None:
    rng = np.random.default_rng(7)
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        record = MonitoringRecord(
            "m", f"r{index}", "v1", 1.0, index % 3, 0.8, 0.5, 3, embedding=rng.normal(size=8).astype(np.float32)
        )
        pipe.xadd(FEED, {ENTRY_FIELD: record.blob()})
    pipe.execute()


def pending(client: redis.Redis, consumer: str | None = None) -> int:
    if consumer is None:
        summary: dict[str, int] = client.xpending(FEED, keys.MONITOR_GROUP)
        return int(summary["pending"])
    return len(client.xpending_range(FEED, keys.MONITOR_GROUP, "-", "+", 10_000, consumername=consumer))


def collected(process: MonitorProcess) -> int:
    """Records the model's drift monitor has collected into its warm-up reference: each examined record once."""
    owned = process.owned.get("m")
    monitor = owned.warming_up if owned is not None else None
    progress = monitor.warmup_progress if monitor is not None else None
    return 0 if progress is None else progress[0]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Opened at the end of the test, so that a stalled runner's thread is let go before its process stops."""
    opened = threading.Event()
    yield opened
    opened.set()


def stall(process: MonitorProcess, gate: threading.Event) -> None:
    """The process's detectors wait for ``gate`` before they examine a batch (they were slow, or were killed)."""

    def stalled(monitor: DriftMonitor, events: list[DriftEvent]) -> int:
        gate.wait(60)
        return DriftRunner._update(monitor, events)

    process.runner._update = stalled  # type: ignore[method-assign]


def test_what_an_owner_read_and_never_examined_is_claimed_and_examined_by_the_next(
    monitors: MonitorRunner, redis_client: redis.Redis, gate: threading.Event
) -> None:
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    first = monitors.start()
    wait_until(lambda: "m" in first.owned, what="the first monitor to own m")
    stall(first, gate)
    send(redis_client, RECORDS)
    wait_until(lambda: first.owned["m"].buffer.taken_total == RECORDS, what="the records read and handed on")
    reads = _calls(redis_client, "xreadgroup")  # a few more feed rounds, each of which used to acknowledge them
    wait_until(lambda: _calls(redis_client, "xreadgroup") >= reads + 3, what="more feed rounds")
    assert pending(redis_client, first.owner) == RECORDS
    assert redis_client.xlen(FEED) == RECORDS
    # The first owner stops answering (as if killed) with the records in its detectors' hands.
    frozen, released = threading.Event(), threading.Event()
    monitors.run(first, _freeze(frozen, released))
    try:
        wait_until(frozen.is_set, what="the first monitor frozen")
        second = monitors.start()
        wait_until(lambda: "m" in second.owned, timeout_s=10, what="the second monitor to take m over")
        wait_until(
            lambda: collected(second) >= RECORDS and redis_client.xlen(FEED) == 0 and pending(redis_client) == 0,
            what="the left records claimed, examined, acknowledged and deleted",
        )
        assert collected(second) == RECORDS
    finally:
        released.set()


def test_an_owner_does_not_claim_again_what_it_holds_unexamined(
    monitors: MonitorRunner, redis_client: redis.Redis, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its detectors behind by more than the lease's TTL, the periodic claim of idle entries finds those it read
    itself: they are in its buffer already, and are examined once."""
    monkeypatch.setattr(owned_feed, "RECLAIM_EVERY_TTLS", 1)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start()
    wait_until(lambda: "m" in process.owned, what="the monitor to own m")
    stall(process, gate)
    claims = _calls(redis_client, "xautoclaim")
    send(redis_client, RECORDS)
    wait_until(lambda: process.owned["m"].buffer.taken_total == RECORDS, what="the records read and handed on")
    wait_until(lambda: _calls(redis_client, "xautoclaim") >= claims + 3, timeout_s=10, what="periodic claims")
    wait_until(lambda: _idle_ms(redis_client) > process.leases.ttl_ms, what="the held entries idle past the TTL")
    claims = _calls(redis_client, "xautoclaim")  # from here on, each claim finds the entries this owner holds
    wait_until(lambda: _calls(redis_client, "xautoclaim") >= claims + 2, timeout_s=10, what="more periodic claims")
    gate.set()
    wait_until(
        lambda: collected(process) >= RECORDS and redis_client.xlen(FEED) == 0 and pending(redis_client) == 0,
        what="the records examined, acknowledged and deleted",
    )
    claims = _calls(redis_client, "xautoclaim")
    wait_until(lambda: _calls(redis_client, "xautoclaim") >= claims + 1, timeout_s=10, what="a claim after that")
    assert collected(process) == RECORDS


def _calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def _idle_ms(client: redis.Redis) -> int:
    """How long the least idle pending entry of the feed has been idle."""
    entries = client.xpending_range(FEED, keys.MONITOR_GROUP, "-", "+", 10_000)
    return min((int(e["time_since_delivered"]) for e in entries), default=0)


async def _freeze(frozen: threading.Event, released: threading.Event) -> None:
    """Hold the loop's thread from a moment on (after this coroutine's result has reached the caller) until
    ``released``: no lease renewed, no feed read, nothing acknowledged, as if the process had died."""
    asyncio.get_running_loop().call_later(0.1, _block, frozen, released)


def _block(frozen: threading.Event, released: threading.Event) -> None:
    frozen.set()
    released.wait(60)
