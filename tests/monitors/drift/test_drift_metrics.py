"""monitors.drift.metrics: the verdict gauges, and the counters of tests and alarms the drift alerts read."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monitors.drift.base import DriftResult, OnlineResult
from monitors.drift.metrics import DriftMetrics

ONLINE = {"model": "digits", "detector": "mmd_online"}
CHI2 = {"model": "digits", "detector": "output_class_chi2"}


def online(*, events: int, alarms: int) -> OnlineResult:
    return OnlineResult(
        name="mmd_online", score=0.2, threshold=0.1, drift=alarms > 0, events=events, alarms=alarms, ert=1000
    )


def window(*, drift: bool) -> DriftResult:
    return DriftResult(name="output_class_chi2", score=2.0, threshold=1.3, drift=drift, p_value=0.01)


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def test_an_online_batch_counts_each_event_scored_and_each_above_threshold() -> None:
    """One drift verdict per batch, but the counters move by events: the alarm share per event does not
    depend on how many events a batch holds."""
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry=registry)
    metrics.record("digits", online(events=500, alarms=3))
    metrics.record("digits", online(events=200, alarms=0))
    assert sample(registry, "vai_drift_tests_total", ONLINE) == 700
    assert sample(registry, "vai_drift_alarms_total", ONLINE) == 3
    assert sample(registry, "vai_drift_ert_events", ONLINE) == 1000
    assert sample(registry, "vai_drift_detected", ONLINE) == 0.0  # the latest batch's verdict, for dashboards


def test_a_window_is_one_test_and_its_alarm_counts_when_it_says_drift() -> None:
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry=registry)
    metrics.record("digits", window(drift=False))
    # Created at 0: a rate over the counter sees the first alarm.
    assert sample(registry, "vai_drift_alarms_total", CHI2) == 0
    metrics.record("digits", window(drift=True))
    metrics.record("digits", window(drift=True))
    assert sample(registry, "vai_drift_tests_total", CHI2) == 3
    assert sample(registry, "vai_drift_alarms_total", CHI2) == 2
    assert sample(registry, "vai_drift_ert_events", CHI2) is None


@pytest.mark.parametrize("name", ["vai_drift_tests_total", "vai_drift_alarms_total", "vai_drift_ert_events"])
def test_forget_drops_the_counters_of_that_model_only(name: str) -> None:
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry=registry)
    metrics.record("digits", online(events=50, alarms=1))
    metrics.record("text", online(events=50, alarms=1))
    metrics.forget("digits")
    assert sample(registry, name, ONLINE) is None
    assert sample(registry, name, {**ONLINE, "model": "text"}) is not None


def test_clearing_the_verdicts_drops_the_alarm_gauges_and_keeps_the_counters() -> None:
    """A new reference replaced the calibration: its old alarm stayed at 1 until new traffic gave a result (never,
    on a quiet model), and an alert on the gauge kept firing for a reference that was gone."""
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry=registry)
    metrics.record("digits", window(drift=True))
    metrics.record("text", window(drift=True))

    metrics.clear_verdicts("digits")

    for name in ("vai_drift_detected", "vai_drift_score", "vai_drift_threshold", "vai_drift_p_value"):
        assert sample(registry, name, CHI2) is None, name
    assert sample(registry, "vai_drift_detected", {**CHI2, "model": "text"}) == 1.0
    assert sample(registry, "vai_drift_alarms_total", CHI2) == 1
