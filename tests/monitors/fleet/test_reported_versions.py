"""The versions an owner names in its quality report: every version its windows hold, at most
``VAI_MAX_VERSIONS_PER_MODEL``, and, after a take-over, those its predecessor's last report named that the rebuilt
windows still hold (real Redis, in-process monitors; see ``test_version_slots_freed.py`` for slots freed)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from common import keys
from common.cardinality import OTHER
from helpers import MonitorRunner, wait_until
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet.process import MonitorProcess
from monitors.fleet.results import QualityReport

FEED = keys.prediction_feed("m")


def send(client: redis.Redis, versions: list[str]) -> None:
    """One unlabelled prediction of each of ``versions``, in that order."""
    rng = np.random.default_rng(0)
    for index, version in enumerate(versions):
        embedding = rng.normal(size=8).astype(np.float32)
        record = MonitoringRecord("m", f"r{index}", version, 1.0, 0, 0.9, 0.5, 3, embedding=embedding)
        client.xadd(FEED, {ENTRY_FIELD: record.blob()})


def report_after_reading(client: redis.Redis, process: MonitorProcess, records: int) -> QualityReport:
    """The first report ``process`` publishes once it has read ``records`` predictions."""
    wait_until(
        lambda: (owned := process.owned.get("m")) is not None and owned.buffer.appended_total == records,
        timeout_s=15,
        what=f"{records} predictions read",
    )
    read_at = time.time()

    def report() -> QualityReport | None:
        body = client.get(keys.quality_report("m"))
        found = None if body is None else QualityReport.model_validate_json(body)
        return found if found is not None and found.owner == process.owner and found.updated_at > read_at else None

    return wait_until(report, what="a report published after the predictions were read")


def recent_versions(process: MonitorProcess) -> set[str]:
    return {s.key.version for s in process.recent.snapshots("m")}


def test_the_report_names_every_version_read_up_to_the_cap(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    """No labels at all: the versions are named all the same (a sidecar then answers them as known)."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, ["v2", "v1", "v2", "v3"])
    process = monitors.start(max_versions_per_model=2)
    report = report_after_reading(redis_client, process, 4)
    assert report.versions == ("v1", "v2") and report.series == ()
    assert recent_versions(process) == {"v1", "v2", OTHER}


def test_a_new_owner_lets_go_of_the_reported_versions_no_window_holds(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """``old`` and ``v1`` have left both windows, so only the report names them: kept first, they are let go once
    the windows are rebuilt without them, and ``v2`` and ``v1``, read next, take the two slots (the soak's owner
    carried every version ever kept over restarts, and counted the current ones as ``__other__``)."""
    previous = QualityReport(model="m", window_s=3600.0, versions=("old", "v1"), owner="gone", updated_at=1.0)
    redis_client.set(keys.quality_report("m"), previous.model_dump_json())
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, ["v2", "v1"])
    process = monitors.start(max_versions_per_model=2)
    assert report_after_reading(redis_client, process, 2).versions == ("v1", "v2")
    assert recent_versions(process) == {"v1", "v2"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            QualityReport(model="m", window_s=3600.0, owner="gone", updated_at=1.0).model_dump_json(
                exclude={"versions"}
            ),
            id="earlier-release-names-none",
        ),
        pytest.param("not a report", id="unreadable"),
    ],
)
def test_a_last_report_naming_no_versions_leaves_them_to_what_is_read(
    monitors: MonitorRunner, redis_client: redis.Redis, body: str
) -> None:
    redis_client.set(keys.quality_report("m"), body)
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, ["v2", "v1"])
    process = monitors.start(max_versions_per_model=2)
    assert report_after_reading(redis_client, process, 2).versions == ("v1", "v2")
