"""Fixtures of the deploy tests: promtool, and the metric names the sidecar really exports."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, cast

import pytest
from prometheus_client import CollectorRegistry

from attribution_workers.metrics import WorkerMetrics
from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector
from monitors.drift.metrics import DriftMetrics
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.redis_memory import RedisMemory
from monitors.window import WindowStore
from sampler.metrics import SamplerMetrics
from service.feed.writer import FeedWriter
from service.metrics import FeedMetrics, IngestMetrics, KServeMetrics

if TYPE_CHECKING:
    from redis.asyncio import Redis

# What each metric type puts on the wire after its family name (prometheus_client adds _created
# too; nothing should alert on that).
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool; the test is skipped without one, except under CI where it fails."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (scripts/setup.sh --with-test-tools installs it)")
        pytest.skip("promtool is not installed")
    return found


class _NoRedis:
    """Enough of a Redis client for FeedWriter to declare its metrics."""

    def register_script(self, script: str) -> None:
        return None


@pytest.fixture(scope="session")
def exported_names() -> frozenset[str]:
    """Every series name the sidecar's and the attribution worker's /metrics can carry, from their
    real metric classes."""
    registry = CollectorRegistry()
    IngestMetrics(registry)
    KServeMetrics(registry)
    SamplerMetrics(registry)
    DriftMetrics(registry=registry)
    # The quality collector yields every family on each scrape, with samples only for series that
    # have data; the family names are what matters here.
    QualityCollector(store=WindowStore(guard=CohortGuard(keys=(), max_values_per_key=1)), registry=registry)
    # The worker runs as its own process (job vai-worker) with its own registry; names do not clash.
    WorkerMetrics(registry)
    MonitorMetrics(registry)
    RedisMemory(cast("Redis", _NoRedis()), registry)
    FeedWriter(
        cast("Redis", _NoRedis()),
        FeedMetrics(registry),
        max_per_second=0,
        max_records=1,
        stream_maxlen=100,
        prediction_ttl_s=1,
        brier_max_classes=2,
    )
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in _SUFFIXES, f"{family.name}: no suffixes known for type {family.type}"
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return frozenset(names)
