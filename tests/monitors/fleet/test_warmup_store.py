"""A model's drift warm-up kept in a real Redis as it is collected: resumed by the next owner after its owner dies,
dropped once calibrated (or replaced by an upload), and never in the way when Redis refuses it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from common import keys
from common.redis import connect
from helpers import MonitorRunner, hash_all, hash_field, role_env, start_role, stop_process, wait_until
from monitors.drift.base import DriftBatch
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet.drift_started import Started
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases
from monitors.fleet.process import MonitorProcess
from monitors.fleet.references import ReferenceStore, reference_from_arrays
from monitors.fleet.warmup_store import TTL_S, decode, encode_chunk

CONFIG = DriftConfig(
    reference_events=200, max_reference=100, pca_components=4, ert=50, window_size=10, window_tests=False
)
DRIFT_ENV = {
    "VAI_DRIFT__REFERENCE_EVENTS": "200",
    "VAI_DRIFT__MAX_REFERENCE": "100",
    "VAI_DRIFT__PCA_COMPONENTS": "4",
    "VAI_DRIFT__ERT": "50",
    "VAI_DRIFT__WINDOW_SIZE": "10",
    "VAI_DRIFT__WINDOW_TESTS": "false",
}
"""``CONFIG`` as a monitor process reads it."""
KEY = keys.drift_warmup("m")


def send(client: redis.Redis, rng: np.random.Generator, count: int, *, width: int = 8) -> list[MonitoringRecord]:
    """``count`` records of model ``m`` added to its feed, as the sidecars publish them."""
    sent = [
        MonitoringRecord(
            "m",
            f"r{rng.integers(1 << 62)}",
            "v1",
            1.0,
            int(rng.integers(0, 3)),
            float(rng.uniform(0.4, 1.0)),
            0.5,
            3,
            embedding=rng.normal(size=width).astype(np.float32),
        )
        for _ in range(count)
    ]
    pipe = client.pipeline(transaction=False)
    for record in sent:
        pipe.xadd(keys.prediction_feed("m"), {ENTRY_FIELD: record.blob()})
    pipe.execute()
    return sent


def rows_of(records: list[MonitoringRecord]) -> DriftBatch:
    return DriftBatch(
        predicted=np.array([r.predicted for r in records], dtype=np.int64),
        confidence=np.array([r.confidence for r in records], dtype=np.float64),
        embeddings=np.stack([r.embedding for r in records if r.embedding is not None]),
        time_s=0.0,
    )


def same_rows(found: DriftBatch | None, records: list[MonitoringRecord]) -> bool:
    expected = rows_of(records)
    assert expected.embeddings is not None
    return (
        found is not None
        and found.embeddings is not None
        and np.array_equal(found.predicted, expected.predicted)
        and np.array_equal(found.confidence, expected.confidence)
        and np.array_equal(found.embeddings, expected.embeddings)
    )


def stored(client: redis.Redis) -> DriftBatch | None:
    """The warm-up in Redis, read with the owner's own codec."""
    return decode(hash_all(client, KEY), max_rows=CONFIG.reference_events)


def stored_rows(client: redis.Redis) -> int:
    found = stored(client)
    return 0 if found is None else len(found)


def warming(process: MonitorProcess) -> DriftMonitor | None:
    owned = process.owned.get("m")
    return None if owned is None else owned.warming_up


def collected(process: MonitorProcess) -> int:
    monitor = warming(process)
    progress = None if monitor is None else monitor.warmup_progress
    return 0 if progress is None else progress[0]


@pytest.mark.slow
def test_a_killed_owner_s_warm_up_is_resumed_by_the_next_with_its_rows(
    monitors: MonitorRunner, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The rows a monitor examined have left the feed: killed in the middle of a warm-up, its successor goes on from
    the copy in Redis (the same rows, in order) instead of collecting ``reference_events`` anew."""
    rng = np.random.default_rng(1)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    env = role_env(
        VAI_REDIS_URL=redis_url,
        VAI_MONITOR_ID="dying",
        VAI_MONITOR_METRICS_PORT="0",
        VAI_MONITOR_LEASE_TTL_S="1",
        VAI_MONITOR_STATUS_S="0.1",
        **DRIFT_ENV,
    )
    dying = start_role("monitor", env=env, cwd=tmp_path)
    try:
        wait_until(lambda: redis_client.get(keys.monitor_lease("m")) == b"dying", timeout_s=60, what="m owned")
        first = send(redis_client, rng, 120)
        wait_until(
            lambda: stored_rows(redis_client) == 120 and redis_client.xlen(keys.prediction_feed("m")) == 0,
            timeout_s=30,
            what="the first 120 records examined and their warm-up stored",
        )
        os.kill(dying.pid, signal.SIGKILL)  # no hand-over: its lease runs out
        dying.wait()
    finally:
        stop_process(dying)
    assert same_rows(stored(redis_client), first)

    successor = monitors.start(drift=CONFIG)
    wait_until(lambda: "m" in successor.owned, what="the successor to take m over")
    assert collected(successor) == 120, "resumed where the killed owner was, not from zero"
    monitor = warming(successor)
    assert monitor is not None
    rest = send(redis_client, rng, 80)
    wait_until(lambda: monitor.reference is not None, what="the warm-up complete")
    reference = monitor.reference
    assert reference is not None and reference.embeddings is not None
    assert same_rows(DriftBatch(reference.predicted, reference.confidence, reference.embeddings, 0.0), first + rest)
    wait_until(lambda: redis_client.get(keys.drift_version("m")) is not None, timeout_s=60, what="state stored")
    wait_until(lambda: not redis_client.exists(KEY), what="the stored warm-up deleted once its state is")


def test_the_warm_up_is_appended_as_it_grows_and_dropped_once_its_state_is_stored(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    rng = np.random.default_rng(2)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start(drift=CONFIG)
    wait_until(lambda: "m" in process.owned, what="m owned")
    first = send(redis_client, rng, 60)
    wait_until(lambda: stored_rows(redis_client) == 60, what="60 rows stored")
    head = hash_field(redis_client, KEY, "0")
    second = send(redis_client, rng, 60)
    wait_until(lambda: stored_rows(redis_client) == 120, what="120 rows stored")
    assert hash_field(redis_client, KEY, "0") == head, "appended: the first chunk is not written again"
    assert same_rows(stored(redis_client), first + second)
    assert 0 < redis_client.pttl(KEY) <= TTL_S * 1000

    send(redis_client, rng, 80)
    wait_until(lambda: redis_client.get(keys.drift_version("m")) is not None, timeout_s=60, what="state stored")
    wait_until(lambda: not redis_client.exists(KEY), what="the stored warm-up deleted")


def test_an_uploaded_reference_drops_the_stored_warm_up(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    rng = np.random.default_rng(3)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start(drift=CONFIG)
    wait_until(lambda: "m" in process.owned, what="m owned")
    send(redis_client, rng, 50)
    wait_until(lambda: stored_rows(redis_client) == 50, what="50 rows stored")
    uploaded = reference_from_arrays(rng.normal(size=(200, 8)), None)
    monitors.run(process, ReferenceStore(process.redis).put("m", uploaded))
    wait_until(lambda: not redis_client.exists(KEY), what="the stored warm-up deleted")


def _chunk(rng: np.random.Generator, count: int, *, width: int = 8) -> bytes:
    return encode_chunk(
        DriftBatch(
            predicted=rng.integers(0, 3, count).astype(np.int64),
            confidence=rng.uniform(0.4, 1.0, count),
            embeddings=rng.normal(size=(count, width)).astype(np.float32),
            time_s=0.0,
        )
    )


def _not_whole(case: str) -> dict[bytes, bytes]:
    rng = np.random.default_rng(4)
    chunk = _chunk(rng, 10)
    return {
        "malformed": {b"0": b"not a chunk", b"next": b"10"},
        "rows-missing": {b"0": chunk, b"20": chunk, b"next": b"30"},
        "another-format": {b"0": b"\x02" + chunk[1:], b"next": b"10"},
        "two-widths": {b"0": chunk, b"10": _chunk(rng, 10, width=16), b"next": b"20"},
        "more-rows-than-reference-events": {b"0": _chunk(rng, 201), b"next": b"201"},
    }[case]


def _start_owning(redis_url: str, config: DriftConfig = CONFIG) -> Started:
    async def run() -> Started:
        client = connect(redis_url, timeout_s=5)
        leases = Leases(client, owner="next", ttl_ms=5000)
        try:
            assert await leases.acquire("m")
            states = DriftStates(client, leases, config=config, metrics=DriftMetrics(registry=CollectorRegistry()))
            return await states.start("m")
        finally:
            await leases.release("m")
            await client.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize(
    "case", ["malformed", "rows-missing", "another-format", "two-widths", "more-rows-than-reference-events"]
)
def test_a_stored_warm_up_that_does_not_fit_is_dropped_once(
    case: str, redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.hset(KEY, mapping=_not_whole(case))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="monitors.fleet.warmup_store"):
        started = _start_owning(redis_url)
    assert started.monitor.warmup_progress == (0, CONFIG.reference_events) and started.resumed is None
    assert not redis_client.exists(KEY)
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1


def test_a_stored_warm_up_is_resumed_only_within_reference_events(redis_url: str, redis_client: redis.Redis) -> None:
    rng = np.random.default_rng(5)
    redis_client.hset(KEY, mapping={b"0": _chunk(rng, 100), b"100": _chunk(rng, 50), b"next": b"150"})
    started = _start_owning(redis_url)
    assert started.monitor.warmup_progress == (150, 200) and started.resumed is not None
    assert started.resumed.rows == 150
    smaller = _start_owning(redis_url, CONFIG.model_copy(update={"reference_events": 149}))
    assert smaller.monitor.warmup_progress == (0, 149), "more rows than reference_events: collected afresh"


def test_a_resumed_warm_up_of_another_width_than_the_feed_s_is_replaced(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """The model now sends 16-d embeddings; the dead owner's warm-up has 8-d ones: let go, and the copy in Redis
    becomes the fresh warm-up's."""
    rng = np.random.default_rng(6)
    redis_client.hset(KEY, mapping={b"0": _chunk(rng, 120), b"next": b"120"})
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    process = monitors.start(drift=CONFIG)
    wait_until(lambda: "m" in process.owned, what="m owned")
    resumed = warming(process)
    assert resumed is not None and resumed.warmup_progress == (120, 200) and resumed.embedding_width == 8
    wider = send(redis_client, rng, 30, width=16)
    wait_until(lambda: (resumed.warmup_progress or (0,))[0] != 120, what="the resumed rows let go")
    wider += send(redis_client, rng, 30, width=16)

    def replaced() -> bool:
        """Every record examined (the feed empty: a record read in a later batch than the one that let the resumed
        rows go is collected after them) and the warm-up stored as far as it goes."""
        progress = resumed.warmup_progress
        settled = redis_client.xlen(keys.prediction_feed("m")) == 0
        return (
            settled
            and resumed.embedding_width == 16
            and progress is not None
            and stored_rows(redis_client) == progress[0]
        )

    wait_until(replaced, what="the fresh 16-d warm-up stored")
    count = stored_rows(redis_client)
    assert 0 < count <= 60 and same_rows(stored(redis_client), wider[-count:])


def test_redis_refusing_the_warm_up_s_writes_delays_nothing_else(
    monitors: MonitorRunner, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Every write of the copy fails (its key holds another type) while the rows come in: the warm-up goes on in
    memory and the status is published; once Redis takes the writes again, the copy catches up, whole."""
    rng = np.random.default_rng(7)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    with caplog.at_level(logging.WARNING, logger="common.redis"):
        process = monitors.start(drift=CONFIG)
        wait_until(lambda: "m" in process.owned, what="m owned")
        first = send(redis_client, rng, 40)
        wait_until(lambda: stored_rows(redis_client) == 40, what="40 rows stored")
        redis_client.set(KEY, b"not a hash")
        second = send(redis_client, rng, 80)
        wait_until(lambda: collected(process) == 120, what="the warm-up collected on")

        def published() -> bool:
            status = redis_client.get(keys.drift_status("m"))
            return status is not None and b'"warmup_collected":120' in status

        wait_until(published, what="the status published meanwhile")
        assert redis_client.type(KEY) == b"string", "the refused writes were never stored"
        redis_client.delete(KEY)
        wait_until(lambda: stored_rows(redis_client) == 120, what="the copy caught up")
    assert same_rows(stored(redis_client), first + second)
    failures = [r for r in caplog.records if r.getMessage().startswith("monitor of m: redis failed")]
    assert len(failures) == 1, "logged once, not once a round"
