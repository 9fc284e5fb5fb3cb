"""The labelled side of an owned model against a real Redis: the window rebuilt by a new owner, the report."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from common import keys
from common.cardinality import ReleasableLabel
from common.redis import connect
from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector
from monitors.drift.runner import DriftRunner
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet.carried import FleetDriftMetrics
from monitors.fleet.context import OwnerContext
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.labelled import PAGE, REPLAYS, LabelledFeed
from monitors.fleet.lease import Leases
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.settings import MonitorSettings
from monitors.prediction_window import PredictionWindow
from monitors.window import WindowStore

HOUR_S = 3600.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def labelled_blob(request_id: str, label: int = 1) -> bytes:
    record = MonitoringRecord(
        model="m",
        request_id=request_id,
        version="v1",
        time_s=0.0,
        predicted=1,
        confidence=0.8,
        margin=0.5,
        num_classes=3,
    )
    return record.labelled(label).blob()


_SEQUENCE = itertools.count()
"""The id's sequence part: two entries added within one millisecond must still have increasing ids."""


def add_labelled(client: redis.Redis, request_id: str, *, age_s: float) -> None:
    entry_ms = int((time.time() - age_s) * 1000)
    entry_id = f"{entry_ms}-{next(_SEQUENCE)}"
    client.xadd(keys.labelled_feed("m"), {ENTRY_FIELD: labelled_blob(request_id)}, id=entry_id)


class Parts:
    """A labelled feed of model ``m`` and what it writes into, on its own event loop's Redis client."""

    def __init__(self, redis_url: str) -> None:
        guard = CohortGuard(keys=["region"], max_values_per_key=5)
        self.clock = FakeClock()
        self.windows = WindowStore(guard=guard, horizon_s=HOUR_S, clock=self.clock)
        self.recent = PredictionWindow(guard=guard)
        self.registry = CollectorRegistry()
        self.collector = QualityCollector(store=self.windows, registry=self.registry)
        self.settings = MonitorSettings(redis_url=redis_url, monitor_metrics_port=0, calibration_window_s=HOUR_S)
        self._url = redis_url

    @asynccontextmanager
    async def feed(self) -> AsyncIterator[LabelledFeed]:
        """The feed, holding the model's lease."""
        async with self.feeds("m") as (feed,):
            yield feed

    @asynccontextmanager
    async def feeds(self, *models: str) -> AsyncIterator[tuple[LabelledFeed, ...]]:
        """The feeds of ``models`` in one process (one context), holding their leases."""
        client = connect(self._url, timeout_s=5)
        leases = Leases(client, owner="me", ttl_ms=5000)
        for model in models:
            await leases.acquire(model)
        drift_metrics = FleetDriftMetrics(registry=CollectorRegistry())
        context = OwnerContext(
            redis=client,
            readers=client,
            leases=leases,
            states=DriftStates(client, leases, config=self.settings.drift, metrics=drift_metrics),
            runner=DriftRunner(),
            windows=self.windows,
            recent=self.recent,
            collector=self.collector,
            metrics=MonitorMetrics(self.registry),
            drift_metrics=drift_metrics,
            settings=self.settings,
        )
        try:
            yield tuple(LabelledFeed(model, context, versions=ReleasableLabel(5), views=None) for model in models)
        finally:
            await client.aclose()

    def window_of(self) -> list[str]:
        return [str(r.time_s) for s in self.windows.snapshots("m") if s.key.cohort == "all" for r in s.records]


@pytest.fixture
def parts(redis_url: str) -> Iterator[Parts]:
    yield Parts(redis_url)


def test_a_new_owner_keeps_the_windows_horizon(parts: Parts, redis_client: redis.Redis) -> None:
    """Labels replayed at take-over keep the time they arrived at: one 50 minutes old leaves the window 10 minutes
    later, not an hour after the take-over."""
    add_labelled(redis_client, "old", age_s=50 * 60)
    add_labelled(redis_client, "new", age_s=60)

    async def reload() -> None:
        async with parts.feed() as feed:
            await feed.reload()

    asyncio.run(reload())
    assert len(parts.window_of()) == 2
    parts.clock.now += 20 * 60
    (snapshot,) = [s for s in parts.windows.snapshots("m") if s.key.cohort == "all"]
    assert [r.time_s for r in snapshot.records] == [0.0] and snapshot.labelled_total == 2


def test_labels_older_than_the_window_are_not_read_as_new_when_the_replay_found_none(
    parts: Parts, redis_client: redis.Redis
) -> None:
    """The feed is trimmed approximately: entries older than the window may stay. A replay that finds nothing in the
    window must leave the live reads after the window's start, not at the stream's head (they took the old labels as
    new ones, age 0)."""
    add_labelled(redis_client, "stale", age_s=2 * HOUR_S)

    async def reload_then_read() -> None:
        async with parts.feed() as feed:
            await feed.reload()
            add_labelled(redis_client, "fresh", age_s=0)
            await feed.read()

    asyncio.run(reload_then_read())
    (snapshot,) = [s for s in parts.windows.snapshots("m") if s.key.cohort == "all"]
    assert snapshot.labelled_total == 1


def test_the_report_takes_its_snapshots_off_the_event_loop(
    parts: Parts, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_labelled(redis_client, "a", age_s=1)
    add_labelled(redis_client, "b", age_s=1)
    seen: list[str] = []

    def spy(method: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any) -> Any:
            seen.append(threading.current_thread().name)
            return method(*args)

        return recorded

    monkeypatch.setattr(parts.windows, "snapshots", spy(parts.windows.snapshots))
    monkeypatch.setattr(parts.recent, "snapshots", spy(parts.recent.snapshots))

    async def publish() -> str:
        async with parts.feed() as feed:
            await feed.reload()
            await feed.publish_quality(stopping=False)
        return threading.current_thread().name

    loop_thread = asyncio.run(publish())
    assert len(seen) == 2 and loop_thread not in seen, seen
    assert redis_client.get(keys.quality_report("m")) is not None
    labels = {"model": "m", "version": "v1", "cohort": "all", "value": "all"}
    assert parts.registry.get_sample_value("vai_cohort_window_events", labels) == 2, "the collector has the figures"


def test_a_report_is_exported_only_while_the_model_is_owned(parts: Parts, redis_client: redis.Redis) -> None:
    add_labelled(redis_client, "a", age_s=1)

    async def publish() -> None:
        async with parts.feed() as feed:
            await feed.reload()
            redis_client.set(keys.monitor_lease("m"), "another monitor")
            await feed.publish_quality(stopping=False)

    asyncio.run(publish())
    assert redis_client.get(keys.quality_report("m")) is None
    assert (
        parts.registry.get_sample_value(
            "vai_cohort_window_events", {"model": "m", "version": "v1", "cohort": "all", "value": "all"}
        )
        is None
    )


def test_a_monitor_whose_clock_runs_ahead_trims_the_labelled_feed_by_redis_clock(
    parts: Parts, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(3):
        add_labelled(redis_client, f"r{index}", age_s=3 - index)
    ahead = time.time() + 2 * HOUR_S  # past the window (1 h): by its own clock, every entry is out of it
    monkeypatch.setattr(time, "time", lambda: ahead)  # this host's clock; Redis keeps its own

    async def publish() -> None:
        async with parts.feed() as feed:
            await feed.reload()
            await feed.publish_quality(stopping=False)

    asyncio.run(publish())
    assert redis_client.xlen(keys.labelled_feed("m")) == 3


def add_many(client: redis.Redis, count: int, *, age_s: float, model: str = "m") -> None:
    """``count`` labelled records of ``model``, ``age_s`` old, in one round trip."""
    entry_ms = int((time.time() - age_s) * 1000)
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        fields = {ENTRY_FIELD: labelled_blob(f"many-{index}")}
        pipe.xadd(keys.labelled_feed(model), fields, id=f"{entry_ms}-{index + 1}")  # type: ignore[arg-type]
    pipe.execute()


def test_the_replay_takes_its_pages_off_the_event_loop(
    parts: Parts, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new owner replays up to ``monitor_stream_maxlen`` labelled records (100,000): parsed and put into the windows
    on the event loop, they held it for seconds, and with it the lease renewals."""
    records = 2 * PAGE + 5
    add_many(redis_client, records, age_s=60)
    threads: set[str] = set()
    append = parts.windows.append

    def recorded(*args: Any, **kwargs: Any) -> None:
        threads.add(threading.current_thread().name)
        append(*args, **kwargs)

    monkeypatch.setattr(parts.windows, "append", recorded)

    async def reload() -> str:
        async with parts.feed() as feed:
            await feed.reload()
        return threading.current_thread().name

    loop_thread = asyncio.run(reload())
    assert threads and loop_thread not in threads, threads
    assert len(parts.window_of()) == records


def test_a_replay_that_failed_part_way_goes_on_where_it_stopped(
    parts: Parts, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owned model's task retries a replay Redis broke off: no record is taken twice (nor counted a duplicate)."""
    records = PAGE + 5
    add_many(redis_client, records, age_s=60)
    xrange = AsyncRedis.xrange
    calls = itertools.count()

    async def flaky(self: AsyncRedis, *args: Any, **kwargs: Any) -> Any:
        if next(calls) == 1:  # the second page
            raise RedisConnectionError("connection lost")
        return await xrange(self, *args, **kwargs)

    monkeypatch.setattr(AsyncRedis, "xrange", flaky)

    async def reload() -> None:
        async with parts.feed() as feed:
            with pytest.raises(RedisConnectionError):
                await feed.reload()
            assert len(parts.window_of()) == PAGE
            await feed.reload()

    asyncio.run(reload())
    assert len(parts.window_of()) == records
    assert parts.registry.get_sample_value("vai_monitor_labelled_duplicates_total", {"model": "m"}) is None
    assert parts.registry.get_sample_value("vai_monitor_labelled_records_total", {"model": "m"}) == records


def test_a_page_left_in_its_thread_by_a_cancelled_replay_is_waited_for(
    parts: Parts, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling the replay (the model given up) does not stop the thread taking a page: the owner waits for it
    (``settled``) before it forgets the model's windows, or the page would land in them afterwards."""
    add_many(redis_client, 10, age_s=60)
    entered, release = threading.Event(), threading.Event()

    async def run() -> None:
        async with parts.feed() as feed:
            take = feed._take

            def held(entries: Any, **kwargs: Any) -> Any:
                entered.set()
                release.wait(10)
                return take(entries, **kwargs)

            monkeypatch.setattr(feed, "_take", held)
            replay = asyncio.create_task(feed.reload())
            await asyncio.to_thread(entered.wait, 10)
            replay.cancel()
            settled = asyncio.create_task(feed.settled(timeout_s=10))
            for _ in range(20):
                await asyncio.sleep(0)
            assert replay.done() and not settled.done(), "settled before the thread finished its page"
            release.set()
            await settled
            assert len(parts.window_of()) == 10

    try:
        asyncio.run(run())
    finally:
        release.set()  # the replays' thread is the process's: never left held


def test_the_models_taken_together_rebuild_one_after_another(
    parts: Parts, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One replay at a time in a process: the first model taken comes online once its own window is rebuilt, not
    after every model's pages, taken in turns through the one replay thread."""
    for model in ("a", "b"):
        add_many(redis_client, PAGE + 5, age_s=60, model=model)
    order: list[str] = []
    take = LabelledFeed._take

    def noted(self: LabelledFeed, entries: Any, **kwargs: Any) -> Any:
        order.append(self.model)
        return take(self, entries, **kwargs)

    monkeypatch.setattr(LabelledFeed, "_take", noted)

    async def rebuild() -> None:
        async with parts.feeds("a", "b") as feeds:
            await asyncio.gather(*(feed.reload() for feed in feeds))

    asyncio.run(rebuild())
    assert order == ["a", "a", "b", "b"]


def test_a_page_not_started_when_its_replay_stops_never_lands(parts: Parts, redis_client: redis.Redis) -> None:
    """A page still waiting for the replay thread when the model is given up is cancelled, so it never lands in
    windows the owner forgot meanwhile."""
    add_many(redis_client, 10, age_s=60)
    release = threading.Event()
    ahead = REPLAYS.submit(release.wait, 10)  # the thread busy with another page

    async def run() -> None:
        async with parts.feed() as feed:
            replay = asyncio.create_task(feed.reload())
            while feed._page is None:  # its first page handed to the thread
                await asyncio.sleep(0.01)
            replay.cancel()
            await asyncio.gather(replay, return_exceptions=True)
            await feed.settled(timeout_s=0.5)  # (the owner's wait is 5 s: the thread may be busy longer)
            parts.windows.forget("m")

    try:
        asyncio.run(run())
    finally:
        release.set()
    ahead.result(10)
    REPLAYS.submit(lambda: None).result(10)  # whatever was queued behind has run
    assert parts.window_of() == []
