"""The owner's quality rounds: nothing is measured, published or stored while no record or label reached the model's
windows (the report refreshed every ``QUALITY_REFRESH_S`` all the same), and the window of recent predictions is
written at most every ``VAI_MONITOR_RECENT_SAVE_S``, and once more at a hand-back (real Redis, in-process monitors)."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import redis

from common import keys
from common.redis import text
from helpers import MonitorRunner, wait_until
from monitors.cohorts import ALL
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet import labelled
from monitors.fleet.process import MonitorProcess
from monitors.fleet.recent_store import StoredWindow, decode
from monitors.fleet.results import QualityReport

REFRESH_S = 1.5
SAVE_S = 1.5
_IDS = itertools.count()


@pytest.fixture(autouse=True)
def _short_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labelled, "QUALITY_REFRESH_S", REFRESH_S, raising=False)


def send(client: redis.Redis, count: int, *, label: bool = False) -> None:
    rng = np.random.default_rng(0)
    for _ in range(count):
        record = MonitoringRecord(
            "m", f"r{next(_IDS)}", "v1", 1.0, 1, 0.8, 0.5, 3, embedding=rng.normal(size=8).astype(np.float32)
        )
        client.xadd(keys.prediction_feed("m"), {ENTRY_FIELD: record.blob()})
        if label:
            client.xadd(keys.labelled_feed("m"), {ENTRY_FIELD: record.labelled(1).blob()})


def report(client: redis.Redis) -> QualityReport | None:
    body = client.get(keys.quality_report("m"))
    return None if body is None else QualityReport.model_validate_json(body)


def stored(client: redis.Redis) -> tuple[float, int] | None:
    """When the stored window of recent predictions was written (Redis's clock), and how many predictions it has."""
    body = client.get(keys.recent_predictions("m"))
    if body is None:
        return None
    copy = decode(text(body), now=time.time())
    return StoredWindow.model_validate_json(body).at, sum(s.confidence.size for s in copy.series if s.cohort == ALL)


def labelled_in_report(client: redis.Redis, count: int) -> QualityReport | None:
    found = report(client)
    return found if found is not None and sum(s.count for s in found.series) == count else None


def read(process: MonitorProcess, count: int) -> bool:
    return sum(s.confidence.size for s in process.recent.snapshots("m") if s.key.cohort == ALL) == count


def test_an_unchanged_model_is_reported_only_every_refresh(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    """Rounds every 50 ms, nothing new after the first labels: the report is published again only once the
    refresh is due, and the stored window is not written again at all."""
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, 5, label=True)
    process = monitors.start(monitor_report_s=0.05, monitor_recent_save_s=SAVE_S)
    wait_until(lambda: read(process, 5) and labelled_in_report(redis_client, 5), timeout_s=15, what="all read")
    read_at = time.time()
    first = wait_until(
        lambda: (found := report(redis_client)) is not None and found.updated_at > read_at and found,
        what="a report of everything read",
    )
    again = wait_until(
        lambda: (found := report(redis_client)) is not None and found.updated_at > first.updated_at and found,
        timeout_s=15,
        what="the refresh",
    )
    assert again.updated_at - first.updated_at >= REFRESH_S - 0.2, "published again with nothing changed"
    window = stored(redis_client)
    assert window is not None and window[1] == 5
    wait_until(lambda: (found := report(redis_client)) is not None and found.updated_at > again.updated_at)
    assert stored(redis_client) == window, "the unchanged window of recent predictions written again"


def test_the_recent_window_is_written_at_most_every_save_period(
    monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, 3)
    process = monitors.start(monitor_report_s=0.05, monitor_recent_save_s=SAVE_S)
    first = wait_until(lambda: (found := stored(redis_client)) is not None and found[1] == 3 and found, timeout_s=15)
    send(redis_client, 2)
    wait_until(lambda: read(process, 5), timeout_s=15, what="the next predictions read")
    later = wait_until(lambda: (found := stored(redis_client)) is not None and found[1] == 5 and found, timeout_s=15)
    assert later[0] - first[0] >= SAVE_S - 0.2, (first, later)


def test_a_hand_back_stores_the_latest_window(monitors: MonitorRunner, redis_client: redis.Redis) -> None:
    redis_client.sadd(keys.MONITORED_MODELS, "m")
    send(redis_client, 3)
    process = monitors.start(monitor_report_s=0.05, monitor_recent_save_s=SAVE_S)
    wait_until(lambda: (found := stored(redis_client)) is not None and found[1] == 3, timeout_s=15)
    send(redis_client, 2)
    wait_until(lambda: read(process, 5), timeout_s=15, what="the next predictions read")
    monitors.stop(process)  # gives its lease back, before the next write was due
    found = stored(redis_client)
    assert found is not None and found[1] == 5
