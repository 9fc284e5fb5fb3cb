"""The sidecar's two Redis clients: requests give up fast; the background writers ride out a busy event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import orjson
import pytest
import redis
import redis.asyncio
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from common import redis as common_redis
from common.embedded_redis import EmbeddedRedis
from common.errors import RedisUnavailable
from helpers import event, paused_redis, sidecar_of, wait_until
from monitors.feed import MonitoringRecord
from service.feed import writer as feed_writer
from service.feed.buffer import RECORDS
from service.feed.writer import FeedWriter
from service.metrics import FeedMetrics
from service.settings import SidecarSettings
from service.sidecar import CLOSE_S, Sidecar

EVERY_EVENT = {"every_n": 1, "max_per_second": 10_000}


def _busy(seconds: float) -> None:
    """Keep the event loop's thread on the CPU, as a burst of ingest does, without yielding."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _flush_while_the_loop_is_busy(sidecar: Sidecar, server: EmbeddedRedis) -> tuple[bool, int]:
    """Both writers send a batch; Redis answers at once, but the loop reads the replies only 0.8 s later
    (a first batch, written normally, has opened the writers' connections)."""
    assert sidecar.feed is not None
    assert await sidecar.writer.flush_once() and await sidecar.feed.flush() == 1  # their connections open
    await asyncio.gather(*(sidecar.writer_redis.ping() for _ in range(2)))  # a connection for each writer
    assert sidecar.ingest.ingest(orjson.dumps(event("r2"))).accepted == 1
    with paused_redis(server.data_dir):
        queue = asyncio.create_task(sidecar.writer.flush_once())
        feed = asyncio.create_task(sidecar.feed.flush())
        await asyncio.sleep(0.1)  # both batches are sent and wait for Redis
    _busy(0.8)  # Redis answers within milliseconds of SIGCONT, while the loop is still busy
    return await queue, await feed


@pytest.mark.anyio
@pytest.mark.parametrize("writer_timeout_s", [pytest.param(5.0, id="own-timeout"), pytest.param(0.2, id="requests")])
async def test_a_busy_event_loop_is_not_a_redis_outage_for_the_writers(
    own_redis: EmbeddedRedis, make_settings: Callable[..., SidecarSettings], writer_timeout_s: float
) -> None:
    """On the requests' 0.2 s timeout a writer gives up on a batch Redis may already have taken: it reports
    Redis down and sends the batch again (the ``requests`` case); on its own timeout (the default) it writes
    each record once and Redis stays up."""
    settings = make_settings(
        redis_url=own_redis.url,
        redis_timeout_s=0.2,
        redis_writer_timeout_s=writer_timeout_s,
        sampling=EVERY_EVENT,
        monitor_max_per_second=0,
    )
    sidecar = Sidecar(settings)
    assert sidecar.feed is not None
    direct = redis.Redis.from_url(own_redis.url)
    try:
        assert sidecar.ingest.ingest(orjson.dumps(event("r1"))).accepted == 1
        queued, fed = await _flush_while_the_loop_is_busy(sidecar, own_redis)
        if writer_timeout_s == 0.2:  # the defect the writers' own timeout exists for: a false outage
            assert (queued, fed) == (False, 0)
            assert not sidecar.writer.redis_up and not sidecar.feed.redis_up
            assert sidecar.writer.buffered == 1 and len(sidecar.feed) == 1, "the batch waits to be sent again"
            return
        assert (queued, fed) == (True, 1)
        assert sidecar.writer.redis_up and sidecar.feed.redis_up
        assert sidecar.writer.buffered == 0 and len(sidecar.feed) == 0
        assert direct.xlen(keys.sample_stream("digits")) == 2
        assert direct.xlen(keys.prediction_feed("digits")) == 2
    finally:
        direct.close()
        await sidecar.stop(drain_timeout_s=1.0)


def test_labels_answer_503_without_waiting_for_the_writers_timeout(
    own_redis: EmbeddedRedis, make_client: Callable[..., TestClient]
) -> None:
    """A label joins only once no monitoring batch is half-way to Redis; with Redis hung, the route waits
    for that no longer than its own timeout, so it answers while the writer is still waiting on its batch."""
    client = make_client(redis_url=own_redis.url, redis_timeout_s=0.2, label_records="all")
    feed = sidecar_of(client).feed
    assert feed is not None
    with paused_redis(own_redis.data_dir):
        assert client.post("/v1/events", json=event("r1")).status_code == 202
        wait_until(lambda: len(feed) == 0, what="the record's batch to leave for Redis")
        answer = client.post("/v1/labels", json={"labels": [{"model": "digits", "request_id": "r1", "label": 0}]})
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"].isdigit()
        assert feed.redis_up, "the route waited for the writer to give up on its batch"
    wait_until(lambda: len(feed) == 0 and feed.redis_up, what="the batch written once Redis answers")
    answer = client.post("/v1/labels", json={"labels": [{"model": "digits", "request_id": "r1", "label": 0}]})
    assert answer.json()["matched"] == 1


@pytest.mark.anyio
async def test_a_stop_with_redis_hung_ends_within_its_one_deadline(
    own_redis: EmbeddedRedis, make_settings: Callable[..., SidecarSettings]
) -> None:
    """Stopping shares one deadline between the tasks, the feed and the queue (closing gets ``CLOSE_S`` more),
    so with Redis hung a pod ends well inside Kubernetes' grace period (each step once had its own, 3-4 x as
    long). What is not written is counted."""
    settings = make_settings(redis_url=own_redis.url, redis_timeout_s=0.2, sampling=EVERY_EVENT, label_records="all")
    sidecar = Sidecar(settings)
    await sidecar.start()
    assert sidecar.feed is not None
    with paused_redis(own_redis.data_dir):
        assert sidecar.ingest.ingest(orjson.dumps({"events": [event(f"r{i}") for i in range(50)]})).accepted == 50
        loop = asyncio.get_running_loop()
        started = loop.time()
        await sidecar.stop(drain_timeout_s=2.0)
        took = loop.time() - started

    assert took < 2.0 + CLOSE_S + 0.5, took
    assert len(sidecar.feed) == 0 and sidecar.writer.buffered == 0  # abandoned: counted as dropped
    dropped = sidecar.registry.get_sample_value(
        "vai_sample_dropped_total", {"model": "digits", "reason": "redis_unavailable"}
    )
    assert dropped == 50


@pytest.mark.anyio
async def test_a_label_published_before_the_look_again_is_counted_though_the_request_is_cancelled(
    own_redis: EmbeddedRedis, make_settings: Callable[..., SidecarSettings]
) -> None:
    """One label joins its record in Redis (published at once), another finds none and waits to look again: the
    request cancelled during that wait (a client gone, a shutdown) still counts the published one, once."""
    registry = CollectorRegistry()
    settings = make_settings(redis_url=own_redis.url, label_records="all", label_join_retry_s=10.0)
    sidecar = Sidecar(settings, registry=registry)
    assert sidecar.feed is not None and sidecar.monitoring is not None
    direct = redis.Redis.from_url(own_redis.url)
    try:
        assert sidecar.ingest.ingest(orjson.dumps(event("in-redis"))).accepted == 1
        while await sidecar.feed.flush():
            pass
        labels = [{"model": "digits", "request_id": rid, "label": 0} for rid in ("in-redis", "never-seen")]
        joining = asyncio.create_task(sidecar.monitoring.delayed_labels.apply(labels, known={"digits"}))
        while not direct.exists(keys.labelled_feed("digits")):  # published: the other label now waits 10 s
            await asyncio.sleep(0.01)
        joining.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joining
        assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 1
    finally:
        direct.close()
        await sidecar.stop(drain_timeout_s=1.0)


@pytest.mark.anyio
async def test_labels_refused_with_503_are_neither_joined_nor_counted_so_a_retry_counts_once(
    own_redis: EmbeddedRedis, make_settings: Callable[..., SidecarSettings]
) -> None:
    """One label's record still waits in this replica, another's is in Redis, and Redis hangs: the 503 says
    "try again", so nothing may be joined or counted yet; the retry then joins both, each counted once, and a
    retry after that (its answer lost) finds them joined with the same class: matched, counted as duplicates."""
    registry = CollectorRegistry()
    settings = make_settings(redis_url=own_redis.url, redis_timeout_s=0.2, label_records="all")
    sidecar = Sidecar(settings, registry=registry)
    assert sidecar.feed is not None and sidecar.monitoring is not None
    labels = [{"model": "digits", "request_id": rid, "label": 0} for rid in ("in-redis", "here")]
    try:
        assert sidecar.ingest.ingest(orjson.dumps(event("in-redis"))).accepted == 1
        assert await sidecar.feed.flush() == 2  # its prediction record and its drift feed record
        assert sidecar.ingest.ingest(orjson.dumps(event("here"))).accepted == 1
        waiting = len(sidecar.feed)
        with paused_redis(own_redis.data_dir), pytest.raises(RedisUnavailable):
            await sidecar.monitoring.delayed_labels.apply(labels, known={"digits"})
        assert [s for m in registry.collect() if m.name == "vai_labels" for s in m.samples] == []
        assert sidecar.feed.waits_here("digits", "here"), "the record stays for the retry"
        result = await sidecar.monitoring.delayed_labels.apply(labels, known={"digits"})
        assert (result.matched, result.unmatched, result.rejected) == (2, [], [])
        assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 2
        assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "false"}) is None
        joined = {"model": "digits", "feed": "label_join", "reason": "joined"}  # one count for each record, this one's
        assert registry.get_sample_value("vai_feed_records_dropped_total", joined) == 1
        # The taken record leaves and its labelled one comes; the one from Redis is published already.
        assert len(sidecar.feed) == waiting - 1 + 1
        while await sidecar.feed.flush():
            pass
        direct = redis.Redis.from_url(own_redis.url)
        assert direct.xlen(keys.labelled_feed("digits")) == 2
        # The record taken from Redis leaves the marker of its class; the one taken from here none (its labelled
        # record was in memory only: a marker must not claim what Redis does not hold).
        assert direct.mget([keys.prediction("digits", rid) for rid in ("in-redis", "here")]) == [b"joined:0", None]
        direct.close()
        # The same labels sent once more (a retry whose answer was lost): the one with a marker is matched again,
        # counted as a duplicate and published nowhere; another class for it is refused by name.
        again = await sidecar.monitoring.delayed_labels.apply(labels, known={"digits"})
        assert (again.matched, again.duplicates, [u.request_id for u in again.unmatched]) == (1, 1, ["here"])
        other = await sidecar.monitoring.delayed_labels.apply([{**labels[0], "label": 1}], known={"digits"})
        assert other.matched == 0 and [r.error for r in other.rejected] == [
            "labels.0.label: the prediction was labelled 0 already"
        ]
        assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 2
        assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "duplicate"}) == 1
        assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "false"}) == 1
        assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "rejected"}) == 1
        assert len(sidecar.feed) == 0
    finally:
        await sidecar.stop(drain_timeout_s=1.0)


def test_a_label_finds_its_waiting_record_among_many_and_the_taken_one_is_never_written() -> None:
    """A label takes its record out of the buffer by key (not by walking it), and what it took is skipped
    when its turn comes: not written, not counted as dropped, not in the buffer's length."""
    registry = CollectorRegistry()
    feed = FeedWriter(
        redis.asyncio.Redis(),  # never reached: nothing is flushed
        FeedMetrics(registry),
        max_per_second=0,
        max_records=3,
        stream_maxlen=100,
        prediction_ttl_s=60,
        brier_max_classes=10,
        label_records="all",
    )
    for rid in ("a", "b", "c"):
        feed.offer(RECORDS, MonitoringRecord("digits", rid, "v1", 0.0, 0, 0.9, 0.5, 2))
    assert feed.take_local("digits", "a") is not None and feed.take_local("digits", "a") is None
    assert len(feed) == 2 and not feed.waits_here("digits", "a")
    feed.offer(RECORDS, MonitoringRecord("digits", "d", "v1", 0.0, 0, 0.9, 0.5, 2))
    dropped = {"model": "digits", "feed": RECORDS, "reason": "buffer_full"}
    assert registry.get_sample_value("vai_feed_records_dropped_total", dropped) is None, "the taken one made room"
    assert len(feed) == 3 and feed.waits_here("digits", "b") and feed.waits_here("digits", "d")
    # A label request that fails gives back what it took; one the full buffer dropped meanwhile is counted then.
    feed.keep_taken()
    assert feed.take_local("digits", "b") is not None and feed.take_local("digits", "c") is not None
    feed.offer(RECORDS, MonitoringRecord("digits", "e", "v1", 0.0, 0, 0.9, 0.5, 2))  # pushes out the oldest, b
    feed.give_back()
    assert not feed.waits_here("digits", "b") and feed.waits_here("digits", "c")
    assert registry.get_sample_value("vai_feed_records_dropped_total", dropped) == 1
    assert len(feed) == 3


@pytest.mark.anyio
async def test_an_unexpected_error_costs_the_feed_its_batch_counted_never_the_writer(
    own_redis: EmbeddedRedis, make_settings: Callable[..., SidecarSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug hit while writing a batch (injected here, once) drops that batch, counted as ``error``; the records
    after it are written. Before, the writer task ended and every later record was lost as ``buffer_full``."""
    registry = CollectorRegistry()
    sidecar = Sidecar(make_settings(redis_url=own_redis.url, label_records="all"), registry=registry)
    assert sidecar.feed is not None
    real = common_redis.queue_script
    failures = iter([RuntimeError("a bug")])

    def once_broken(*args: Any) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        real(*args)

    monkeypatch.setattr(feed_writer, "queue_script", once_broken)
    try:
        assert sidecar.ingest.ingest(orjson.dumps(event("lost"))).accepted == 1
        assert await sidecar.feed.flush() == 2 and len(sidecar.feed) == 0
        dropped = {"model": "digits", "feed": RECORDS, "reason": "error"}
        assert registry.get_sample_value("vai_feed_records_dropped_total", dropped) == 1
        assert sidecar.ingest.ingest(orjson.dumps(event("kept"))).accepted == 1
        assert await sidecar.feed.flush() == 2
        direct = redis.Redis.from_url(own_redis.url)
        assert direct.exists(keys.prediction("digits", "kept")) == 1
        direct.close()
    finally:
        await sidecar.stop(drain_timeout_s=1.0)


def test_events_of_another_width_during_a_reference_upload_are_refused(
    own_redis: EmbeddedRedis, make_client: Callable[..., TestClient]
) -> None:
    """The upload claims the model's embedding width before it waits on Redis: an event of another width that
    arrives meanwhile is refused, not accepted beside a reference it does not match; an upload that fails
    gives the width back."""
    client = make_client(redis_url=own_redis.url, redis_timeout_s=1.0, admin_tokens=("a",), ingest_tokens=("i",))
    reference = {"embeddings": [[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]]}
    answers: list[int] = []
    with paused_redis(own_redis.data_dir):
        upload = threading.Thread(
            target=lambda: answers.append(
                client.put(
                    "/v1/models/digits/reference", json=reference, headers={"authorization": "Bearer a"}
                ).status_code
            )
        )
        upload.start()
        wait_until(lambda: sidecar_of(client).ingest.embedding_dims.get("digits") == 4, what="the width claimed")
        during = client.post(
            "/v1/events", json=event("r1", embedding=[0.5, 0.5, 0.5]), headers={"authorization": "Bearer i"}
        )
        upload.join()
    assert during.status_code == 422 and during.json()["rejected"][0]["field"] == "embedding", during.text
    assert answers == [503]
    assert "digits" not in sidecar_of(client).ingest.embedding_dims, "a failed upload gives the width back"


@contextlib.contextmanager
def _redis_broken(server: EmbeddedRedis, how: str) -> Iterator[None]:
    """Redis ``hung`` (SIGSTOP) or ``down`` (killed, then started again on its port) inside the block."""
    if how == "hung":
        with paused_redis(server.data_dir):
            yield
        return
    server.kill()
    try:
        yield
    finally:
        server.start()


def _redis_up(client: TestClient) -> bool:
    answer = client.get("/status")
    assert answer.status_code == 200, answer.text
    up = answer.json()["redis_up"]
    assert isinstance(up, bool)
    return up


@pytest.mark.parametrize("how", [pytest.param("hung", id="hung"), pytest.param("down", id="down")])
def test_status_says_redis_is_down_as_soon_as_a_request_does_and_up_once_it_answers(
    own_redis: EmbeddedRedis, make_client: Callable[..., TestClient], how: str
) -> None:
    """``redis_up`` once followed the queue writer, which notices only when its own calls fail: 5 s after Redis
    hung (its timeout), and never while no model had sent events (nothing to poll), while every request that
    needed Redis already answered 503."""
    client = make_client(redis_url=own_redis.url, redis_timeout_s=0.2)
    assert _redis_up(client)
    with _redis_broken(own_redis, how):
        assert client.get("/v1/explanations", params={"model": "digits"}).status_code == 503
        failed_at = time.monotonic()
        wait_until(lambda: not _redis_up(client), timeout_s=0.8, what="/status to say that Redis is down")
        assert time.monotonic() - failed_at < 0.8
    wait_until(lambda: _redis_up(client), timeout_s=5.0, what="/status to say that Redis is back")


@pytest.mark.anyio
async def test_status_asked_many_times_with_redis_hung_answers_within_one_timeout(
    own_redis: EmbeddedRedis, make_settings: Callable[..., SidecarSettings]
) -> None:
    """Each ``/status`` waits for Redis no longer than ``VAI_REDIS_TIMEOUT_S``, and the calls in flight share one
    PING on a connection of their own (not queued behind one another, nor behind the requests' pool)."""
    sidecar = Sidecar(make_settings(redis_url=own_redis.url, redis_timeout_s=0.2))
    direct = redis.Redis.from_url(own_redis.url)
    try:
        direct.config_resetstat()
        assert all(answer.redis_up for answer in await asyncio.gather(*(sidecar.status() for _ in range(20))))
        assert _pings(direct) == 1
        with paused_redis(own_redis.data_dir):
            loop = asyncio.get_running_loop()
            started = loop.time()
            answers = await asyncio.gather(*(sidecar.status() for _ in range(20)))
            took = loop.time() - started
        assert not any(answer.redis_up for answer in answers)
        assert took < 1.0, f"{took:.2f} s: the calls waited for one another"
        assert (await sidecar.status()).redis_up
    finally:
        direct.close()
        await sidecar.stop(drain_timeout_s=1.0)


def _pings(client: redis.Redis) -> int:
    """PING commands the server has answered since its statistics were reset."""
    stats = cast(dict[str, dict[str, int]], client.info("commandstats"))
    return stats.get("cmdstat_ping", {}).get("calls", 0)
