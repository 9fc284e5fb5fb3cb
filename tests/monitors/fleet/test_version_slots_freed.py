"""The owner's version slots: a version its windows (labelled and recent) hold nothing of gives its slot up, its
series go, and the newest version is counted as itself; ``__other__`` is only what is beyond the cap at one time
(real Redis, in-process monitors, windows of a second so that versions go idle quickly)."""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from common import keys
from common.cardinality import OTHER
from helpers import MonitorRunner, wait_until
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet import labelled
from monitors.fleet.results import QualityReport

WINDOW_S = 1.0
_IDS = itertools.count()


@pytest.fixture(autouse=True)
def _no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        labelled, "VERSION_GRACE_S", 0.0, raising=False
    )  # a version is let go as soon as no window holds it
    monkeypatch.setattr(labelled, "QUALITY_REFRESH_S", 0.2, raising=False)  # and seen gone this soon with no traffic


def send(client: redis.Redis, version: str, *, count: int = 3) -> None:
    """``count`` predictions of ``version``, each to the prediction feed and with its label to the labelled feed."""
    rng = np.random.default_rng(0)
    for _ in range(count):
        record = MonitoringRecord(
            "m", f"r{next(_IDS)}", version, 1.0, 1, 0.8, 0.5, 3, embedding=rng.normal(size=8).astype(np.float32)
        )
        client.xadd(keys.prediction_feed("m"), {ENTRY_FIELD: record.blob()})
        client.xadd(keys.labelled_feed("m"), {ENTRY_FIELD: record.labelled(1).blob()})


def report(client: redis.Redis) -> QualityReport | None:
    body = client.get(keys.quality_report("m"))
    return None if body is None else QualityReport.model_validate_json(body)


def kept(client: redis.Redis) -> tuple[str, ...]:
    """The versions the owner's last report names (those holding a slot)."""
    found = report(client)
    return () if found is None else found.versions or ()


def exported_versions(registry: CollectorRegistry) -> set[str]:
    """The versions of model ``m`` with a ``vai_cohort_window_events`` series (the whole model's)."""
    return {
        sample.labels["version"]
        for family in registry.collect()
        if family.name == "vai_cohort_window_events"
        for sample in family.samples
        if sample.labels["model"] == "m"
    }


def counted_as_itself(client: redis.Redis, registry: CollectorRegistry, version: str) -> bool:
    found = report(client)
    return (
        found is not None
        and version in (found.versions or ())
        and any(series.version == version for series in found.series)
        and version in exported_versions(registry)
    )


def test_rolling_versions_free_the_idle_ones_slots(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    """v1..v8 one after another, each idle once the next comes (the soak's digits roll-out): each is counted under
    its own label, the idle ones' series are removed, and nothing is ``__other__``."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    registry = CollectorRegistry()
    monitors.start(
        registry=registry, max_versions_per_model=5, calibration_window_s=WINDOW_S, estimate_window_s=WINDOW_S
    )
    for number in range(1, 9):
        version = f"v{number}"
        # the versions before have gone idle: at least one slot is free again (v1..v5 hold them all at first)
        wait_until(lambda: len(kept(redis_client)) < 5, timeout_s=15, what=f"a slot for {version}")
        send(redis_client, version)
        wait_until(partial(counted_as_itself, redis_client, registry, version), timeout_s=15, what=f"{version} own")
        exported = exported_versions(registry)
        assert OTHER not in exported, exported
    # v8 goes idle too after its window (a second): only it may be left, and then nothing
    wait_until(lambda: exported_versions(registry) <= {"v8"}, timeout_s=15, what="the idle versions' series gone")
    assert set(kept(redis_client)) <= {"v8"}


def test_a_version_back_after_eviction_is_counted_as_itself(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    registry = CollectorRegistry()
    monitors.start(
        registry=registry, max_versions_per_model=1, calibration_window_s=WINDOW_S, estimate_window_s=WINDOW_S
    )
    for version in ("v1", "v2", "v1"):
        wait_until(lambda: not kept(redis_client), timeout_s=15, what="the version before gone idle")
        send(redis_client, version)
        wait_until(partial(counted_as_itself, redis_client, registry, version), timeout_s=15, what=f"{version} own")


def test_the_cap_holds_while_more_versions_than_it_are_in_the_windows(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """Windows of an hour: four versions live at once with a cap of two, the two last share ``__other__``."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    registry = CollectorRegistry()
    monitors.start(registry=registry, max_versions_per_model=2)
    for version in ("v1", "v2", "v3", "v4"):
        send(redis_client, version)
    wait_until(
        lambda: exported_versions(registry) == {"v1", "v2", OTHER}, timeout_s=15, what="two versions and the rest"
    )
    found = report(redis_client)
    assert found is not None and found.versions == ("v1", "v2")
    assert {series.version for series in found.series} == {"v1", "v2", OTHER}


def test_a_new_owner_carries_on_only_the_reported_versions_its_windows_hold(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """The predecessor's report names ``old`` (nothing of it left in the labelled feed or the stored window) and
    ``v1`` (labelled predictions in the feed): ``v1`` keeps its slot, ``old``'s goes to the first new version."""
    previous = QualityReport(model="m", window_s=3600.0, versions=("old", "v1"), owner="gone", updated_at=1.0)
    redis_client.set(keys.quality_report("m"), previous.model_dump_json())
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, "v1")
    registry = CollectorRegistry()
    process = monitors.start(registry=registry, max_versions_per_model=2)
    wait_until(lambda: exported_versions(registry) == {"v1"}, timeout_s=15, what="v1 rebuilt")
    send(redis_client, "v2")
    send(redis_client, "v3")
    wait_until(
        lambda: exported_versions(registry) == {"v1", "v2", OTHER}, timeout_s=15, what="v2 in old's slot, v3 other"
    )
    found = report(redis_client)
    assert found is not None and found.versions == ("v1", "v2")
    assert {s.key.version for s in process.recent.snapshots("m")} == {"v1", "v2", OTHER}
