"""Redis that lost its data (restarted empty without persistence, or flushed) while the sidecars ran: what only
the replicas still know (models that get labels, run-time sampling overrides) is told to Redis again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from common.redis import connect
from helpers import wait_until
from monitors.feed import MonitoringRecord
from service.feed.writer import PREDICTIONS, FeedWriter
from service.metrics import FeedMetrics

PATH = "/v1/models/digits/sampling"


def _record(model: str, request_id: str) -> MonitoringRecord:
    return MonitoringRecord(
        model=model,
        request_id=request_id,
        version="v1",
        time_s=time.time(),
        predicted=0,
        confidence=0.9,
        margin=1.0,
        num_classes=3,
    )


@pytest.mark.anyio
async def test_models_learned_from_labels_are_announced_again_after_redis_lost_them(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Replicas started after the loss keep records only for the models in ``vai:labelled-models``: a model this
    replica learned from labels (declared nowhere) is announced again, as the published models are."""
    client = connect(redis_url, timeout_s=5.0)
    writer = FeedWriter(
        client,
        FeedMetrics(CollectorRegistry()),
        max_per_second=0,
        max_records=100,
        stream_maxlen=1000,
        prediction_ttl_s=60,
        brier_max_classes=10,
        announce_s=0.0,  # every batch: the 10 s of a running sidecar, without the wait
    )
    try:
        writer.mark_labelled("learned")
        writer.offer(PREDICTIONS, _record("learned", "r1"))
        assert await writer.flush() == 1
        assert redis_client.smembers(keys.LABELLED_MODELS) == {b"learned"}
        redis_client.flushall()
        writer.offer(PREDICTIONS, _record("learned", "r2"))
        assert await writer.flush() == 1
        assert redis_client.smembers(keys.LABELLED_MODELS) == {b"learned"}
        assert redis_client.smembers(keys.MONITORED_MODELS) == {b"learned"}
    finally:
        await client.aclose()


def test_run_time_overrides_redis_lost_are_written_back_logged_and_counted(
    make_client: Callable[..., TestClient], redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit: after a wipe ``/sampling`` went from the override back to the config's value, silently. Redis held
    the only shared copy; the replicas that had it write it back (a reset leaves Redis answering with the
    replica's mark in place, so it is not undone: see the sampling API's reset across replicas)."""
    registry = CollectorRegistry()
    client = make_client(registry=registry)
    assert client.put(PATH, json={"every_n": 5}).status_code == 200
    wait_until(lambda: redis_client.keys("vai:sidecar-mark:*"), what="the replica's mark")
    with caplog.at_level(logging.WARNING, logger="service.sidecar"):
        redis_client.flushall()
        wait_until(lambda: redis_client.hget(keys.policy("digits"), "every_n") == b"5", what="the override back")
        wait_until(lambda: registry.get_sample_value("vai_sampling_overrides_restored_total"), what="the count")
    assert client.get(PATH).json()["every_n"] == 5
    assert registry.get_sample_value("vai_sampling_overrides_restored_total") == 1
    assert [record.levelname for record in caplog.records if "vanished from Redis" in record.message] == ["WARNING"]
    assert make_client().get(PATH).json()["every_n"] == 5, "a replica started after the loss"
