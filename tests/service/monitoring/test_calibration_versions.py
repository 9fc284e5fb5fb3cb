"""``/calibration`` and ``/calibration.png`` tell a version the monitors never saw from one they saw without labelled
predictions yet: the first is a 404 naming ``version`` and the known ones, the second answers as ever (an empty list
in the JSON, a 404 saying "yet" for the picture). A report of a monitor of an earlier release, which names no
versions, and the time before the first report answer as before. Real Redis, real monitors, real sidecars."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from common import keys
from helpers import MonitorRunner, event, wait_until
from monitors.fleet import labelled
from monitors.fleet.process import MonitorProcess
from monitors.fleet.results import QualityReport

JSON, PNG = "/v1/models/digits/calibration", "/v1/models/digits/calibration.png"
CAPPED: dict[str, Any] = {"max_versions_per_model": 2}
"""Two versions kept per model; the monitor counts a third as ``__other__``."""


def post(client: TestClient, version: str, count: int, *, labelled: bool) -> None:
    events = [event(f"{version}-{i}", model_version=version) for i in range(count)]
    for i, body in enumerate(events):
        if labelled:
            body["label"] = i % 2
    answer = client.post("/v1/events", json={"events": events})
    assert answer.status_code == 202 and answer.json()["accepted"] == count, answer.text


def report_of(client: redis.Redis) -> QualityReport | None:
    body = client.get(keys.quality_report("digits"))
    return None if body is None else QualityReport.model_validate_json(body)


def published(client: redis.Redis, owner: MonitorProcess, versions: tuple[str, ...] | None = None) -> QualityReport:
    """The first report of ``owner`` with the labelled predictions of ``v1`` (and naming ``versions`` if given)."""

    def found() -> QualityReport | None:
        report = report_of(client)
        ready = (
            report is not None
            and report.owner == owner.owner
            and (versions is None or report.versions == versions)
            and any(s.version == "v1" and s.cohort == "all" and s.count == 4 for s in report.series)
        )
        return report if ready else None

    return wait_until(found, timeout_s=30, what=f"a report of {owner.owner} naming {versions or 'v1'}")


@pytest.fixture
def seen(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: redis.Redis
) -> tuple[TestClient, MonitorProcess]:
    """A monitor that has seen ``v1`` with labels and ``v2`` without any, and a sidecar."""
    owner = monitors.start(**CAPPED)
    client = make_client(**CAPPED)
    post(client, "v1", 4, labelled=True)
    post(client, "v2", 2, labelled=False)
    published(redis_client, owner, ("v1", "v2"))
    return client, owner


def assert_unknown(client: TestClient, version: str, known: str) -> None:
    for route in (JSON, PNG):
        answer = client.get(route, params={"version": version})
        assert answer.status_code == 404, (route, answer.text)
        body = answer.json()
        assert body["field"] == "version", body
        assert repr(version) in body["error"] and f"known: {known})" in body["error"], body["error"]
        assert "VAI_MAX_VERSIONS_PER_MODEL" in body["error"] and "__other__" in body["error"], body["error"]


def assert_no_labels_yet(client: TestClient, version: str) -> None:
    """As before versions were checked: an empty list in the JSON, a 404 saying "yet" for the picture."""
    answer = client.get(JSON, params={"version": version})
    assert answer.status_code == 200, answer.text
    assert answer.json()["series"] == []
    picture = client.get(PNG, params={"version": version})
    assert picture.status_code == 404, picture.text
    assert picture.json()["field"] == "version" and "yet" in picture.json()["error"], picture.text


def test_a_version_no_monitor_saw_is_a_404_naming_it_and_the_known_ones(
    seen: tuple[TestClient, MonitorProcess],
) -> None:
    """Both answered as if the version had no labels yet: an empty 200 JSON, a picture with "no labelled
    predictions ... yet"."""
    client, _ = seen
    assert_unknown(client, "v1-typo", known="v1, v2, __other__")


def test_a_version_seen_without_labels_yet_is_answered_as_before(seen: tuple[TestClient, MonitorProcess]) -> None:
    client, _ = seen
    assert_no_labels_yet(client, "v2")
    assert [s["version"] for s in client.get(JSON, params={"version": "v1"}).json()["series"]] == ["v1"]
    assert client.get(PNG, params={"version": "v1"}).status_code == 200


def test_a_version_past_the_cap_is_a_404_that_points_to_other(
    seen: tuple[TestClient, MonitorProcess], redis_client: redis.Redis
) -> None:
    """The monitor counts ``v3`` as ``__other__``: asked by its own name it is unknown, and the error says where
    its predictions went; ``__other__`` answers them."""
    client, _ = seen
    post(client, "v3", 4, labelled=True)

    def other_labelled() -> bool:
        report = report_of(redis_client)
        return report is not None and any(s.version == "__other__" and s.count == 4 for s in report.series)

    wait_until(other_labelled, timeout_s=30, what="v3's labelled predictions counted as __other__")
    assert_unknown(client, "v3", known="v1, v2, __other__")
    series = client.get(JSON, params={"version": "__other__", "cohort": "all"}).json()["series"]
    assert [(s["version"], s["count"]) for s in series] == [("__other__", 4)]
    assert client.get(PNG, params={"version": "__other__"}).status_code == 200


def test_a_successor_keeps_the_versions_its_predecessor_saw_while_its_windows_hold_them(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``v2`` was seen without labels: the successor keeps it from the stored window of recent predictions, and lets
    it go (a 404 naming the versions kept) once nothing of it is left there, as its predecessor would have, so that
    a later version takes its slot (the first five versions used to keep their slots for good)."""
    monkeypatch.setattr(labelled, "VERSION_GRACE_S", 0.5)  # let go half a second after its last use, not a minute
    monkeypatch.setattr(labelled, "QUALITY_REFRESH_S", 0.5)  # re-measured with no new record, as time passes
    settings = {**CAPPED, "estimate_window_s": 1.0}
    first = monitors.start(monitor_id="first", **settings)
    client = make_client(**CAPPED)
    post(client, "v1", 4, labelled=True)
    post(client, "v2", 2, labelled=False)
    published(redis_client, first, ("v1", "v2"))
    wait_until(lambda: redis_client.xlen(keys.prediction_feed("digits")) == 0, what="every prediction examined")
    monitors.stop(first)

    successor = monitors.start(monitor_id="successor", **settings)
    published(redis_client, successor, ("v1",))  # v2 let go once the recent window holds nothing of it
    assert_unknown(client, "v2", known="v1, __other__")


def without_versions(report: QualityReport) -> bytes:
    """``report`` as a monitor of an earlier release wrote it: no ``versions`` field."""
    return report.model_dump_json(exclude={"versions"}).encode()


def test_a_report_of_an_earlier_monitor_takes_any_version_as_known(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """A rolling upgrade: this sidecar reads a report without the field, which must not make every version
    unknown."""
    client = make_client()
    redis_client.sadd(keys.MONITORED_MODELS, "digits")
    report = QualityReport(model="digits", window_s=3600.0, owner="m1", updated_at=1.0)
    redis_client.set(keys.quality_report("digits"), without_versions(report))
    assert b"versions" not in (redis_client.get(keys.quality_report("digits")) or b"")
    assert_no_labels_yet(client, "any")


def test_before_the_first_report_any_version_is_answered_as_before(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    client = make_client()
    redis_client.sadd(keys.MONITORED_MODELS, "digits")
    assert_no_labels_yet(client, "any")
