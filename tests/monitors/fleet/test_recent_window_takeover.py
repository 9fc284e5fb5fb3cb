"""A killed owner's window of recent predictions carried on by its successors with each prediction counted once: what
an owner counted and left unacknowledged when it stored its window, the next owner claims and examines again
without counting it again; what it read after it stored its window, the next owner counts (real Redis, real
classes, in-process monitors frozen as if killed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from common import keys
from helpers import MonitorRunner, wait_until
from monitors.cohorts import ALL
from monitors.drift.base import DriftEvent
from monitors.drift.monitor import DriftMonitor
from monitors.drift.runner import DriftRunner
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet.process import MonitorProcess
from monitors.fleet.recent_store import RecentStore, StoredWindow

FEED = keys.prediction_feed("m")
STORED, LATE = 60, 40
"""Records read before the first owner stores its window, and read by each owner after it stored its own."""


def send(client: redis.Redis, start: int, count: int) -> None:
    rng = np.random.default_rng(start)
    pipe = client.pipeline(transaction=False)
    for index in range(start, start + count):
        confidence = float(rng.uniform(0.4, 1.0))
        embedding = rng.normal(size=8).astype(np.float32)
        record = MonitoringRecord("m", f"r{index}", "v1", 1.0, index % 3, confidence, 0.5, 3, embedding=embedding)
        pipe.xadd(FEED, {ENTRY_FIELD: record.blob()})
    pipe.execute()


def read(process: MonitorProcess) -> int:
    """Records the owner has read or claimed into its drift buffer (each counted in its window, or skipped there)."""
    owned = process.owned.get("m")
    return 0 if owned is None else owned.buffer.appended_total


def counted(process: MonitorProcess) -> int:
    """Predictions in the owner's window of recent predictions (behind the estimates' ``predictions``)."""
    return sum(s.confidence.size for s in process.recent.snapshots("m") if s.key.cohort == ALL)


def stored(client: redis.Redis) -> tuple[str, int] | None:
    """Who stored the window of recent predictions in Redis, and how many predictions it holds."""
    window = _stored_window(client)
    return (
        None
        if window is None
        else (window.owner, sum(s.confidence.decode().size for s in window.series if s.cohort == ALL))
    )


def stored_entries(client: redis.Redis) -> int | None:
    """The feed entries the stored window names as counted and not acknowledged."""
    window = _stored_window(client)
    return None if window is None else len(window.entries)


def _stored_window(client: redis.Redis) -> StoredWindow | None:
    body = client.get(keys.recent_predictions("m"))
    return None if body is None else StoredWindow.model_validate_json(body)


def pending(client: redis.Redis) -> int:
    summary: dict[str, int] = client.xpending(FEED, keys.MONITOR_GROUP)
    return int(summary["pending"])


@pytest.fixture
def stalled(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every monitor's detectors wait for the event before they examine a batch (they are slow): what is read stays
    unacknowledged. Opened at the end of the test, so that a stalled thread is let go before its process stops."""
    gate = threading.Event()
    update = DriftRunner._update

    def stall(monitor: DriftMonitor, events: list[DriftEvent]) -> int:
        gate.wait(60)
        return update(monitor, events)

    monkeypatch.setattr(DriftRunner, "_update", staticmethod(stall))
    yield gate
    gate.set()


@pytest.fixture
def saving(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """While set, quality reports store the window of recent predictions as usual; cleared, they do not."""
    allowed = threading.Event()
    allowed.set()
    save = RecentStore.save

    async def gated(store: RecentStore, model: str, body: str) -> bool:
        return await save(store, model, body) if allowed.is_set() else False

    monkeypatch.setattr(RecentStore, "save", gated)
    return allowed


@pytest.fixture
def released() -> Iterator[threading.Event]:
    """Lets the frozen monitors go at the end of the test."""
    event = threading.Event()
    yield event
    event.set()


def own_and_store(
    monitors: MonitorRunner, client: redis.Redis, saving: threading.Event, *, start: int, total: int
) -> MonitorProcess:
    """A monitor that takes ``m`` over and has read every record (``total``); its window stored in Redis then, it
    reads ``LATE`` more records (from ``start``) without storing it again."""
    saving.set()
    process = monitors.start()
    wait_until(lambda: read(process) == total, timeout_s=15, what="the records read or claimed")
    assert counted(process) == total
    wait_until(lambda: stored(client) == (process.owner, total), what="the window stored with them")
    saving.clear()
    send(client, start, LATE)
    wait_until(lambda: read(process) == total + LATE, what="the records read after the window was stored")
    assert counted(process) == total + LATE
    return process


def freeze(monitors: MonitorRunner, process: MonitorProcess, released: threading.Event) -> None:
    """Hold the loop's thread of ``process`` until ``released``: no lease renewed, no feed read, nothing
    acknowledged, no window stored, as if the process had been killed."""
    frozen = threading.Event()
    monitors.run(process, _freeze(frozen, released))
    wait_until(frozen.is_set, what="the monitor frozen")


def test_a_successor_counts_each_prediction_of_its_killed_predecessor_once(
    monitors: MonitorRunner,
    redis_client: redis.Redis,
    stalled: threading.Event,
    saving: threading.Event,
    released: threading.Event,
) -> None:
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, 0, STORED)
    first = own_and_store(monitors, redis_client, saving, start=STORED, total=STORED)
    total = STORED + LATE
    assert pending(redis_client) == total  # read, counted and never examined: the successor claims every one
    freeze(monitors, first, released)
    second = monitors.start()
    wait_until(lambda: read(second) == total, timeout_s=15, what="the left records claimed by the successor")
    assert counted(second) == total  # STORED restored (claimed again, not counted again), LATE claimed and counted
    saving.set()
    stalled.set()
    wait_until(lambda: redis_client.xlen(FEED) == 0 and pending(redis_client) == 0, what="the records examined")
    assert counted(second) == total
    wait_until(
        lambda: stored(redis_client) == (second.owner, total) and stored_entries(redis_client) == 0,
        what="the successor's window stored, none of its entries left unacknowledged",
    )


def test_each_of_a_chain_of_killed_owners_passes_on_each_prediction_once(
    monitors: MonitorRunner,
    redis_client: redis.Redis,
    stalled: threading.Event,
    saving: threading.Event,
    released: threading.Event,
) -> None:
    """The second owner stores its window with the first's entries it claimed (and still holds, unexamined) and is
    killed in turn: the third counts none of them again, and those read after the second's window was stored once."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, 0, STORED)
    first = own_and_store(monitors, redis_client, saving, start=STORED, total=STORED)
    freeze(monitors, first, released)
    second = own_and_store(monitors, redis_client, saving, start=STORED + LATE, total=STORED + LATE)
    total = STORED + 2 * LATE
    assert pending(redis_client) == total
    freeze(monitors, second, released)
    third = monitors.start()
    wait_until(lambda: read(third) == total, timeout_s=15, what="the left records claimed by the third owner")
    assert counted(third) == total
    stalled.set()
    wait_until(lambda: redis_client.xlen(FEED) == 0 and pending(redis_client) == 0, what="the records examined")
    assert counted(third) == total


async def _freeze(frozen: threading.Event, released: threading.Event) -> None:
    """Block the loop's thread from a moment on (after this coroutine's result has reached the caller)."""
    asyncio.get_running_loop().call_later(0.1, _block, frozen, released)


def _block(frozen: threading.Event, released: threading.Event) -> None:
    frozen.set()
    released.wait(60)
