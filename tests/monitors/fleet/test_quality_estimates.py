"""Quality before the labels arrive, end to end: digits posted to a sidecar, some of their labels later; the
fleet monitor publishes ATC estimates and a temperature that equal a direct computation on the same data, in
``GET /v1/models/{model}/calibration`` and on its own registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from held_out_digits import TORCHSCRIPT_WARNINGS, load_held_out_digits
from helpers import MonitorRunner, event, wait_until
from monitors.cohorts import CohortGuard, slice_labels
from monitors.estimates import fit_atc
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.reports import quality_report
from monitors.fleet.results import DriftStatus
from monitors.prediction_window import PredictionWindow
from monitors.records import LabelledPrediction
from monitors.temperature import fit_temperature
from monitors.window import WindowStore

pytestmark = TORCHSCRIPT_WARNINGS


def _post(client: TestClient, probabilities: NDArray[np.float64], cohorts: list[str]) -> None:
    events = []
    for i, (p, region) in enumerate(zip(probabilities, cohorts, strict=True)):
        body = event(f"r{i}", probabilities=p.tolist(), cohort={"region": region})
        body.pop("logits")
        events.append(body)
    for start in range(0, len(events), 200):
        assert client.post("/v1/events", json={"events": events[start : start + 200]}).status_code == 202


def _report(client: TestClient, labelled: int, examined: int) -> dict[str, Any]:
    def published() -> dict[str, Any] | None:
        body = client.get("/v1/models/digits/calibration").json()
        counts = {s["cohort"]: s["count"] for s in body["series"]}
        estimates = {e["cohort"]: e["predictions"] for e in body.get("estimates", [])}
        return body if counts.get("all") == labelled and estimates.get("all") == examined else None

    report: dict[str, Any] = wait_until(published, timeout_s=60, what="the estimates of every prediction")
    return report


def test_labels_posted_to_a_sidecar_give_estimates_and_a_temperature(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, model_dir: Path
) -> None:
    digits = load_held_out_digits(model_dir)
    clean, clean_labels = digits.held_out()  # 449 clean digits, all labelled later
    shifted, shifted_labels = digits.traffic(severity=1.0, seed=0)  # 450 corrupted: 400 "shifted", 50 "few"
    probabilities = np.concatenate([clean, shifted])
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    truth = np.concatenate([clean_labels, shifted_labels])
    cohorts = ["clean"] * 449 + ["shifted"] * 400 + ["few"] * 50
    labelled = list(range(449)) + list(range(449, 549)) + list(range(849, 859))  # 100 shifted, 10 few (< 30)

    monitor_registry = CollectorRegistry()
    monitors.start(registry=monitor_registry, cohort_keys=("region",))
    client = make_client(cohort_keys=("region",), models={"digits": {"delayed_labels": True}}, monitor_max_per_second=0)
    _post(client, probabilities, cohorts)
    labels = [{"model": "digits", "request_id": f"r{i}", "label": int(truth[i])} for i in labelled]
    for start in range(0, len(labels), 200):
        assert client.post("/v1/labels", json={"labels": labels[start : start + 200]}).json()["matched"] == len(
            labels[start : start + 200]
        )
    report = _report(client, labelled=len(labelled), examined=899)

    confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == truth
    region = np.array(cohorts)
    is_labelled = np.isin(np.arange(899), labelled)

    def expected(cohort: str, fitted_on: str) -> dict[str, Any]:
        chosen = np.ones(899, dtype=bool) if cohort == "all" else region == cohort.split("=")[1]
        fitting = is_labelled & (np.ones(899, dtype=bool) if fitted_on == "all" else region == fitted_on.split("=")[1])
        fit = fit_atc(confidence[fitting], right[fitting])
        assert fit is not None
        return {
            "version": "unversioned",
            "cohort": cohort,
            "estimated_accuracy": pytest.approx(fit.estimate(confidence[chosen]), abs=1e-12),
            "predictions": int(chosen.sum()),
            "threshold": pytest.approx(fit.threshold, abs=1e-12),
            "fitted_on": fit.fitted_on,
            "fit_gap": pytest.approx(fit.fit_gap, abs=1e-12),
            "source": "labelled_window",
            "fitted_cohort": fitted_on,
        }

    estimates = {e["cohort"]: e for e in report["estimates"]}
    assert estimates == {
        "all": expected("all", "all"),
        "region=clean": expected("region=clean", "region=clean"),
        "region=shifted": expected("region=shifted", "region=shifted"),
        "region=few": expected("region=few", "all"),  # 10 labels: its version's threshold
    }
    assert estimates["region=shifted"]["estimated_accuracy"] < estimates["region=clean"]["estimated_accuracy"] - 0.2

    fit = fit_temperature(probabilities[labelled], truth[labelled])
    assert fit is not None
    (temperature,) = report["temperature"]
    assert temperature == {
        "version": "unversioned",
        "temperature": pytest.approx(fit.temperature, rel=1e-6),
        "ece_before": pytest.approx(fit.ece_before, abs=1e-9),
        "ece_after": pytest.approx(fit.ece_after, abs=1e-6),
        "nll_before": pytest.approx(fit.nll_before, abs=1e-9),
        "nll_after": pytest.approx(fit.nll_after, abs=1e-9),
        "count": len(labelled),
    }
    series = {s["cohort"]: s for s in report["series"]}
    assert temperature["ece_before"] == pytest.approx(series["all"]["ece"], abs=1e-12)
    assert temperature["temperature"] > 1.0 and temperature["ece_after"] < temperature["ece_before"]

    def gauge(name: str, cohort: str | None = None) -> float | None:
        """``name`` of the cohort slice ``cohort`` (``all`` or ``key=value``; ``None``: a series of no slice)."""
        labels = {} if cohort is None else dict(zip(("cohort", "value"), slice_labels(cohort), strict=True))
        return monitor_registry.get_sample_value(name, {"model": "digits", "version": "unversioned", **labels})

    # The monitor writes its report to Redis, then its gauges (estimates first): the scrape may lag a moment.
    wait_until(lambda: gauge("vai_cohort_window_events", "all") == len(labelled), what="the window's gauges")
    for cohort, estimate in estimates.items():
        assert gauge("vai_estimated_accuracy", cohort) == pytest.approx(estimate["estimated_accuracy"])
    assert gauge("vai_calibration_temperature") == pytest.approx(temperature["temperature"])
    assert gauge("vai_calibration_ece_after_temperature") == pytest.approx(temperature["ece_after"])
    # The scrape exports the figures the report was computed with (the collector kept on the process).
    assert gauge("vai_calibration_ece", "all") == pytest.approx(series["all"]["ece"], abs=1e-12)
    assert gauge("vai_cohort_window_events", "all") == len(labelled)


def _windows(labelled: int, recent: int) -> tuple[WindowStore, PredictionWindow]:
    guard = CohortGuard(keys=["region"], max_values_per_key=5)
    windows, window = WindowStore(guard=guard), PredictionWindow(guard=guard)
    rng = np.random.default_rng(0)
    for i in range(labelled):
        p = rng.dirichlet(np.ones(3))
        record = LabelledPrediction("m", "v1", int(p.argmax()), float(p.max()), i % 3, 0.0, {"region": "eu"}, p)
        windows.append(record)
    for _ in range(recent):
        window.append("m", "v1", {"region": "eu"}, float(rng.uniform(0.3, 1.0)))
    return windows, window


@pytest.mark.parametrize(
    ("labelled", "published"), [pytest.param(29, False, id="29-labels"), pytest.param(30, True, id="30-labels")]
)
def test_nothing_is_estimated_below_the_minimum_of_labels(labelled: int, published: bool) -> None:
    windows, recent = _windows(labelled, 100)
    report = quality_report("m", windows.snapshots("m"), window_s=60, owner="me", recent=recent.snapshots("m"))
    assert [(e.cohort, e.predictions) for e in report.estimates] == (
        [("all", 100), ("region=eu", 100)] if published else []
    )
    assert [t.count for t in report.temperature] == ([30] if published else [])
    assert [s.count for s in report.series] == [labelled, labelled]


def test_the_report_narrows_to_a_version_and_a_cohort() -> None:
    windows, recent = _windows(40, 10)
    report = quality_report("m", windows.snapshots("m"), window_s=60, owner="me", recent=recent.snapshots("m"))
    narrowed = report.chosen(cohort="region=eu")
    assert [e.cohort for e in narrowed.estimates] == ["region=eu"] and [s.cohort for s in narrowed.series] == [
        "region=eu"
    ]
    assert len(narrowed.temperature) == 1
    assert report.chosen(version="v2").model_dump(include={"series", "estimates", "temperature"}) == {
        "series": (),
        "estimates": (),
        "temperature": (),
    }


def test_the_gauges_follow_the_latest_report_and_go_with_the_model() -> None:
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    windows, recent = _windows(40, 10)
    report = quality_report("m", windows.snapshots("m"), window_s=60, owner="me", recent=recent.snapshots("m"))
    metrics.publish_estimates(report)
    labels = {"model": "m", "version": "v1"}
    assert registry.get_sample_value(
        "vai_estimated_accuracy", {**labels, "cohort": "region", "value": "eu"}
    ) == pytest.approx(report.estimates[1].estimated_accuracy)
    metrics.publish_estimates(report.chosen(cohort="all"))  # the eu slice went away
    assert registry.get_sample_value("vai_estimated_accuracy", {**labels, "cohort": "region", "value": "eu"}) is None
    assert registry.get_sample_value("vai_estimated_accuracy", {**labels, "cohort": "all", "value": "all"}) is not None
    calibrating = DriftStatus(model="m", state="calibrating", calibration_error="boom", owner="me", updated_at=1.0)
    metrics.publish_drift_state(calibrating)
    assert registry.get_sample_value("vai_drift_calibration_failed", {"model": "m"}) == 1
    assert registry.get_sample_value("vai_drift_monitoring", {"model": "m"}) == 0
    metrics.forget("m")
    assert registry.get_sample_value("vai_drift_calibration_failed", {"model": "m"}) is None
    assert registry.get_sample_value("vai_estimated_accuracy", {**labels, "cohort": "all", "value": "all"}) is None
    assert registry.get_sample_value("vai_calibration_temperature", labels) is None


def test_the_estimate_and_the_temperature_come_with_the_counts_they_rest_on() -> None:
    """Each figure has a series saying how much data it rests on, with its labels, and goes with it."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry)
    windows, recent = _windows(40, 10)
    report = quality_report("m", windows.snapshots("m"), window_s=60, owner="me", recent=recent.snapshots("m"))
    metrics.publish_estimates(report)
    labels = {"model": "m", "version": "v1"}
    eu = {**labels, "cohort": "region", "value": "eu"}
    (estimate,) = [e for e in report.estimates if e.cohort == "region=eu"]
    assert registry.get_sample_value("vai_estimated_accuracy_predictions", eu) == estimate.predictions == 10
    assert registry.get_sample_value("vai_estimated_accuracy_fitted_on", eu) == estimate.fitted_on == 40
    assert registry.get_sample_value("vai_calibration_temperature_count", labels) == report.temperature[0].count == 40
    metrics.publish_estimates(report.chosen(cohort="all"))  # the eu slice went away: its counts too
    assert registry.get_sample_value("vai_estimated_accuracy_predictions", eu) is None
    assert registry.get_sample_value("vai_estimated_accuracy_fitted_on", eu) is None
    assert (
        registry.get_sample_value("vai_estimated_accuracy_predictions", {**labels, "cohort": "all", "value": "all"})
        == 10
    )
    metrics.forget("m")
    assert (
        registry.get_sample_value("vai_estimated_accuracy_predictions", {**labels, "cohort": "all", "value": "all"})
        is None
    )
    assert (
        registry.get_sample_value("vai_estimated_accuracy_fitted_on", {**labels, "cohort": "all", "value": "all"})
        is None
    )
    assert registry.get_sample_value("vai_calibration_temperature_count", labels) is None
