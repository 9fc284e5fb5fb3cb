"""Monitors in the running sidecar: delayed labels, calibration, cohort quality and drift on real embeddings."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from attribution_workers.models.training import DatasetSplit
from helpers import event, wait_until
from service.corruptions import corrupt

# Small detectors so calibration takes a second: online MMD at ERT 100 (window 10), 400-event tumbling windows.
FAST_DRIFT = {
    "reference_events": 400,
    "max_reference": 300,
    "pca_components": 16,
    "ert": 100,
    "window_size": 10,
    "window_events": 100,
    "window_tests": False,
}


def probabilities_event(request_id: str, probabilities: list[float], **fields: Any) -> dict[str, Any]:
    body = event(request_id, probabilities=probabilities, **fields)
    body.pop("logits")
    return body


def expected_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE written out independently: equal-width bins (k/15, (k+1)/15]."""
    total = 0.0
    for k in range(bins):
        lower, upper = k / bins, (k + 1) / bins
        chosen = (confidence > lower) & (confidence <= upper) if k else (confidence <= upper)
        if chosen.any():
            total += chosen.sum() / len(confidence) * abs(correct[chosen].mean() - confidence[chosen].mean())
    return total


def test_delayed_labels_join_predictions_and_feed_calibration(make_client: Callable[..., TestClient]) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, cohort_keys=("region",))
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3) * 0.7, size=60)
    labels = [int(rng.choice(3, p=p)) for p in probabilities]
    events = [
        probabilities_event(f"r{i}", (p / p.sum()).round(12).tolist(), cohort={"region": "eu"})
        for i, p in enumerate(probabilities)
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 60

    body = {
        "labels": [{"model": "digits", "request_id": f"r{i}", "label": label} for i, label in enumerate(labels)]
        + [
            {"model": "digits", "request_id": "never-seen", "label": 1},
            {"model": "other", "request_id": "r1", "label": 1},
            {"model": "digits", "request_id": "r0", "label": 0},
        ]
    }  # r0 again: labelled already
    result = client.post("/v1/labels", json=body).json()
    assert result["matched"] == 60
    assert [u["request_id"] for u in result["unmatched"]] == ["never-seen", "r0"]
    assert [r["request_id"] for r in result["rejected"]] == ["r1"]
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 60
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "false"}) == 2

    series = {s["cohort"]: s for s in client.get("/v1/models/digits/calibration").json()["series"]}
    assert set(series) == {"all", "region=eu"} and series["all"]["count"] == 60
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    assert series["all"]["ece"] == pytest.approx(expected_ece(confidence, correct), abs=1e-9)
    brier = np.mean(((probabilities - np.eye(3)[labels]) ** 2).sum(axis=1))
    assert series["all"]["brier_score"] == pytest.approx(brier, abs=1e-9)
    assert registry.get_sample_value(
        "vai_calibration_ece", {"model": "digits", "version": "unversioned", "cohort": "all"}
    ) == pytest.approx(series["all"]["ece"])
    png = client.get("/v1/models/digits/calibration.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_labels_wait_in_redis_until_they_arrive(make_client: Callable[..., TestClient]) -> None:
    first = make_client()
    first.post("/v1/events", json=event("late", logits=[0.0, 3.0]))
    first.__exit__(None, None, None)  # this replica goes away; its records were flushed to Redis on shutdown
    second = make_client()
    second.post("/v1/events", json=event("other", logits=[0.0, 3.0]))  # the model is known to this replica too
    assert (
        second.post("/v1/labels", json={"labels": [{"model": "digits", "request_id": "late", "label": 1}]}).json()[
            "matched"
        ]
        == 1
    )


def test_label_in_the_event_counts_as_matched(make_client: Callable[..., TestClient]) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry)
    client.post("/v1/events", json={"events": [event("a", label=0), event("b", label=1)]})
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 2
    assert client.get("/v1/models/digits/calibration").json()["series"][0]["count"] == 2


def test_a_worse_cohort_shows_lower_accuracy_with_a_wider_interval(make_client: Callable[..., TestClient]) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, cohort_keys=("region",))
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

    def figure(name: str, region: str) -> float:
        value = registry.get_sample_value(
            name, {"model": "digits", "version": "unversioned", "cohort": f"region={region}"}
        )
        assert value is not None
        return value

    assert figure("vai_accuracy", "eu") < figure("vai_accuracy", "us") - 0.2
    eu_width = figure("vai_accuracy_upper", "eu") - figure("vai_accuracy_lower", "eu")
    us_width = figure("vai_accuracy_upper", "us") - figure("vai_accuracy_lower", "us")
    assert eu_width > 2 * us_width
    assert figure("vai_cohort_labelled_total", "eu") == 50


def _digits_batch(module: torch.jit.ScriptModule, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        return module.embed(x).numpy(), torch.softmax(module(x), dim=1).numpy()


def _post(client: TestClient, prefix: str, embeddings: np.ndarray, probabilities: np.ndarray) -> None:
    events = [
        probabilities_event(f"{prefix}{i}", (p / p.sum()).tolist(), embedding=e.tolist())
        for i, (e, p) in enumerate(zip(embeddings, probabilities, strict=True))
    ]
    for start in range(0, len(events), 200):
        assert client.post("/v1/events", json={"events": events[start : start + 200]}).status_code == 202


def test_online_drift_quiet_on_clean_digits_and_alarms_on_corrupted_ones(
    make_client: Callable[..., TestClient],
    digits_path: Path,
    digits_split: DatasetSplit,
) -> None:
    module = torch.jit.load(str(digits_path))
    registry = CollectorRegistry()
    client = make_client(registry=registry, drift=FAST_DRIFT, drift_cpu_share=1.0, drift_sync_s=0.2)
    reference_x, reference_p = _digits_batch(module, digits_split.train.features[:800])
    response = client.put(
        "/v1/models/digits/reference", json={"embeddings": reference_x.tolist(), "probabilities": reference_p.tolist()}
    )
    assert response.status_code == 202 and response.json()["dims"] == 64
    wait_until(
        lambda: client.get("/v1/models/digits/drift").json()["state"] == "monitoring", timeout_s=60, what="calibration"
    )

    def detected() -> float | None:
        return registry.get_sample_value("vai_drift_detected", {"model": "digits", "detector": "mmd_online"})

    clean_x, clean_p = _digits_batch(module, digits_split.test.features[:60])
    _post(client, "clean", clean_x, clean_p)  # 60 events, well within the ERT of 100
    wait_until(lambda: detected() is not None, timeout_s=30, what="the online detector to score clean traffic")
    assert detected() == 0.0

    shifted, _ = corrupt(digits_split.test.features[60:260], seed=0, kinds=("noise",), severity=1.5)
    drift_x, drift_p = _digits_batch(module, shifted)
    _post(client, "drift", drift_x, drift_p)
    wait_until(lambda: detected() == 1.0, timeout_s=30, what="the online detector to alarm on corrupted traffic")
    status = client.get("/v1/models/digits/drift").json()
    online = next(d for d in status["detectors"] if d["name"] == "mmd_online")
    assert online["drift"] and online["score"] > online["threshold"] and online["since"] is not None

    restarted = make_client(drift=FAST_DRIFT, drift_sync_s=0.2)  # another replica, or this one after a restart
    restarted.post("/v1/events", json=probabilities_event("wake", clean_p[0].tolist(), embedding=clean_x[0].tolist()))
    wait_until(
        lambda: restarted.get("/v1/models/digits/drift").json()["state"] == "monitoring",
        timeout_s=10,
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


def test_reference_as_npy_upload_and_pickles_refused(make_client: Callable[..., TestClient]) -> None:
    import io

    client = make_client(drift=FAST_DRIFT)
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
    mismatch = client.post("/v1/events", json=event("x", embedding=[0.0] * 5))
    assert mismatch.status_code == 422 and mismatch.json()["field"] == "embedding"


def test_requests_never_wait_for_a_detector(make_client: Callable[..., TestClient]) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, drift_buffer_events=50)
    client.post("/v1/events", json=event("first", embedding=[0.1, 0.2]))
    sidecar = client.app.state.sidecar  # type: ignore[attr-defined]
    monitor = sidecar.monitoring.runner.monitor("digits")
    release = threading.Event()
    monitor.update = lambda batch: release.wait(60) and []  # a detector that hangs until released
    try:
        for start in range(0, 300, 100):
            events = [event(f"e{i}", embedding=[0.1, 0.2]) for i in range(start, start + 100)]
            assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 100
        skipped = registry.get_sample_value("vai_drift_events_skipped_total", {"model": "digits"})
        assert skipped is not None and skipped >= 200, "a full buffer drops (and counts) instead of blocking"
    finally:
        release.set()


def test_full_record_buffer_drops_the_oldest_and_counts_it(make_client: Callable[..., TestClient]) -> None:
    registry = CollectorRegistry()  # Redis unreachable: the records stay in memory
    client = make_client(registry=registry, prediction_buffer_events=2, redis_url="redis://127.0.0.1:1/0")
    client.post("/v1/events", json={"events": [event("a", model="m1"), event("b", model="m2"), event("c", model="m2")]})
    assert registry.get_sample_value("vai_prediction_records_dropped_total", {"model": "m1"}) == 1
    assert registry.get_sample_value("vai_prediction_records_dropped_total", {"model": "m2"}) is None
