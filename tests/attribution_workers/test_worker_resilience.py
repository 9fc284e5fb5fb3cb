"""The worker rides out Redis outages and really bounds a batch: real worker processes, real redis-servers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from prometheus_client import CollectorRegistry, Gauge
from small_models import sampled_digit

from attribution_workers.bounded import EXIT_TIMED_OUT, run_bounded
from attribution_workers.config import AttributionConfig
from attribution_workers.loader import ModelSpec
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.reconnect import Backoff, RedisOutage
from attribution_workers.runtime import ModelRuntime
from attribution_workers.worker import AttributionWorker
from common import keys
from common.embedded_redis import EmbeddedRedis, free_port
from common.redis import connect
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import hash_field, read_group, stream_entries, wait_until
from sampler.explanations import ExplanationStore

REPO = Path(__file__).parents[2]
TESTS = Path(__file__).parents[1]  # hang_net, which the worker loads by name


# --- the pieces, in process ----------------------------------------------------------------------


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(initial_s=0.1, max_s=5.0, rng=random.Random(1))
    delays = [backoff.next_delay_s() for _ in range(10)]
    steps = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]
    assert all(step / 2 <= delay <= step for delay, step in zip(delays, steps, strict=True))
    assert len(set(delays)) == len(delays), "jittered: no two waits alike"
    backoff.reset()
    assert backoff.next_delay_s() <= 0.1


def test_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    outage = RedisOutage(Gauge("up", "Redis up.", registry=registry))
    caplog.set_level(logging.DEBUG, logger="attribution_workers.reconnect")
    outage.succeeded()
    assert registry.get_sample_value("up") == 1
    waits = [outage.failed(redis.ConnectionError("refused")) for _ in range(5)]
    assert registry.get_sample_value("up") == 0
    assert waits == sorted(waits), "waits grow"
    outage.succeeded()
    outage.succeeded()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionError: refused" in warnings[0].getMessage()
    assert len(recoveries) == 1 and "(5 retries)" in recoveries[0].getMessage()
    assert registry.get_sample_value("up") == 1


def test_run_bounded_returns_raises_and_gives_up_on_a_hung_call() -> None:
    release = threading.Event()

    def hang() -> int:
        release.wait()
        return 1

    def fail() -> int:
        raise ValueError("bad batch")

    async def scenario() -> None:
        assert await run_bounded(lambda: 42, timeout_s=5, name="quick") == 42
        with pytest.raises(ValueError, match="bad batch"):
            await run_bounded(fail, timeout_s=5, name="fail")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await run_bounded(hang, timeout_s=0.2, name="hang")
        assert time.monotonic() - started < 2

    try:
        asyncio.run(scenario())
    finally:
        release.set()  # the hung thread returns into a closed loop: it must not raise


# --- real worker processes -----------------------------------------------------------------------


def status(client: redis.Redis, model: str, request_id: str) -> bytes | None:
    return hash_field(client, keys.explanation(model, request_id), "status")


class WorkerProcess:
    """``vai-sidecar worker`` as its supervisor would run it, its log in a file."""

    def __init__(self, log_file: Path, env: dict[str, str]) -> None:
        self.log_file = log_file
        with log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "common.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def assert_alive_for(self, seconds: float) -> None:
        with pytest.raises(subprocess.TimeoutExpired):
            self.process.wait(timeout=seconds)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(redis_url: str, models: dict[str, Any], consumer: str, **settings: str) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
        env.update(
            {
                "VAI_REDIS_URL": redis_url,
                "VAI_MODELS": json.dumps(models),
                "VAI_WORKER_CONSUMER": consumer,
                "VAI_WORKER_METRICS_PORT": "0",
                "VAI_WORKER_BLOCK_MS": "100",
                "VAI_WORKER_RETRY_AFTER_MS": "200",
                "VAI_WORKER_HEARTBEAT_TTL_S": "3",
                "VAI_LOG_LEVEL": "info",
                "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
                "PYTHONWARNINGS": "ignore",
            }
        )
        env.update({f"VAI_{name.upper()}": value for name, value in settings.items()})
        worker = WorkerProcess(tmp_path / f"{consumer}-{len(started)}.log", env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


@pytest.fixture
def digits_models(digits_path: Path) -> dict[str, Any]:
    spec = {"torchscript": str(digits_path), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10}
    return {"digits": {"attribution": {"model": spec, "methods": ["saliency"], "fidelity_steps": 2}}}


def post_digit(client: redis.Redis, split: DatasetSplit, request_id: str) -> None:
    image, label = split.test.features[0], int(split.test.labels[0])
    client.xadd(keys.sample_stream("digits"), sampled_digit(request_id, image, predicted=label).encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions


@pytest.mark.slow
def test_worker_rides_out_a_redis_restart_and_recreates_its_group(
    start_worker: Callable[..., WorkerProcess],
    digits_models: dict[str, Any],
    digits_split: DatasetSplit,
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis", append_only=False).start()  # restarts empty
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    worker = start_worker(server.url, digits_models, "survivor")
    try:
        heartbeat = keys.worker_heartbeat("survivor")
        wait_until(lambda: client.exists(heartbeat), timeout_s=90, what="the worker's heartbeat")
        post_digit(client, digits_split, "before")
        wait_until(lambda: status(client, "digits", "before") == b"done", timeout_s=60, what="a first explanation")

        server.kill()
        wait_until(lambda: "Redis unavailable" in worker.log(), timeout_s=30, what="the outage in the log")
        worker.assert_alive_for(3.0)

        server.start()
        post_digit(client, digits_split, "after")
        wait_until(lambda: status(client, "digits", "after") == b"done", timeout_s=60, what="explained after")
        wait_until(lambda: client.exists(heartbeat), timeout_s=10, what="the heartbeat, still beating")
        assert client.xinfo_groups(keys.sample_stream("digits"))[0]["name"] == keys.CONSUMER_GROUP.encode()
        assert worker.stop() == 0
    finally:
        client.close()
        server.stop()
    log = worker.log()
    assert log.count("Redis unavailable") == 1, log
    assert log.count("Redis reachable again") == 1, log
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_worker_started_before_redis_waits_for_it(
    start_worker: Callable[..., WorkerProcess],
    digits_models: dict[str, Any],
    digits_split: DatasetSplit,
    tmp_path: Path,
) -> None:
    port = free_port()
    worker = start_worker(f"redis://127.0.0.1:{port}/0", digits_models, "early")
    wait_until(lambda: "Redis unavailable" in worker.log(), timeout_s=90, what="the worker waiting for Redis")
    worker.assert_alive_for(3.0)

    server = EmbeddedRedis(data_dir=tmp_path / "redis", port=port, append_only=False).start()
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        post_digit(client, digits_split, "first")
        wait_until(lambda: status(client, "digits", "first") == b"done", timeout_s=60, what="an explanation")
        assert worker.stop() == 0
    finally:
        client.close()
        server.stop()
    assert "Redis reachable again" in worker.log()


@pytest.mark.slow
def test_hung_batch_ends_the_process_and_is_dead_lettered_after_max_deliveries(
    start_worker: Callable[..., WorkerProcess], redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    import hang_net

    weights = tmp_path / "hang.pt"
    torch.save(hang_net.build().state_dict(), weights)
    spec = {"factory": "hang_net:build", "weights": str(weights), "input_shape": [64], "num_classes": 10}
    models = {"hang": {"attribution": {"model": spec, "methods": ["saliency"], "fidelity_steps": 2}}}
    values = np.full(64, hang_net.HANG, dtype=np.float32)
    stream = keys.sample_stream("hang")
    redis_client.xadd(stream, sampled_digit("stuck", values, predicted=1, model="hang").encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
    settings = {"worker_job_timeout_s": "1", "worker_max_deliveries": "2"}

    first = start_worker(redis_url, models, "hung", **settings)
    assert first.process.wait(timeout=90) == EXIT_TIMED_OUT, first.log()
    assert "timed out after 1 s" in first.log()
    assert redis_client.xpending(stream, keys.CONSUMER_GROUP)["pending"] == 1, "left pending for a restart"
    assert redis_client.xlen(keys.dead_letter_stream("hang")) == 0
    assert not redis_client.exists(keys.worker_heartbeat("hung")), "the heartbeat goes with the process"

    second = start_worker(redis_url, models, "hung", **settings)  # the supervisor's restart
    assert second.process.wait(timeout=90) == EXIT_TIMED_OUT, second.log()
    ((_, dead),) = stream_entries(redis_client, keys.dead_letter_stream("hang"))
    assert b"attribution timed out (after 2 deliveries)" in dead[b"error"]
    assert redis_client.xlen(stream) == 0
    assert redis_client.xpending(stream, keys.CONSUMER_GROUP)["pending"] == 0


def test_entry_delivered_past_max_deliveries_is_dead_lettered_unexecuted(
    redis_url: str, redis_client: redis.Redis, digits_path: Path, digits_split: DatasetSplit
) -> None:
    """A worker killed (or timed out) on an entry at every delivery cannot give up on it itself."""
    spec = ModelSpec(torchscript=digits_path, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES)
    runtime = ModelRuntime("digits", AttributionConfig(model=spec, methods=("saliency",)), device="cpu")
    stream = keys.sample_stream("digits")

    async def scenario() -> None:
        client = connect(redis_url, timeout_s=5)
        worker = AttributionWorker(
            client,
            ExplanationStore(client, ttl_s=3600),
            {"digits": runtime},
            WorkerMetrics(CollectorRegistry()),
            consumer="survivor",
            block_ms=10,
            max_deliveries=2,
            retry_after_ms=1,
        )
        try:
            await worker.ensure_groups()
            post_digit(redis_client, digits_split, "cursed")
            ((_, ((entry_id, _),)),) = read_group(redis_client, keys.CONSUMER_GROUP, "ghost", stream)
            redis_client.xclaim(stream, keys.CONSUMER_GROUP, "ghost", 0, [entry_id])  # its second delivery
            while not redis_client.xlen(keys.dead_letter_stream("digits")):
                await worker.step()  # the third delivery
        finally:
            await worker.aclose()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    ((_, dead),) = stream_entries(redis_client, keys.dead_letter_stream("digits"))
    assert dead[b"error"] == b"no result after 3 deliveries"
    assert status(redis_client, "digits", "cursed") == b"failed", "never explained, and not left queued"
    assert redis_client.xlen(stream) == 0


@pytest.mark.slow
def test_bad_stored_and_queued_data_neither_kills_the_worker_nor_reads_as_an_outage(
    start_worker: Callable[..., WorkerProcess],
    digits_models: dict[str, Any],
    digits_split: DatasetSplit,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    """A sanity figure that does not parse, then an entry with a NaN time: both once crashed or stalled it."""
    redis_client.hset(keys.sanity("digits"), "saliency", '{"similarity":"high","flagged":false}')
    body = json.loads(sampled_digit("nan-time", digits_split.test.features[1], predicted=1).model_dump_json())
    redis_client.xadd(keys.sample_stream("digits"), {"m": json.dumps(body | {"timestamp": float("nan")})})
    post_digit(redis_client, digits_split, "fine")
    worker = start_worker(redis_url, digits_models, "steady")

    wait_until(lambda: status(redis_client, "digits", "fine") == b"done", timeout_s=90, what="the good entry stored")
    wait_until(lambda: redis_client.xlen(keys.dead_letter_stream("digits")) == 1, timeout_s=30, what="a dead letter")
    post_digit(redis_client, digits_split, "later")
    wait_until(lambda: status(redis_client, "digits", "later") == b"done", timeout_s=30, what="a later entry stored")
    assert worker.stop() == 0
    log = worker.log()
    assert log.count("unreadable stored saliency of vai:sanity:digits") == 1, log
    assert "Redis unavailable" not in log and "Traceback" not in log, log
    ((_, dead),) = stream_entries(redis_client, keys.dead_letter_stream("digits"))
    assert b"timestamp: Input should be a finite number" in dead[b"error"]
