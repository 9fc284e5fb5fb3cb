"""Fixtures of the deploy tests: promtool, and the metric names the sidecar really exports."""

from __future__ import annotations

import os
import shutil

import pytest
from prometheus_client import CollectorRegistry

from sampler.metrics import SamplerMetrics
from service.metrics import IngestMetrics

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


@pytest.fixture(scope="session")
def exported_names() -> frozenset[str]:
    """Every series name the sidecar's /metrics can carry, from its real metric classes."""
    registry = CollectorRegistry()
    IngestMetrics(registry)
    SamplerMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        assert family.type in _SUFFIXES, f"{family.name}: no suffixes known for type {family.type}"
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return frozenset(names)
