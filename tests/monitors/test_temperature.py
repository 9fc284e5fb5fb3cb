"""Temperature scaling: the fit against a grid search written independently, its edge cases, and the ECE of
held-out digits (clean and corrupted) before and after a temperature fitted on the other half."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from held_out_digits import TORCHSCRIPT_WARNINGS, HeldOutDigits, load_held_out_digits
from monitors.records import LabelledPrediction
from monitors.temperature import BOUNDS, MIN_LABELLED, fit_temperature, scale, temperature_of

pytestmark = TORCHSCRIPT_WARNINGS


def powered(probabilities: NDArray[np.float64], temperature: float) -> NDArray[np.float64]:
    """``softmax(log p / T)`` written as ``p ** (1/T)`` normalised."""
    raised = probabilities ** (1.0 / temperature)
    return np.asarray(raised / raised.sum(axis=1, keepdims=True), dtype=np.float64)


def expected_ece(probabilities: NDArray[np.float64], labels: NDArray[np.int64], bins: int = 15) -> float:
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    total = 0.0
    for k in range(bins):
        chosen = (confidence > k / bins) & (confidence <= (k + 1) / bins) if k else confidence <= 1 / bins
        if chosen.any():
            total += chosen.mean() * abs(correct[chosen].mean() - confidence[chosen].mean())
    return total


def overconfident(
    seed: int, n: int = 400, classes: int = 4, truth: float = 2.0
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Probabilities ``softmax(z)`` of labels drawn from ``softmax(z / truth)``: over-confident by ``truth``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, size=(n, classes))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    honest = powered(probabilities, truth)
    labels = np.array([rng.choice(classes, p=row) for row in honest])
    return probabilities, labels


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed-{s}") for s in range(3)])
def test_fit_equals_a_grid_search(seed: int) -> None:
    probabilities, labels = overconfident(seed)
    grid = np.exp(np.linspace(np.log(BOUNDS[0]), np.log(BOUNDS[1]), 6001))
    nlls = [-np.mean(np.log(powered(probabilities, t)[np.arange(len(labels)), labels])) for t in grid]
    best = int(np.argmin(nlls))
    fit = fit_temperature(probabilities, labels)
    assert fit is not None and fit.count == 400
    assert grid[best - 1] <= fit.temperature <= grid[best + 1]
    assert fit.nll_after == pytest.approx(min(nlls), abs=1e-6)
    assert fit.nll_after <= min(nlls) + 1e-12
    assert fit.nll_before == pytest.approx(-np.mean(np.log(probabilities[np.arange(400), labels])))
    assert fit.ece_before == pytest.approx(expected_ece(probabilities, labels), abs=1e-12)
    assert fit.ece_after == pytest.approx(expected_ece(powered(probabilities, fit.temperature), labels), abs=1e-12)
    assert 1.6 < fit.temperature < 2.5, "finds the over-confidence the labels were drawn with (T = 2)"


def test_scaling_keeps_the_predicted_class_and_t1_is_the_identity() -> None:
    probabilities, _ = overconfident(5)
    np.testing.assert_allclose(scale(probabilities, 1.0), probabilities, atol=1e-12)
    for temperature in (0.3, 3.0):
        scaled = scale(probabilities, temperature)
        np.testing.assert_array_equal(scaled.argmax(axis=1), probabilities.argmax(axis=1))
        np.testing.assert_allclose(scaled, powered(probabilities, temperature), atol=1e-12)


def test_no_errors_drives_the_temperature_to_its_lower_bound() -> None:
    probabilities, _ = overconfident(6)
    fit = fit_temperature(probabilities, probabilities.argmax(axis=1))
    assert fit is not None and fit.temperature == pytest.approx(BOUNDS[0])


def test_zero_probabilities_are_clipped_not_infinite() -> None:
    probabilities = np.tile([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], (20, 1))
    fit = fit_temperature(probabilities, np.tile([1, 1], 20))
    assert fit is not None and np.isfinite(fit.nll_before) and np.isfinite(fit.nll_after)


def test_too_few_labels_give_no_fit_and_bad_input_is_refused() -> None:
    probabilities, labels = overconfident(7, n=MIN_LABELLED)
    assert fit_temperature(probabilities[:-1], labels[:-1]) is None
    assert fit_temperature(probabilities, labels) is not None
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(probabilities, np.full(MIN_LABELLED, 4))
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(probabilities[:, 0], labels)
    with pytest.raises(ValueError, match="positive"):
        scale(probabilities, 0.0)


def test_records_without_a_usable_vector_are_left_out() -> None:
    probabilities, labels = overconfident(8, n=40)
    records = [
        LabelledPrediction("m", "v", int(p.argmax()), float(p.max()), int(y), 0.0, probabilities=p)
        for p, y in zip(probabilities, labels, strict=True)
    ]
    others = [
        LabelledPrediction("m", "v", 0, 0.9, 0, 0.0),  # no vector
        LabelledPrediction("m", "v", 0, 0.9, 0, 0.0, probabilities=np.array([0.9, 0.1])),  # another width
    ]
    fit = temperature_of(records + others)
    direct = fit_temperature(probabilities, labels)
    assert fit is not None and direct is not None and fit.count == 40
    assert fit.temperature == pytest.approx(direct.temperature)
    assert temperature_of(others[:1]) is None


# --- the real digits CNN ---------------------------------------------------------------------------------

ECE_CORRUPTED = {0.5: (0.073, 0.038), 1.0: (0.184, 0.068)}
"""Measured mean ECE before/after over 5 seeds on held-out halves of clean + corrupted digits."""


@pytest.fixture(scope="module")
def held_out_digits(model_dir: Path) -> HeldOutDigits:
    return load_held_out_digits(model_dir)


@pytest.mark.parametrize("severity", [pytest.param(s, id=f"severity-{s}") for s in ECE_CORRUPTED])
def test_a_temperature_fitted_on_one_half_lowers_the_ece_of_the_other(
    held_out_digits: HeldOutDigits, severity: float
) -> None:
    """Labelled window = clean held-out digits and the demo's corrupted traffic; fit on a random half."""
    clean, clean_labels = held_out_digits.held_out()
    before, after = [], []
    for seed in range(5):
        traffic, labels = held_out_digits.traffic(severity=severity, seed=seed)
        probabilities, truth = np.concatenate([clean, traffic]), np.concatenate([clean_labels, labels])
        order = np.random.default_rng(seed).permutation(len(truth))
        fitted, held = order[: len(order) // 2], order[len(order) // 2 :]
        fit = fit_temperature(probabilities[fitted], truth[fitted])
        assert fit is not None and fit.temperature > 1.2, "the CNN is over-confident on shifted digits"
        before.append(expected_ece(probabilities[held], truth[held]))
        after.append(expected_ece(scale(probabilities[held], fit.temperature), truth[held]))
        assert after[-1] < before[-1] - 0.005, (seed, before[-1], after[-1])
    assert np.mean(after) < 0.6 * np.mean(before), (np.mean(before), np.mean(after))
