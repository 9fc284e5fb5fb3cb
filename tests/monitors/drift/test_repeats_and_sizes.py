"""Statistics of the windowed detectors where the reference is awkward: repeated embeddings, one embedding,
small references, all-zero embeddings, a model with one class; and the one decision rule, ``p <= alpha``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from scipy import stats

from monitors.drift.base import DriftBatch
from monitors.drift.config import DriftConfig
from monitors.drift.detectors import build
from monitors.drift.embedding import EmbeddingDistance
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor, Phase
from monitors.drift.output import OutputDrift
from monitors.drift.reference import Reference

DIM, WINDOW = 16, 200


def embeddings(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    x = 0.5 * rng.normal(size=(n, DIM))
    x[:, 0] += 3.0
    return x.astype(np.float32)


def traffic(rng: np.random.Generator, n: int, repeated: NDArray[np.float32], share: float) -> DriftBatch:
    """Stationary events, ``share`` of them one repeated input (one embedding, one prediction)."""
    x = embeddings(rng, n)
    copies = rng.random(n) < share
    x[copies] = repeated
    predicted = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(np.int64)
    confidence = 0.3 + 0.7 * rng.beta(5.0, 2.0, size=n)
    predicted[copies], confidence[copies] = 3, 0.97
    return DriftBatch(predicted=predicted, confidence=confidence, embeddings=x, time_s=1.0)


@pytest.mark.parametrize(
    "pca_components", [pytest.param(None, id="no-pca"), pytest.param(8, id="pca-on-half-the-distinct-rows")]
)
def test_repeated_embeddings_are_no_drift_to_any_windowed_test(pca_components: int | None) -> None:
    """30% of the events one repeated input, in the reference as in the traffic: every windowed test stays near
    alpha on clean windows. With the reference cut to one row per embedding the output tests and window tests
    alarmed on every window (the repeat's 30% read as new); with PCA fitting on half the distinct rows and the
    window tests given every copy it left, the repeat was 46% of their reference, and window_mmd and window_ks
    alarmed on all 10 windows."""
    rng = np.random.default_rng(11)
    repeated = embeddings(rng, 1)[0]
    config = DriftConfig(
        online_detector="none",
        reference_events=1000,
        window_events=WINDOW,
        n_permutations=50,
        pca_components=pca_components,
    )
    reference = Reference.from_batch(traffic(rng, 1000, repeated, 0.3))
    detectors = build("m", reference, config, DriftMetrics(registry=CollectorRegistry()), torch.Generator())
    alarms: dict[str, int] = {}
    windows = 10
    for _ in range(windows):
        window = traffic(rng, WINDOW, repeated, 0.3)
        assert window.embeddings is not None
        reduced = (
            window if detectors.pca is None else replace(window, embeddings=detectors.pca.transform(window.embeddings))
        )
        fed = [(d, window) for d in (*detectors.outputs, *detectors.embedded)] + [
            (d, reduced) for d in detectors.reduced
        ]
        for detector, batch in fed:
            for result in detector.update(batch):
                alarms[result.name] = alarms.get(result.name, 0) + int(result.drift)
    names = {"output_class_chi2", "output_confidence_ks", "embedding_distance", "window_mmd", "window_ks"}
    assert set(alarms) == names
    assert all(count <= 3 for count in alarms.values()), alarms


def test_identical_embeddings_leave_the_output_tests_running() -> None:
    """Every event the same embedding, outputs varying: the warm-up calibrates (no endless warm-up), the output
    tests and embedding_distance watch, and the status says why the online detector and window tests do not."""
    rng = np.random.default_rng(12)
    config = DriftConfig(
        reference_events=600, max_reference=300, ert=50, window_size=10, n_bootstraps=500, window_events=100
    )
    monitor = DriftMonitor(model="m", config=config, metrics=DriftMetrics(registry=CollectorRegistry()))

    def events(n: int) -> DriftBatch:
        predicted, confidence = rng.integers(0, 4, n).astype(np.int64), rng.uniform(0.4, 1.0, n)
        return DriftBatch(predicted, confidence, np.ones((n, 8), dtype=np.float32), time_s=1.0)

    monitor.update(events(600))
    monitor.calibrate()
    assert monitor.phase is Phase.MONITORING
    assert monitor.calibration_error is not None
    assert "600 events have only 1 distinct 8-d embeddings" in monitor.calibration_error
    results = {r.name: r for r in monitor.update(events(100))}
    assert set(results) == {"output_class_chi2", "output_confidence_ks", "embedding_distance"}
    assert not results["embedding_distance"].drift
    assert monitor.online_reference_rows is None


@pytest.mark.parametrize("reference_rows", [449, 1000, 5000])
def test_embedding_distance_false_alarm_rate_is_alpha_on_any_reference_size(reference_rows: int) -> None:
    """A fresh reference and a fresh clean window of 500 per trial, alpha 0.05: the share of alarms is within a
    0.1%-either-side binomial interval of alpha (seeded). Testing the window against an exact 1% beyond the
    reference's 99th percentile ignored that percentile's own error: 0.167 at 449 rows, 0.082 at 1,000."""
    trials = 800
    rng = np.random.default_rng(reference_rows)
    alarms = 0
    for _ in range(trials):
        detector = EmbeddingDistance.fit(embeddings(rng, reference_rows), window_events=500, p_value=0.05)
        result = detector.test(embeddings(rng, 500))
        assert result.drift == (result.score > result.threshold)
        alarms += result.drift
    low, high = stats.binom.interval(0.999, trials, 0.05)
    assert low <= alarms <= high, (alarms, (low, high))


def test_embedding_distance_still_flags_a_few_far_embeddings() -> None:
    """1% of a window's rows moved far off the reference's direction: flagged in most windows even against a
    449-row reference (benchmarks/drift_false_alarms.py measures the power per reference size)."""
    rng = np.random.default_rng(13)
    flagged = 0
    for _ in range(50):
        detector = EmbeddingDistance.fit(embeddings(rng, 449), window_events=500, p_value=0.05)
        window = embeddings(rng, 500)
        window[:10, 1] += 6.0
        flagged += detector.test(window).drift
    assert flagged >= 30


def test_all_zero_embeddings_count_beyond_the_tail() -> None:
    """An all-zero embedding has no direction: a window of them is drift, not distance 1 and "no drift" (1 is
    well inside a centred reference's distances); the distance histogram leaves them out."""
    rng = np.random.default_rng(14)
    registry = CollectorRegistry()
    histogram = DriftMetrics(registry=registry).distance_histogram("m")
    reference = rng.normal(size=(1000, DIM)).astype(np.float32)  # centred: many distances past 1
    detector = EmbeddingDistance.fit(reference, window_events=200, p_value=0.05, histogram=histogram)
    (result,) = detector.update(DriftBatch(np.zeros(200, np.int64), np.ones(200), np.zeros((200, DIM), np.float32), 1))
    assert result.drift and result.score == 1.0
    assert registry.get_sample_value("vai_embedding_distance_count", {"model": "m"}) == 0


def test_a_one_class_window_is_no_class_test() -> None:
    """A model that predicts one class: the class test has one cell, nothing to test, so it gives no result and
    is not counted in vai_drift_tests_total (a p-value of 1 counted as a test diluted the alarm share); the
    confidence test still runs."""
    rng = np.random.default_rng(15)
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry=registry)
    detector = OutputDrift.fit(
        predicted=np.zeros(500, np.int64), confidence=rng.uniform(0.5, 1.0, 500), window_events=100, p_value=0.05
    )
    results = detector.update(DriftBatch(np.zeros(300, np.int64), rng.uniform(0.5, 1.0, 300), None, 1.0))
    for result in results:
        metrics.record("m", result)
    assert [r.name for r in results] == ["output_confidence_ks"] * 3

    def tests(name: str) -> float | None:
        return registry.get_sample_value("vai_drift_tests_total", {"model": "m", "detector": name})

    assert tests("output_class_chi2") is None and tests("output_confidence_ks") == 3


def test_output_tests_decide_p_at_most_alpha() -> None:
    """The output tests decide as the window tests do, ``p <= alpha``: at alpha 1 a window equal to the reference
    (both p-values exactly 1) is drift; with ``p < alpha`` it was not."""
    rng = np.random.default_rng(16)
    predicted, confidence = rng.integers(0, 3, 200).astype(np.int64), rng.uniform(0.5, 1.0, 200)
    detector = OutputDrift.fit(predicted=predicted, confidence=confidence, window_events=200, p_value=1.0)
    results = detector.test(predicted=predicted, confidence=confidence)
    assert [(r.p_value, r.drift) for r in results] == [(1.0, True), (1.0, True)]


@pytest.mark.parametrize(
    ("rows", "pca_components"),
    [pytest.param(301, None, id="301-rows-without-pca"), pytest.param(602, 4, id="602-rows-pca-on-half")],
)
def test_one_row_more_than_max_reference_calibrates(rows: int, pca_components: int | None) -> None:
    """The rows PCA leaves are ``max_reference`` + 1: the one left over is too few for spare rows and is dropped.
    Held as a one-row reference it failed every calibration of such a reference (a 2,001-row upload of
    768-d embeddings at the defaults), output tests included."""
    config = DriftConfig(
        reference_events=600,
        max_reference=300,
        pca_components=pca_components,
        ert=50,
        window_size=10,
        n_bootstraps=500,
        window_events=100,
        n_permutations=50,
    )
    x = embeddings(np.random.default_rng(17), rows)
    reference = Reference(predicted=np.zeros(rows, np.int64), confidence=np.full(rows, 0.9), embeddings=x)
    monitor = DriftMonitor(
        model="m", config=config, metrics=DriftMetrics(registry=CollectorRegistry()), reference=reference
    )
    monitor.calibrate()
    assert monitor.phase is Phase.MONITORING and monitor.calibration_error is None
    assert monitor.online_reference_rows == round(0.7 * (300 - 10))
