"""Which projected points a worker has explained: the monitors read the explanation hash the sampler's store
writes (its status field and finished value, named once in ``common.keys``), with ``EVAL`` as every script."""

from __future__ import annotations

import time
import typing

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from common import keys
from common.redis import connect
from monitors.fleet.lease import Leases
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.projection import ProjectionPool
from monitors.fleet.projection_views import ModelViews
from monitors.fleet.references import ReferenceStore
from monitors.fleet.results import DetectorVerdict, DriftStatus
from monitors.fleet.settings import MonitorSettings
from sampler.explanation_records import ExplanationRecord, ExplanationStatus, ExplanationSummary
from sampler.explanations import ExplanationStore

pytestmark = pytest.mark.anyio


def _views(client: Redis, settings: MonitorSettings) -> ModelViews:
    return ModelViews(
        "digits",
        redis=client,
        leases=Leases(client, owner="me", ttl_ms=60_000),
        references=ReferenceStore(client),
        pool=ProjectionPool(),
        settings=settings,
        metrics=MonitorMetrics(CollectorRegistry()),
    )


def _record(request_id: str, status: ExplanationStatus) -> ExplanationRecord:
    summary = ExplanationSummary.model_validate(
        {
            "model": "digits",
            "model_version": "v1",
            "request_id": request_id,
            "status": status,
            "reasons": ("every_n",),
            "predicted": 3,
            "confidence": 0.9,
            "timestamp": time.time(),
        }
    )
    return ExplanationRecord(summary=summary)


def test_the_finished_status_is_one_the_sampler_s_records_take() -> None:
    assert keys.EXPLANATION_DONE in typing.get_args(ExplanationStatus)


async def test_points_are_explained_once_the_sampler_s_store_holds_them_done(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.script_flush()  # as after a restart: no script cached
    redis_client.config_resetstat()
    client = connect(redis_url, timeout_s=5.0)
    try:
        store = ExplanationStore(client, ttl_s=3600)
        await store.save(_record("done", "done"))
        await store.save(_record("failed", "failed"))
        await store.save(_record("queued", "queued"))
        views = _views(client, MonitorSettings(redis_url=redis_url))
        assert await views._explained(["done", "failed", "queued", "never-sampled"]) == [True, False, False, False]
    finally:
        await client.aclose()
    commands = set(redis_client.info("commandstats"))
    assert "cmdstat_evalsha" not in commands and "cmdstat_script" not in commands, commands


async def test_the_drift_history_is_appended_with_eval(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.script_flush()
    redis_client.config_resetstat()
    client = connect(redis_url, timeout_s=5.0)
    try:
        leases = Leases(client, owner="me", ttl_ms=60_000)
        assert await leases.acquire("digits")
        views = _views(client, MonitorSettings(redis_url=redis_url, drift_history_s=0.001))
        verdict = DetectorVerdict(name="d0", score=0.5, threshold=1.0, drift=False)
        status = DriftStatus(model="digits", state="monitoring", detectors=(verdict,), owner="me", updated_at=100.0)
        await views.record_history(status)
    finally:
        await client.aclose()
    assert redis_client.xlen(keys.drift_history("digits")) == 1
    commands = set(redis_client.info("commandstats"))
    assert "cmdstat_evalsha" not in commands and "cmdstat_script" not in commands, commands
