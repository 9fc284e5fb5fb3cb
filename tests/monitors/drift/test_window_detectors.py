"""The tumbling-window detectors: alibi MMD/KS tests, output drift, embedding distance; and their plumbing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry
from scipy import stats

from common.codec import EncodedArray
from demo.models.training import DatasetSplit
from monitors.drift import window_tests
from monitors.drift._alibi import KSDrift
from monitors.drift.base import DriftBatch
from monitors.drift.embedding import EmbeddingDistance
from monitors.drift.metrics import DriftMetrics
from monitors.drift.output import OutputDrift, class_p_value
from monitors.drift.reduction import Pca
from monitors.drift.tumbling import Tumbler
from monitors.drift.window_tests import KS_NAME, WindowTests, ks_p_values, ks_statistics

DIM = 8


def batch(predicted: NDArray[Any], confidence: NDArray[Any], embeddings: NDArray[Any] | None = None) -> DriftBatch:
    return DriftBatch(
        predicted=predicted.astype(np.int64),
        confidence=confidence.astype(np.float64),
        embeddings=embeddings,
        time_s=1.0,
    )


def outputs(
    rng: np.random.Generator, n: int, *, class_p: list[float], conf_a: float = 5.0
) -> tuple[NDArray[Any], NDArray[Any]]:
    predicted = rng.choice(len(class_p), size=n, p=class_p)
    return predicted, 0.3 + 0.7 * rng.beta(conf_a, 2.0, size=n)


UNIFORM = [0.2] * 5


@pytest.fixture
def output_drift() -> OutputDrift:
    predicted, confidence = outputs(np.random.default_rng(0), 1000, class_p=UNIFORM)
    return OutputDrift.fit(predicted=predicted, confidence=confidence, window_events=400, p_value=0.01)


def verdicts(detector: OutputDrift, predicted: NDArray[Any], confidence: NDArray[Any]) -> dict[str, bool]:
    return {r.name: r.drift for r in detector.test(predicted=predicted, confidence=confidence)}


def test_output_drift_quiet_on_reference_distribution(output_drift: OutputDrift) -> None:
    assert verdicts(output_drift, *outputs(np.random.default_rng(1), 400, class_p=UNIFORM)) == {
        "output_class_chi2": False,
        "output_confidence_ks": False,
    }


def test_output_drift_flags_shifted_class_mix(output_drift: OutputDrift) -> None:
    result = verdicts(output_drift, *outputs(np.random.default_rng(2), 400, class_p=[0.5, 0.2, 0.1, 0.1, 0.1]))
    assert result["output_class_chi2"] is True


def test_output_drift_flags_lower_confidence(output_drift: OutputDrift) -> None:
    result = verdicts(output_drift, *outputs(np.random.default_rng(3), 400, class_p=UNIFORM, conf_a=2.0))
    assert result["output_confidence_ks"] is True


def test_output_drift_copes_with_unseen_class(output_drift: OutputDrift) -> None:
    predicted, confidence = outputs(np.random.default_rng(4), 400, class_p=UNIFORM)
    predicted[:40] = 7
    assert verdicts(output_drift, predicted, confidence)["output_class_chi2"] is True


def test_output_drift_tests_only_full_windows(output_drift: OutputDrift) -> None:
    predicted, confidence = outputs(np.random.default_rng(5), 1000, class_p=UNIFORM)
    assert output_drift.update(batch(predicted[:300], confidence[:300])) == []
    results = output_drift.update(batch(predicted[300:], confidence[300:]))
    assert [r.name for r in results] == ["output_class_chi2", "output_confidence_ks"] * 2
    assert all(r.drift == (r.score > r.threshold) for r in results)


def test_output_state_round_trip(output_drift: OutputDrift) -> None:
    restored = OutputDrift.from_state(
        type(output_drift.export_state()).model_validate_json(output_drift.export_state().model_dump_json())
    )
    predicted, confidence = outputs(np.random.default_rng(6), 400, class_p=[0.4, 0.3, 0.1, 0.1, 0.1])
    assert output_drift.test(predicted=predicted, confidence=confidence) == restored.test(
        predicted=predicted, confidence=confidence
    )


CLEAN_WINDOW = 500
RARE_CLASSES = [0.49, 0.49] + [0.002] * 10


def alarm_rates(
    reference_rows: int, class_p: list[float], *, trials: int, seed: int, shift: float = 0.0
) -> dict[str, int]:
    """Alarms of each output test at alpha 0.05 over ``trials`` (reference, window) pairs, each drawn afresh: the
    windows from the reference's distribution, but with ``shift`` of the shares moved onto class 0."""
    rng = np.random.default_rng(seed)
    p = np.array(class_p) / np.sum(class_p)
    shifted = (1.0 - shift) * p + shift * np.eye(len(p))[0]
    alarms = {"output_class_chi2": 0, "output_confidence_ks": 0}
    for _ in range(trials):
        predicted, confidence = outputs(rng, reference_rows, class_p=list(p))
        detector = OutputDrift.fit(predicted=predicted, confidence=confidence, window_events=CLEAN_WINDOW, p_value=0.05)
        for name, drift in verdicts(detector, *outputs(rng, CLEAN_WINDOW, class_p=list(shifted))).items():
            alarms[name] += drift
    return alarms


@pytest.mark.parametrize(
    ("reference_rows", "class_p"),
    [
        pytest.param(449, [0.1] * 10, id="449-rows-10-classes"),
        pytest.param(500, [0.5, 0.3, 0.2], id="500-rows-3-classes"),
        pytest.param(1000, [0.1] * 10, id="1000-rows-10-classes"),
        pytest.param(5000, [0.1] * 10, id="5000-rows-10-classes"),
        pytest.param(500, RARE_CLASSES, id="500-rows-10-rare-classes"),
    ],
)
def test_output_drift_false_alarm_rate_is_alpha(reference_rows: int, class_p: list[float]) -> None:
    """Clean windows of 500 against a reference drawn from the same distribution, the reference as small as a
    window or ten times larger: each test alarms at rate alpha, within a binomial tolerance (0.1% either side;
    seeded). A one-sample test against the reference's shares alarmed at 0.52 on the first; sparse cells left
    unpooled made the test deaf (0.01) on the last."""
    trials = 800
    low, high = stats.binom.interval(0.999, trials, 0.05)
    alarms = alarm_rates(reference_rows, class_p, trials=trials, seed=reference_rows + len(class_p))
    assert all(low <= count <= high for count in alarms.values()), (alarms, (low, high))


@pytest.mark.parametrize("reference_rows", [449, 1000, 5000])
def test_output_drift_detects_a_shift_of_class_shares(reference_rows: int) -> None:
    """15% of the traffic moved onto one of ten classes (its share 0.1 -> 0.235) is flagged in nearly every
    window, whatever the reference's size."""
    trials = 200
    alarms = alarm_rates(reference_rows, [0.1] * 10, trials=trials, seed=reference_rows, shift=0.15)
    assert alarms["output_class_chi2"] >= 0.95 * trials


def test_class_test_pools_sparse_classes_into_one_cell() -> None:
    """Classes whose expected count falls below 5 are pooled, from the rarest up, until the pooled cell has 5
    too; classes absent from both samples are dropped; one cell left is nothing to test (no p-value)."""
    reference, window = np.array([50, 50, 0, 1, 1]), np.array([50, 50, 0, 0, 3])
    pooled = [[50, 50 + 1 + 1], [50, 50 + 0 + 3]]  # 5 of 205 rows: 2.5 expected; the next class joins them
    assert class_p_value(reference, window) == stats.chi2_contingency(pooled, correction=False).pvalue
    assert class_p_value(np.array([0, 40]), np.array([0, 7])) is None


def off_centre(rng: np.random.Generator, n: int, *, turn: float = 0.0) -> NDArray[Any]:
    """Embeddings around a mean far from the origin; ``turn`` moves mass into another direction."""
    x = rng.normal(size=(n, DIM)) * 0.5
    x[:, 0] += 3.0
    x[:, 1] += turn
    return x.astype(np.float32)


def test_embedding_distance_flags_moved_embeddings() -> None:
    rng = np.random.default_rng(7)
    registry = CollectorRegistry()
    histogram = DriftMetrics(registry=registry).distance_histogram("m")
    detector = EmbeddingDistance.fit(off_centre(rng, 1000), window_events=200, p_value=0.01, histogram=histogram)

    (clean,) = detector.update(batch(np.zeros(200), np.ones(200), off_centre(rng, 200)))
    (moved,) = detector.update(batch(np.zeros(200), np.ones(200), off_centre(rng, 200, turn=1.5)))

    assert not clean.drift and clean.score <= clean.threshold
    assert moved.drift and moved.score > 0.1 and moved.p_value is not None and moved.p_value < 1e-6
    assert registry.get_sample_value("vai_embedding_distance_count", {"model": "m"}) == 400


def test_window_tests_quiet_then_flag_shift() -> None:
    rng = np.random.default_rng(8)
    detector = WindowTests(
        rng.normal(size=(300, DIM)).astype(np.float32), window_events=150, p_value=0.01, n_permutations=100
    )
    clean = {r.name: r for r in detector.test(rng.normal(size=(150, DIM)).astype(np.float32))}
    shifted = {r.name: r for r in detector.test((rng.normal(size=(150, DIM)) + 0.5).astype(np.float32))}

    assert not clean["window_mmd"].drift and not clean["window_ks"].drift
    assert shifted["window_mmd"].drift and shifted["window_ks"].drift
    assert shifted["window_ks"].p_value is not None and shifted["window_ks"].p_value < 0.01


@pytest.mark.parametrize(
    ("classes", "rows"),
    [
        pytest.param(10, 300, id="unseen-digits"),
        pytest.param(5, 300, id="digits-0-4"),
        pytest.param(10, 37, id="small-window"),
    ],
)
def test_ks_p_values_are_alibi_detects(digits_split: DatasetSplit, classes: int, rows: int) -> None:
    """Real pixels (17 grey levels: ties everywhere; border pixels all zero): scipy's per-column values.

    ``KSDrift.score`` calls ``ks_2samp(method="asymp")`` per column and stores the result in float32.
    """
    reference = digits_split.train.features.reshape(-1, 64)[:600]
    x = digits_split.test.features[digits_split.test.labels < classes].reshape(-1, 64)[:rows]
    scipy_ks = [stats.ks_2samp(reference[:, f], x[:, f], method="asymp") for f in range(64)]
    alibi_p, alibi_d = KSDrift(reference, p_val=0.05, correction="bonferroni").score(x)

    statistics = ks_statistics(reference, x)
    np.testing.assert_array_equal(statistics, [r.statistic for r in scipy_ks])
    p_values = ks_p_values(statistics, len(reference), len(x))
    np.testing.assert_allclose(p_values, [r.pvalue for r in scipy_ks], rtol=1e-12, atol=0)
    np.testing.assert_allclose(p_values, alibi_p, rtol=1e-6, atol=0)
    assert np.any(alibi_d == 0.0)  # all-zero border pixels

    detector = WindowTests(reference, window_events=10, p_value=0.05, n_permutations=20)
    (result,) = [r for r in detector.test(x) if r.name == KS_NAME]
    assert result.p_value == pytest.approx(min(1.0, min(r.pvalue for r in scipy_ks) * 64), rel=1e-12)
    assert result.drift is (classes < 10)


def test_tumbler_cuts_exact_windows_across_batches() -> None:
    tumbler = Tumbler(size=4)
    sizes = []
    start = 0
    for n in (3, 6, 1, 9):
        predicted = np.arange(start, start + n)
        start += n
        sizes.append([w.predicted.tolist() for w in tumbler.add(batch(predicted, np.ones(n)))])
    assert sizes == [[], [[0, 1, 2, 3], [4, 5, 6, 7]], [], [[8, 9, 10, 11], [12, 13, 14, 15]]]


def test_pca_keeps_top_axes_and_round_trips() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(500, 20)).astype(np.float32)
    x[:, 3] *= 10.0
    pca = Pca.fit(x, n_components=4)
    reduced = pca.transform(x)
    assert reduced.shape == (500, 4)
    assert np.var(reduced[:, 0]) == pytest.approx(np.var(x[:, 3]), rel=0.05)
    restored = Pca.from_state(type(pca.export_state()).model_validate_json(pca.export_state().model_dump_json()))
    np.testing.assert_array_equal(restored.transform(x), reduced)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.arange(6, dtype=np.int64).reshape(2, 3), id="int64"),
        pytest.param(np.linspace(0, 1, 7, dtype=np.float32), id="float32"),
        pytest.param(np.array([[np.pi, -0.0]]), id="float64"),
    ],
)
def test_encoded_array_round_trip(array: NDArray[Any]) -> None:
    decoded = EncodedArray.model_validate_json(EncodedArray.of(array).model_dump_json()).decode()
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_encoded_array_rejects_truncated_data() -> None:
    encoded = EncodedArray.of(np.zeros(4))
    with pytest.raises(ValueError, match="do not fit"):
        EncodedArray(dtype="float64", shape=(5,), data=encoded.data).decode()


def test_both_window_tests_declare_drift_at_a_p_value_equal_to_alpha(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule, ``p <= alpha``, for the MMD and the KS test (the permutation test's size needs the equality)."""
    rng = np.random.default_rng(0)
    detector = WindowTests(
        rng.normal(size=(100, 1)).astype(np.float32), window_events=50, p_value=0.05, n_permutations=99
    )
    monkeypatch.setattr(window_tests, "permutation_p_value", lambda *_: 0.05)
    monkeypatch.setattr(window_tests, "ks_p_values", lambda *_: np.array([0.05]))
    results = detector.test(rng.normal(size=(50, 1)).astype(np.float32))
    assert [(r.p_value, r.drift) for r in results] == [(0.05, True), (0.05, True)]
