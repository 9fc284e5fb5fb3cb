"""Monitoring through the sidecar: labels joined on any replica, figures from the fleet monitor, drift on real
embeddings, and what the sidecar publishes when Redis or the budget says no."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from demo.corruptions import corrupt
from demo.models.training import DatasetSplit
from helpers import (
    FAST_DRIFT,
    MonitorRunner,
    event,
    full_redis,
    load_torchscript,
    sidecar_of,
    stream_entries,
    wait_until,
)
from monitors.drift.base import DriftEvent
from monitors.fleet.results import SeriesQuality
from service.app import create_app
from service.feed.labels import OFF_LOOP_FROM
from service.feed.writer import FeedWriter
from service.monitoring.public import newest
from service.settings import SidecarSettings

LABELLED = {"digits": {"delayed_labels": True}}
"""The config that declares the model's labels come later: its predictions wait for them from the first event."""


def probabilities_event(request_id: str, probabilities: list[float], **fields: Any) -> dict[str, Any]:
    body = event(request_id, probabilities=probabilities, **fields)
    body.pop("logits")
    return body


def expected_ece(confidence: npt.NDArray[np.floating[Any]], correct: npt.NDArray[np.bool_], bins: int = 15) -> float:
    """Top-label ECE written out independently: equal-width bins (k/15, (k+1)/15]."""
    total = 0.0
    for k in range(bins):
        lower, upper = k / bins, (k + 1) / bins
        chosen = (confidence > lower) & (confidence <= upper) if k else (confidence <= upper)
        if chosen.any():
            total += chosen.sum() / len(confidence) * abs(correct[chosen].mean() - confidence[chosen].mean())
    return total


def _feed(client: TestClient) -> FeedWriter:
    """The sidecar's monitoring feed writer (there is one whenever monitoring is on, as in these tests)."""
    feed = sidecar_of(client).feed
    assert feed is not None
    return feed


def _series(client: TestClient, count: int, **params: str) -> dict[str, dict[str, Any]]:
    """The calibration series once the monitor has published ``count`` labelled predictions in ``all``."""

    def published() -> dict[str, dict[str, Any]] | None:
        response = client.get("/v1/models/digits/calibration", params=params)
        if response.status_code in (404, 503):  # not announced to the monitors yet, or Redis slow: retry
            return None
        assert response.status_code == 200, response.text
        found = response.json()["series"]
        series = {s["cohort"]: s for s in found}
        return series if series.get("all", {}).get("count") == count else None

    return wait_until(published, timeout_s=30, what=f"{count} labelled predictions in the published figures")


def test_delayed_labels_join_predictions_and_feed_calibration(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: Any
) -> None:
    registry, monitor_registry = CollectorRegistry(), CollectorRegistry()
    monitors.start(registry=monitor_registry, cohort_keys=("region",))
    client = make_client(registry=registry, cohort_keys=("region",), models=LABELLED)
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3) * 0.7, size=60)
    labels = [int(rng.choice(3, p=p)) for p in probabilities]
    events = [
        probabilities_event(f"r{i}", (p / p.sum()).round(12).tolist(), cohort={"region": "eu"})
        for i, p in enumerate(probabilities)
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 60
    wait_until(lambda: redis_client.exists(keys.prediction("digits", "r59")), what="the records in Redis")

    body = {
        "labels": [
            {"model": "digits", "request_id": f"r{i}", "label": 3 if i == 2 else label}
            for i, label in enumerate(labels)
        ]
        + [
            {"model": "digits", "request_id": "never-seen", "label": 1},
            {"model": "other", "request_id": "r1", "label": 1},
            {"model": "digits", "request_id": "r0", "label": labels[0]},
            {"model": "digits", "request_id": "r3", "label": (labels[3] + 1) % 3},
        ]
    }  # r2 with a class the model does not have; r0 again (a retry: a duplicate); r3 again with another class
    result = client.post("/v1/labels", json=body).json()
    assert (result["matched"], result["duplicates"]) == (60 - 1 + 1, 1), result
    assert [u["request_id"] for u in result["unmatched"]] == ["never-seen", "r1"]
    assert [(r["request_id"], r["error"].split(":")[0]) for r in result["rejected"]] == [
        ("r2", "labels.2.label"),
        ("r3", "labels.63.label"),
    ]
    assert "labelled" in result["rejected"][1]["error"]
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 59
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "duplicate"}) == 1
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "false"}) == 1
    assert registry.get_sample_value("vai_labels_total", {"model": "__unknown__", "matched": "false"}) == 1
    series = _series(client, 59)
    assert set(series) == {"all", "region=eu"}
    kept = [i for i in range(60) if i != 2]
    confidence = probabilities[kept].max(axis=1)
    correct = probabilities[kept].argmax(axis=1) == np.asarray(labels)[kept]
    assert series["all"]["ece"] == pytest.approx(expected_ece(confidence, correct), abs=1e-9)
    brier = np.mean(((probabilities[kept] - np.eye(3)[np.asarray(labels)[kept]]) ** 2).sum(axis=1))
    assert series["all"]["brier_score"] == pytest.approx(brier, abs=1e-9)
    # The monitor writes its report to Redis, then its gauges: the scrape may lag the API by a moment.
    wait_until(
        lambda: (
            monitor_registry.get_sample_value(
                "vai_calibration_ece", {"model": "digits", "version": "unversioned", "cohort": "all", "value": "all"}
            )
            == pytest.approx(series["all"]["ece"])
        ),
        what="the monitor's ECE gauge to show the published figure",
    )
    png = client.get("/v1/models/digits/calibration.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # A slice named as the series are (region=eu) or as the explanations' filter takes it (region:eu).
    for named in ("region=eu", "region:eu"):
        sliced = client.get("/v1/models/digits/calibration", params={"cohort": named}).json()["series"]
        assert [s["cohort"] for s in sliced] == ["region=eu"], named
        assert client.get("/v1/models/digits/calibration.png", params={"cohort": named}).status_code == 200
    missing = client.get("/v1/models/digits/calibration.png", params={"cohort": "region:us"})
    assert missing.status_code == 404 and missing.json()["field"] == "cohort"


def test_a_labelled_record_sent_twice_counts_once(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """A sidecar whose write timed out sends its batch again, though the first may have landed: the monitor
    takes each request's labelled record once, and counts the copy."""
    monitor_registry = CollectorRegistry()
    monitors.start(registry=monitor_registry)
    client = make_client(models=LABELLED)
    events = [probabilities_event(f"r{i}", [0.7, 0.2, 0.1]) for i in range(6)]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 6
    labels = [{"model": "digits", "request_id": f"r{i}", "label": i % 2} for i in range(6)]
    assert client.post("/v1/labels", json={"labels": labels}).json()["matched"] == 6
    first = _series(client, 6)["all"]
    copied = stream_entries(redis_client, keys.labelled_feed("digits"))[2][1]
    redis_client.xadd(keys.labelled_feed("digits"), copied)  # type: ignore[arg-type]  # bytes fields, as sent

    def counted() -> bool:
        value = monitor_registry.get_sample_value("vai_monitor_labelled_duplicates_total", {"model": "digits"})
        return value == 1

    wait_until(counted, what="the copy counted")
    seen_at = time.time()
    report = wait_until(
        lambda: (r := client.get("/v1/models/digits/calibration").json())["updated_at"] > seen_at and r,
        what="a report published after the copy",
    )
    assert [s["count"] for s in report["series"] if s["cohort"] == "all"] == [6]
    assert next(s for s in report["series"] if s["cohort"] == "all")["ece"] == first["ece"]


def test_labels_wait_in_redis_until_they_arrive(make_client: Callable[..., TestClient]) -> None:
    first = make_client(models=LABELLED)
    first.post("/v1/events", json=event("late", logits=[0.0, 3.0]))
    first.__exit__(None, None, None)  # this replica goes away; its records were flushed to Redis on shutdown
    second = make_client(models=LABELLED)  # a replica that never saw the event or its model
    answer = second.post("/v1/labels", json={"labels": [{"model": "digits", "request_id": "late", "label": 1}]})
    assert answer.json()["matched"] == 1


def test_label_in_the_event_counts_as_matched(make_client: Callable[..., TestClient], monitors: MonitorRunner) -> None:
    monitors.start()
    registry = CollectorRegistry()
    client = make_client(registry=registry)
    client.post("/v1/events", json={"events": [event("a", label=0), event("b", label=1)]})
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 2
    assert _series(client, 2)["all"]["count"] == 2


def test_a_worse_cohort_shows_lower_accuracy_with_a_wider_interval(
    make_client: Callable[..., TestClient], monitors: MonitorRunner
) -> None:
    monitor_registry = CollectorRegistry()
    monitors.start(registry=monitor_registry, cohort_keys=("region",))
    client = make_client(cohort_keys=("region",), models=LABELLED)
    rng = np.random.default_rng(1)
    events, labels = [], []
    for i in range(400):
        region = "eu" if i % 8 == 0 else "us"  # eu: 50 events, right 60% of the time; us: 350, right 95%
        right = rng.random() < (0.6 if region == "eu" else 0.95)
        events.append(event(f"r{i}", logits=[3.0, 0.0], cohort={"region": region}))
        labels.append(0 if right else 1)
    client.post("/v1/events", json={"events": events})
    client.post(
        "/v1/labels",
        json={"labels": [{"model": "digits", "request_id": f"r{i}", "label": label} for i, label in enumerate(labels)]},
    )
    series = _series(client, 400)
    eu, us = series["region=eu"], series["region=us"]
    assert eu["accuracy"] < us["accuracy"] - 0.2
    assert eu["accuracy_upper"] - eu["accuracy_lower"] > 2 * (us["accuracy_upper"] - us["accuracy_lower"])
    assert eu["count"] == 50

    def figure(name: str) -> float | None:
        return monitor_registry.get_sample_value(
            name, {"model": "digits", "version": "unversioned", "cohort": "region", "value": "eu"}
        )

    assert wait_until(lambda: figure("vai_cohort_labelled_total"), what="the monitor's cohort gauges") == 50
    assert figure("vai_accuracy") == pytest.approx(eu["accuracy"])


def _digits_batch(
    module: torch.jit.ScriptModule, images: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return module.embed(x).numpy(), torch.softmax(module(x), dim=1).numpy()


def _post(
    client: TestClient, prefix: str, embeddings: npt.NDArray[np.float32], probabilities: npt.NDArray[np.float32]
) -> None:
    events = [
        probabilities_event(f"{prefix}{i}", (p / p.sum()).tolist(), embedding=e.tolist())
        for i, (e, p) in enumerate(zip(embeddings, probabilities, strict=True))
    ]
    for start in range(0, len(events), 200):
        assert client.post("/v1/events", json={"events": events[start : start + 200]}).status_code == 202


def test_online_drift_quiet_on_clean_digits_and_alarms_on_corrupted_ones(
    make_client: Callable[..., TestClient],
    monitors: MonitorRunner,
    digits_path: Path,
    digits_split: DatasetSplit,
) -> None:
    module = load_torchscript(digits_path)
    monitor_registry = CollectorRegistry()
    first = monitors.start(registry=monitor_registry, drift=FAST_DRIFT)
    client = make_client(monitor_max_per_second=0)  # every event reaches the detectors
    # The reference is held-out data, never the training split (its embeddings are more confident).
    reference_x, reference_p = _digits_batch(module, digits_split.test.features[260:])
    response = client.put(
        "/v1/models/digits/reference", json={"embeddings": reference_x.tolist(), "probabilities": reference_p.tolist()}
    )
    assert response.status_code == 202 and response.json()["dims"] == 64
    wait_until(
        lambda: client.get("/v1/models/digits/drift").json().get("state") == "monitoring",
        timeout_s=60,
        what="calibration",
    )
    wait_until(
        lambda: monitor_registry.get_sample_value("vai_drift_monitoring", {"model": "digits"}) == 1,
        what="the state gauge to say the detectors watch",
    )
    assert monitor_registry.get_sample_value("vai_drift_warmup_records", {"model": "digits"}) == 0

    def detected() -> float | None:
        return monitor_registry.get_sample_value("vai_drift_detected", {"model": "digits", "detector": "mmd_online"})

    clean_x, clean_p = _digits_batch(module, digits_split.test.features[:60])
    _post(client, "clean", clean_x, clean_p)  # 60 events, well within the ERT of 100
    wait_until(lambda: detected() is not None, timeout_s=30, what="the online detector to score clean traffic")
    assert detected() == 0.0

    # A clear shift: at severity 1.5 only ~12% of the events rose above their threshold (clean: ~8/ERT), too
    # little to call; at 3.0 nearly 80% do, and the statistic stays above it (the verdict is the latest event's).
    shifted, _ = corrupt(digits_split.test.features[60:260], seed=0, kinds=("noise",), severity=3.0)
    drift_x, drift_p = _digits_batch(module, shifted)
    _post(client, "drift", drift_x, drift_p)
    wait_until(lambda: detected() == 1.0, timeout_s=30, what="the online detector to alarm on corrupted traffic")

    def alarm_published() -> tuple[dict[str, Any], dict[str, Any]] | None:
        status = client.get("/v1/models/digits/drift").json()
        online = next(d for d in status["detectors"] if d["name"] == "mmd_online")
        return (status, online) if online["drift"] else None

    status, online = wait_until(alarm_published, what="every replica to answer the alarm")
    assert online["drift"] and online["score"] > online["threshold"] and online["since"] is not None
    assert status["examined"] >= 260 and status["owner"] == first.owner

    monitors.stop(first)  # the owner goes away; another monitor adopts the stored calibration
    second = monitors.start(drift=FAST_DRIFT)
    wait_until(
        lambda: (
            (s := client.get("/v1/models/digits/drift").json())["owner"] == second.owner and s["state"] == "monitoring"
        ),
        timeout_s=15,
        what="the stored calibration to be adopted without recalibrating",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"embeddings": [[1.0, 2.0]]}, "embeddings", id="one-row"),
        pytest.param({"embeddings": [[1.0], [2.0, 3.0]]}, "embeddings", id="ragged"),
        pytest.param({"embeddings": [[1.0, 2.0], [1e39, 0.0]]}, "embeddings", id="beyond-float32"),
        pytest.param(
            {"embeddings": [[1.0, 2.0], [3.0, 4.0]], "probabilities": [[0.5, 0.6], [0.5, 0.5]]},
            "probabilities",
            id="probabilities-not-summing-to-one",
        ),
        pytest.param(
            {"embeddings": [[1.0, 2.0], [3.0, 4.0]], "probabilities": [[1.0, 0.0]]},
            "probabilities",
            id="row-count-mismatch",
        ),
        pytest.param({"vectors": []}, "body", id="wrong-key"),
    ],
)
def test_bad_reference_is_422_naming_the_field(make_client: Callable[..., TestClient], body: Any, field: str) -> None:
    response = make_client().put("/v1/models/digits/reference", json=body)
    assert response.status_code == 422 and response.json()["field"] == field


def test_a_reference_too_small_for_the_monitors_is_422_at_upload(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """The live monitors publish their drift settings; a reference with fewer distinct rows than those need is
    refused when uploaded, naming what is missing, instead of a 202 and a calibration that fails later."""
    client = make_client()
    rng = np.random.default_rng(8)
    assert client.put("/v1/models/other/reference", json={"embeddings": [[1.0, 2.0], [3.0, 4.0]]}).status_code == 202, (
        "no monitor has said what it needs: the monitor judges, as before"
    )
    process = monitors.start(drift=FAST_DRIFT)
    wait_until(lambda: redis_client.get(keys.DRIFT_CONFIG) is not None, what="the monitor's drift settings")
    least = process.settings.drift.least_rows(64)  # 64-d, above pca_components: PCA takes its share first
    assert least > process.settings.drift.least_reference
    rows = rng.normal(size=(least - 1, 64))
    refused = client.put("/v1/models/digits/reference", json={"embeddings": [*rows.tolist(), rows[0].tolist()]})
    assert refused.status_code == 422, refused.text
    assert refused.json() == {
        "error": f"embeddings: {least - 1} distinct rows, but the monitors' drift detectors need at least {least} "
        "for 64-d embeddings (VAI_DRIFT__WINDOW_SIZE=10, VAI_DRIFT__PCA_SHARE=0.5 of them fit PCA)",
        "field": "embeddings",
    }
    one_row = client.put("/v1/models/single/reference", json={"embeddings": [[0.5, 1.0], [0.5, 1.0]]})
    assert (one_row.status_code, one_row.json()["field"]) == (422, "embeddings"), one_row.text
    assert "single" not in client.get("/status").json()["queue_lengths"], "a refused upload takes no model slot"
    accepted = client.put("/v1/models/digits/reference", json={"embeddings": rng.normal(size=(least, 64)).tolist()})
    assert accepted.status_code == 202, accepted.text
    wait_until(
        lambda: client.get("/v1/models/digits/drift").json().get("state") == "monitoring",
        timeout_s=60,
        what="the smallest reference accepted to calibrate",
    )


def test_reference_as_npy_upload_and_pickles_refused(make_client: Callable[..., TestClient]) -> None:
    import io

    client = make_client()
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32))
    response = client.put(
        "/v1/models/digits/reference", content=buffer.getvalue(), headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 202 and response.json() == {
        "model": "digits",
        "state": "calibrating",
        "rows": 400,
        "dims": 8,
        "outputs": False,
    }
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    refused = client.put(
        "/v1/models/digits/reference", content=pickled.getvalue(), headers={"content-type": "application/octet-stream"}
    )
    assert refused.status_code == 422 and refused.json()["field"] == "body"
    lying = buffer.getvalue().replace(b"(400, 8)", b"(99999999, 99999)")  # np.load would allocate 36 TiB first
    refused = client.put("/v1/models/digits/reference", content=lying, headers={"content-type": "application/x-npy"})
    assert refused.status_code == 422 and "bytes follow it" in refused.json()["error"], refused.text
    truncated = buffer.getvalue()[:-4]
    refused = client.put(
        "/v1/models/digits/reference", content=truncated, headers={"content-type": "application/x-npy"}
    )
    assert refused.status_code == 422 and refused.json()["field"] == "body", refused.text
    fortran = io.BytesIO()
    np.save(fortran, np.asfortranarray(np.random.default_rng(1).normal(size=(300, 8))))
    answer = client.put(
        "/v1/models/digits/reference", content=fortran.getvalue(), headers={"content-type": "application/x-npy"}
    )
    assert answer.status_code == 202 and (answer.json()["rows"], answer.json()["dims"]) == (300, 8), answer.text
    mismatch = client.post("/v1/events", json=event("x", embedding=[0.0] * 5))
    assert mismatch.status_code == 422 and mismatch.json()["field"] == "embedding"


def test_drift_status_age_is_redis_clock_not_the_monitor_hosts(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A monitor host whose clock runs an hour behind the sidecar's: its status is still fresh (``age_s`` is Redis's
    clock against the owner's Redis-clock stamp), where a comparison of the two hosts' clocks read it an hour old."""
    behind = types.SimpleNamespace(time=lambda: time.time() - 3600)
    monkeypatch.setattr("monitors.fleet.reports.time", behind)  # the monitor's reports only: not this host's clock
    monitors.start()
    client = make_client(monitor_max_per_second=0)
    assert client.post("/v1/events", json=event("a", embedding=[0.1, 0.2])).status_code == 202
    status = wait_until(
        lambda: (answer := client.get("/v1/models/digits/drift")).status_code == 200 and answer.json(),
        timeout_s=20,
        what="a published drift status",
    )
    assert 0.0 <= status["age_s"] < 60.0, status
    assert abs(status["updated_at"] - time.time()) < 60.0, "stamped with Redis's clock"


def test_a_monitor_that_is_behind_says_so_and_ingest_never_waits(
    make_client: Callable[..., TestClient], monitors: MonitorRunner
) -> None:
    monitor = monitors.start(drift_buffer_events=100)
    client = make_client(monitor_max_per_second=0)
    posted_at = time.monotonic()
    an_hour_ago = time.time() - 3600  # the events' own time (the client's): not how long they have waited
    client.post("/v1/events", json=event("first", embedding=[0.1, 0.2], timestamp=an_hour_ago))
    wait_until(lambda: "digits" in monitor.owned, what="the monitor to take the model")
    release = threading.Event()
    drift = monitor.owned["digits"]

    def hung_drain(max_events: int) -> list[DriftEvent]:  # a hung detector
        release.wait(60)
        return []

    drift.buffer.drain = hung_drain  # type: ignore[method-assign]  # replaced on purpose, for this one buffer
    try:
        for start in range(0, 600, 100):
            events = [event(f"e{i}", embedding=[0.1, 0.2], timestamp=an_hour_ago) for i in range(start, start + 100)]
            assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 100

        def behind() -> dict[str, Any] | None:
            answer = client.get("/v1/models/digits/drift")
            if answer.status_code in (404, 503):  # a busy host: no report published yet, or Redis slow to answer
                return None
            status: dict[str, Any] = answer.json()
            return status if status["backlog"] >= 500 and status["oldest_waiting_s"] > 0 else None

        status = wait_until(behind, timeout_s=20, what="the backlog to be published")
        assert status["examined"] < 600
        assert status["oldest_waiting_s"] <= time.monotonic() - posted_at + 1.0, status
    finally:
        release.set()


def test_a_warming_up_monitor_says_how_far_its_reference_has_got(
    make_client: Callable[..., TestClient], monitors: MonitorRunner
) -> None:
    """Without an uploaded reference the first ``reference_events`` records become it: any replica shows how
    many the monitor has collected, so "warming up" reads as progress, not as silence."""
    monitor_registry = CollectorRegistry()
    monitors.start(registry=monitor_registry, drift=FAST_DRIFT)
    client = make_client(monitor_max_per_second=0)  # every event reaches the monitor
    rng = np.random.default_rng(3)
    events = [event(f"w{i}", embedding=rng.normal(size=8).tolist()) for i in range(150)]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 150

    def collected() -> dict[str, Any] | None:
        response = client.get("/v1/models/digits/drift")
        status = response.json() if response.status_code == 200 else {}
        return status if status.get("warmup_collected") == 150 else None

    status = wait_until(collected, timeout_s=20, what="the warm-up progress to be published")
    assert status["state"] == "warming_up" and status["warmup_needed"] == FAST_DRIFT["reference_events"]

    def gauge(name: str) -> float | None:
        return monitor_registry.get_sample_value(name, {"model": "digits"})

    # Prometheus has it too (set once the status is in Redis): not watching yet, 150 collected, nothing failed.
    wait_until(lambda: gauge("vai_drift_warmup_records") == 150, what="the warm-up gauge")
    assert gauge("vai_drift_monitoring") == 0 and gauge("vai_drift_calibration_failed") == 0


def test_records_redis_cannot_take_are_dropped_oldest_first_and_counted(
    make_client: Callable[..., TestClient],
) -> None:
    registry = CollectorRegistry()  # Redis unreachable: the records wait in memory, up to the bound
    client = make_client(
        registry=registry, monitor_buffer_records=2, label_records="all", redis_url="redis://127.0.0.1:1/0"
    )
    feed = _feed(client)
    client.post("/v1/events", json=event("first", model="m0"))
    wait_until(lambda: not feed.redis_up, what="the first write to fail")
    client.post("/v1/events", json={"events": [event("a", model="m1"), event("b", model="m2"), event("c", model="m2")]})

    def dropped(model: str, feed_name: str) -> float | None:
        labels = {"model": model, "feed": feed_name, "reason": "redis_unavailable"}
        return registry.get_sample_value("vai_feed_records_dropped_total", labels)

    # Each event makes a record for label joins and one for the drift feed: 8 records, 2 kept (c's).
    assert dropped("m0", "label_join") == 1 and dropped("m0", "predictions") == 1
    assert dropped("m1", "label_join") == 1 and dropped("m1", "predictions") == 1
    assert dropped("m2", "label_join") == 1 and dropped("m2", "predictions") == 1
    assert len(feed) == 2


def test_records_still_waiting_at_shutdown_are_counted(make_settings: Callable[..., SidecarSettings]) -> None:
    registry = CollectorRegistry()  # Redis unreachable: nothing can be written, not even at shutdown
    settings = make_settings(label_records="all", redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings, registry=registry)) as client:
        feed = _feed(client)
        client.post("/v1/events", json={"events": [event("a", model="m"), event("b", model="m")]})
        wait_until(lambda: not feed.redis_up, what="the first write to fail")
        assert len(feed) == 4  # a label-join record and a drift-feed record per event

    def dropped(feed_name: str) -> float | None:
        labels = {"model": "m", "feed": feed_name, "reason": "redis_unavailable"}
        return registry.get_sample_value("vai_feed_records_dropped_total", labels)

    assert dropped("label_join") == 2 and dropped("predictions") == 2


def test_the_budget_samples_the_drift_feed_and_counts_what_it_skips(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, monitor_max_per_second=20, models=LABELLED)
    now = time.time()
    events = [event(f"e{i}", timestamp=now) for i in range(300)]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 300
    skipped = registry.get_sample_value(
        "vai_feed_records_dropped_total", {"model": "digits", "feed": "predictions", "reason": "budget"}
    )
    assert skipped is not None and 200 <= skipped < 300
    wait_until(lambda: redis_client.xlen("vai:feed:digits") == 300 - skipped, what="the sampled records in Redis")
    # Prediction records for label joins are never sampled.
    wait_until(lambda: len(list(redis_client.scan_iter("vai:pred:digits:*"))) == 300, what="every prediction record")


def test_records_redis_refuses_are_counted(make_client: Callable[..., TestClient], redis_client: Any) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, models=LABELLED)
    with full_redis(redis_client):
        client.post("/v1/events", json={"events": [event("a"), event("b")]})

        def refused(feed_name: str) -> float:
            labels = {"model": "digits", "feed": feed_name, "reason": "redis_error"}
            return registry.get_sample_value("vai_feed_records_dropped_total", labels) or 0.0

        wait_until(lambda: refused("predictions") == 2 and refused("label_join") == 2, what="refusals counted")


def test_records_are_kept_once_a_model_gets_labels_and_every_replica_learns_it(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    first, second = make_client(), make_client()  # auto: nothing declared
    first.post("/v1/events", json=event("before"))
    assert first.post("/v1/labels", json=_label("before")).json()["unmatched"], "no record was kept yet"
    first.post("/v1/events", json=event("after"))
    assert first.post("/v1/labels", json=_label("after")).json()["matched"] == 1
    wait_until(lambda: redis_client.sismember("vai:labelled-models", "digits"), what="the other replicas to be told")
    second_feed = _feed(second)
    wait_until(lambda: second_feed.keeps_records("digits"), what="the policy refresh")
    second.post("/v1/events", json=event("on-second"))
    # Labels come late by nature: this one waits until the second replica's record has reached Redis.
    wait_until(lambda: redis_client.exists("vai:pred:digits:on-second"), what="the second replica's record")
    assert first.post("/v1/labels", json=_label("on-second")).json()["matched"] == 1


def test_labels_sent_right_after_their_events_to_another_replica_join(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    """Behind a Service a label pipeline may post a label a moment after its event, to another replica, before
    the serving replica's writer has put the record in Redis: the label looks once more before it is unmatched."""
    serving = make_client(models=LABELLED)
    labelling = make_client(models=LABELLED, label_join_retry_s=1.0)
    ids = [f"quick{i}" for i in range(20)]
    assert serving.post("/v1/events", json={"events": [event(i) for i in ids]}).json()["accepted"] == 20
    labels = {"labels": [{"model": "digits", "request_id": i, "label": 0} for i in ids]}
    answer = labelling.post("/v1/labels", json=labels).json()
    assert (answer["matched"], answer["unmatched"]) == (20, [])
    assert redis_client.xlen("vai:labelled:digits") == 20
    assert labelling.post("/v1/labels", json=_label("never-sent")).json()["unmatched"][0]["request_id"] == "never-sent"


def test_a_marker_left_by_an_earlier_prediction_of_the_id_does_not_hide_the_new_record(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    """A request id reused within the joined marker's life (ids should be unique per model): the label that finds
    the old marker looks again like one that found nothing, and joins the new record once it is written."""
    serving = make_client(models=LABELLED)
    labelling = make_client(models=LABELLED, label_join_retry_s=1.0)
    redis_client.set(keys.prediction("digits", "reused"), b"joined:2", ex=600)
    assert serving.post("/v1/events", json=event("reused")).json()["accepted"] == 1
    answer = labelling.post("/v1/labels", json=_label("reused", 1)).json()
    assert (answer["matched"], answer["duplicates"], answer["rejected"]) == (1, 0, []), answer
    assert redis_client.xlen(keys.labelled_feed("digits")) == 1


def test_labels_first_sent_to_a_replica_that_never_served_the_model_still_turn_records_on(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    """Behind a Service, labels and events of one model may reach different replicas from the start."""
    serving, labelling = make_client(), make_client()  # auto: nothing declared
    serving.post("/v1/events", json=event("before"))
    wait_until(lambda: redis_client.sismember("vai:monitored-models", "digits"), what="the model announced")
    assert labelling.post("/v1/labels", json=_label("before")).json()["unmatched"], "no record was kept yet"
    serving_feed = _feed(serving)
    wait_until(lambda: serving_feed.keeps_records("digits"), what="the serving replica told")
    serving.post("/v1/events", json=event("after"))
    wait_until(lambda: redis_client.exists("vai:pred:digits:after"), what="the serving replica's record")
    assert labelling.post("/v1/labels", json=_label("after")).json()["matched"] == 1
    labelling.post("/v1/labels", json={"labels": [{"model": "nobody", "request_id": "x", "label": 0}]})
    assert not redis_client.sismember("vai:labelled-models", "nobody"), "a model no replica serves is not announced"


@pytest.mark.parametrize(
    "where", [pytest.param("redis", id="record-in-redis"), pytest.param("here", id="record-in-the-buffer")]
)
def test_a_label_of_no_class_of_the_prediction_leaves_its_record_for_a_corrected_one(
    make_client: Callable[..., TestClient], redis_client: Any, where: str
) -> None:
    """The record was taken before the class could be checked against it: refused, it must be put back, or the
    prediction could never be labelled."""
    # With Redis out of reach the record stays in this replica's buffer, where the label finds it.
    client = make_client(models=LABELLED, **({} if where == "redis" else {"redis_url": "redis://127.0.0.1:1/0"}))
    client.post("/v1/events", json=event("bc1"))  # 3 classes
    if where == "redis":
        wait_until(lambda: redis_client.exists("vai:pred:digits:bc1"), what="the record in Redis")
        ttl_before = redis_client.pttl("vai:pred:digits:bc1")
    refused = client.post("/v1/labels", json=_label("bc1", label=3)).json()
    assert refused["matched"] == 0 and refused["rejected"][0]["error"].endswith("class 3 out of range for 3 classes")
    if where == "redis":
        assert 0 < redis_client.pttl("vai:pred:digits:bc1") <= ttl_before, "back with the time it had left"
    assert client.post("/v1/labels", json=_label("bc1", label=2)).json()["matched"] == 1


def test_no_records_for_models_without_labels_and_none_at_all_when_told(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    client = make_client(label_records="none", models=LABELLED)
    client.post("/v1/events", json={"events": [event("a"), event("b", label=1)]})
    client.post("/v1/events", json=event("c", model="quiet"))
    wait_until(lambda: redis_client.xlen("vai:labelled:digits") == 1, what="the inline label published")
    assert list(redis_client.scan_iter("vai:pred:*")) == []


def _label(request_id: str, label: int = 0) -> dict[str, Any]:
    return {"labels": [{"model": "digits", "request_id": request_id, "label": label}]}


def test_records_trimmed_before_the_monitor_read_them_are_counted(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    registry = CollectorRegistry()  # no monitor runs: the drift feed only grows, and MAXLEN trims it
    client = make_client(registry=registry, monitor_max_per_second=0, monitor_stream_maxlen=100)
    for start in range(0, 1000, 100):
        events = [event(f"e{i}") for i in range(start, start + 100)]
        assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 100

    def trimmed() -> float:
        labels = {"model": "digits", "feed": "predictions"}
        return registry.get_sample_value("vai_feed_records_trimmed_total", labels) or 0.0

    wait_until(lambda: trimmed() + redis_client.xlen("vai:feed:digits") == 1000, what="every record accounted")
    assert trimmed() > 0


def test_a_bad_label_is_rejected_by_name_and_the_others_join(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, models=LABELLED)
    assert client.post("/v1/events", json={"events": [event("g0"), event("g1")]}).json()["accepted"] == 2
    wait_until(lambda: redis_client.exists(keys.prediction("digits", "g1")), what="the records in Redis")
    items: list[Any] = [
        {"model": "digits", "request_id": "g0", "label": 1},
        {"model": "digits"},
        5,
        {"model": ["digits"], "request_id": "x", "label": 1},
        {"model": "digits", "request_id": "y", "label": -1},
        {"model": "digits", "request_id": "z", "label": "2"},
        {"model": "digits", "request_id": "g1", "label": 0},
    ]
    answer = client.post("/v1/labels", json={"labels": items})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["matched"] == 2 and result["unmatched"] == []
    rejected = {r["index"]: (r["request_id"], r["error"].split(":")[0]) for r in result["rejected"]}
    assert rejected == {
        1: (None, "labels.1.request_id"),
        2: (None, "labels.2"),
        3: ("x", "labels.3.model"),
        4: ("y", "labels.4.label"),
        5: ("z", "labels.5.label"),
    }
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 2
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "rejected"}) == 3
    assert registry.get_sample_value("vai_labels_total", {"model": "__unknown__", "matched": "rejected"}) == 2
    only_bad = client.post("/v1/labels", json={"labels": [{"model": "digits", "request_id": "q", "label": -1}]})
    assert only_bad.status_code == 422 and only_bad.json()["field"] == "labels.0.label", only_bad.text
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "rejected"}) == 4
    raw = (  # text that is not Unicode: a lone surrogate escape, raw invalid UTF-8; each refused alone
        b'{"labels": [{"model": "digits", "request_id": "s\\ud800", "label": 1},'
        b' {"model": "digits", "request_id": "b\xff", "label": 1},'
        b' {"model": "digits", "request_id": "g0", "label": 2},'
        b' {"model": "d\\ud800", "request_id": "m", "label": 1}]}'  # echoed back: escaped, never a 500
    )
    answer = client.post("/v1/labels", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert [(r["index"], r["error"].split(":")[0]) for r in answer.json()["rejected"]] == [
        (0, "labels.0.request_id"),
        (1, "labels.1.request_id"),
        (2, "labels.2.label"),  # g0 was labelled 1 already: the rest went on
        (3, "labels.3.model"),
    ]
    assert answer.json()["rejected"][3]["model"] == "d\\ud800"


def test_many_labels_are_checked_and_joined_off_the_event_loop_with_the_same_answers(
    make_client: Callable[..., TestClient], redis_client: Any
) -> None:
    """From ``OFF_LOOP_FROM`` labels a request's checks and records are handled in a worker thread: the verdicts,
    their order and the counts are those of a small request."""
    registry = CollectorRegistry()
    client = make_client(registry=registry, models=LABELLED)
    ids = [f"m{i}" for i in range(OFF_LOOP_FROM + 50)]
    for start in range(0, len(ids), 100):
        batch = {"events": [event(i) for i in ids[start : start + 100]]}
        assert client.post("/v1/events", json=batch).json()["accepted"] == len(batch["events"])
    wait_until(lambda: redis_client.exists(keys.prediction("digits", ids[-1])), what="the last record in Redis")
    items: list[Any] = [{"model": "digits", "request_id": i, "label": 1} for i in ids]
    items[7] = {"model": "digits", "request_id": ids[7], "label": -1}
    items.insert(100, {"model": "digits", "request_id": "never", "label": 1})
    result = client.post("/v1/labels", json={"labels": items}).json()
    assert result["matched"] == len(ids) - 1
    assert [(r["index"], r["error"].split(":")[0]) for r in result["rejected"]] == [(7, "labels.7.label")]
    assert [(u["index"], u["request_id"]) for u in result["unmatched"]] == [(100, "never")]
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == len(ids) - 1
    assert redis_client.xlen(keys.labelled_feed("digits")) == len(ids) - 1


@pytest.mark.parametrize(
    ("route", "key", "what"),
    [
        pytest.param("/v1/models/digits/drift", keys.drift_status("digits"), "drift status", id="drift"),
        pytest.param("/v1/models/digits/calibration", keys.quality_report("digits"), "calibration", id="calibration"),
    ],
)
def test_a_published_result_this_sidecar_cannot_read_is_a_503(
    make_client: Callable[..., TestClient], redis_client: Any, route: str, key: str, what: str
) -> None:
    """E.g. a score stored as null (NaN, as pydantic writes it) by a monitor: 503 while the owner writes it
    again, never a 500."""
    client = make_client()
    redis_client.set(
        key,
        b'{"v":1,"model":"digits","state":"monitoring","owner":"m","updated_at":1.0,'
        b'"detectors":[{"name":"mmd_online","score":null,"threshold":0.1,"drift":false}],'
        b'"windows":"not a list"}',
    )
    response = client.get(route)
    assert response.status_code == 503 and response.headers["retry-after"].isdigit(), response.text
    assert response.json()["error"].startswith(f"{what} of model 'digits' cannot be read")


def test_calibration_of_a_model_no_monitor_knows_is_a_404_like_every_other_view(
    make_client: Callable[..., TestClient],
) -> None:
    """A typo in a model name must not read as "no labels yet"."""
    response = make_client().get("/v1/models/nope/calibration")
    assert response.status_code == 404 and response.json()["field"] == "model", response.text


def test_the_reliability_png_draws_the_newest_version_as_the_page_does() -> None:
    """Not the version with most labels: during a canary rollout that is the old one."""

    def series(version: str, count: int) -> SeriesQuality:
        return SeriesQuality(
            version=version, cohort="all", count=count, ece=0.0, mce=0.0, brier_score=None, brier_count=0,
            accuracy=1.0, accuracy_lower=0.9, accuracy_upper=1.0,
        )  # fmt: skip

    found = (series("v2", 10_000), series("v10", 40), series("v9", 3))
    assert newest(found).version == "v10"
    assert newest((series("2026-01-02", 5), series("2026-01-10", 1))).version == "2026-01-10"
