"""ATC accuracy estimates: the threshold against a brute-force search, the edge cases, and how well the
estimate tracks the true accuracy of unseen corrupted digits (tolerances measured, stated below)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from held_out_digits import TORCHSCRIPT_WARNINGS, HeldOutDigits, load_held_out_digits
from monitors.estimates import MIN_LABELLED, atc_threshold, estimate_cohorts, fit_atc
from monitors.records import LabelledPrediction

pytestmark = TORCHSCRIPT_WARNINGS


def brute_force_threshold(confidence: list[float], correct: list[bool]) -> float:
    """Every distinct confidence and one threshold above them all, tried one by one in plain Python: the one
    whose share of labelled confidences below it is nearest the error rate, the highest of equals."""
    errors = sum(not c for c in correct)
    candidates = [*sorted(set(confidence)), float(np.nextafter(max(confidence), np.inf))]
    best, best_gap = candidates[0], len(confidence) + 1
    for t in candidates:
        gap = abs(sum(c < t for c in confidence) - errors)
        if gap <= best_gap:
            best, best_gap = t, gap
    return best


def test_a_hand_worked_example() -> None:
    confidence = [0.9, 0.8, 0.7, 0.6, 0.55, 0.95, 0.99, 0.5, 0.65, 0.85]
    correct = [True, True, False, True, False, True, True, False, True, True]
    # 3 errors: three confidences (0.5, 0.55, 0.6) must lie below t, so t is the 4th smallest, 0.65.
    assert atc_threshold(confidence, correct) == 0.65
    fit = fit_atc(confidence, correct, min_labelled=10)
    assert fit is not None and fit.errors == 3 and fit.fitted_on == 10
    assert fit.estimate(confidence) == pytest.approx(0.7)  # on its own data, the measured accuracy
    assert fit.fit_gap == 0.0
    assert fit.estimate([0.64, 0.65, 0.66, 0.1]) == pytest.approx(0.5)  # >= t counts as right


@pytest.mark.parametrize(
    ("seed", "decimals"),
    [
        pytest.param(0, 6, id="distinct"),
        pytest.param(1, 2, id="some-ties"),
        pytest.param(2, 1, id="many-ties"),
        pytest.param(3, 0, id="all-tied-at-0-or-1"),
    ],
)
def test_threshold_equals_a_brute_force_search(seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(20):
        n = int(rng.integers(1, 60))
        confidence = np.round(rng.uniform(0.1, 1.0, size=n), decimals)
        correct = rng.random(n) < confidence  # more confident, more often right
        expected = brute_force_threshold(confidence.tolist(), correct.tolist())
        assert atc_threshold(confidence, correct) == expected
        # and the share below it is as near the error rate as any threshold on a fine grid gets it
        grid = np.linspace(0.0, 1.0 + 1e-9, 2001)
        best_grid_gap = np.min(np.abs((confidence[None, :] < grid[:, None]).mean(axis=1) - (1 - correct.mean())))
        own_gap = abs(np.mean(confidence < expected) - (1 - correct.mean()))
        assert own_gap <= best_grid_gap + 1e-12


def test_no_errors_puts_the_threshold_at_the_lowest_labelled_confidence() -> None:
    confidence = np.linspace(0.6, 0.99, 40)
    fit = fit_atc(confidence, np.ones(40, dtype=bool))
    assert fit is not None and fit.threshold == pytest.approx(0.6) and fit.errors == 0
    assert fit.estimate([0.59, 0.6, 0.9]) == pytest.approx(2 / 3)


def test_all_errors_puts_the_threshold_above_every_labelled_confidence() -> None:
    confidence = np.linspace(0.3, 1.0, 40)
    fit = fit_atc(confidence, np.zeros(40, dtype=bool))
    assert fit is not None and fit.threshold > 1.0
    assert fit.estimate(confidence) == 0.0


def test_ties_take_the_nearest_count_and_the_higher_threshold_among_equals() -> None:
    # every confidence tied: candidates below 0.8 count 0, above count 40; 3 errors are nearer 0
    assert atc_threshold(np.full(40, 0.8), np.arange(40) >= 3) == 0.8
    # one error, candidates 0.5 (0 below), 0.7 (2 below): equally near, the higher wins
    assert atc_threshold([0.5, 0.5, 0.7, 0.7], [True, True, False, True]) == 0.7


def test_saturated_confidences_say_how_far_the_fit_is_off_on_its_own_labels() -> None:
    # 36 predictions at probability 1.0, 8 of them wrong, and 4 right ones at 0.7: no threshold puts 8
    # labelled predictions below it (the candidates count 0, 4 or 40), so the estimate on these very labels
    # is 36/40 (t = 1.0) against a measured accuracy of 32/40.
    confidence = np.array([1.0] * 36 + [0.7] * 4)
    correct = np.array([False] * 8 + [True] * 28 + [True] * 4)
    fit = fit_atc(confidence, correct)
    assert fit is not None and fit.threshold == 1.0
    assert fit.estimate(confidence) - correct.mean() == pytest.approx(0.1)
    assert fit.fit_gap == pytest.approx(0.1)


def test_too_few_labels_give_no_fit() -> None:
    confidence = np.linspace(0.5, 1.0, MIN_LABELLED)
    assert fit_atc(confidence[:-1], np.ones(MIN_LABELLED - 1, dtype=bool)) is None
    assert fit_atc(confidence, np.ones(MIN_LABELLED, dtype=bool)) is not None


@pytest.mark.parametrize(
    ("confidence", "correct", "message"),
    [
        pytest.param([], [], "non-empty", id="empty"),
        pytest.param([0.5, 1.5], [True, False], "logits", id="logits"),
        pytest.param([0.5, 0.6], [True], "shape", id="shapes"),
    ],
)
def test_bad_input_is_refused(confidence: list[float], correct: list[bool], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        atc_threshold(confidence, correct)


def _records(confidence: NDArray[np.float64], correct: NDArray[np.bool_], cohort: str) -> list[LabelledPrediction]:
    return [
        LabelledPrediction("m", "v1", 0, float(c), 0 if right else 1, 0.0, {"region": cohort})
        for c, right in zip(confidence, correct, strict=True)
    ]


def test_cohorts_use_their_own_labels_when_they_have_enough_and_else_their_versions() -> None:
    rng = np.random.default_rng(4)
    eu_conf, us_conf = rng.uniform(0.4, 1, 40), rng.uniform(0.4, 1, 10)
    eu_right, us_right = rng.random(40) < eu_conf, rng.random(10) < us_conf
    eu, us = _records(eu_conf, eu_right, "eu"), _records(us_conf, us_right, "us")
    recent = {key: rng.uniform(0.3, 1, 100) for key in [("v1", "all"), ("v1", "region=eu"), ("v1", "region=us")]}
    recent[("v2", "all")] = rng.uniform(0.3, 1, 50)  # no labels at all for v2: no estimate
    found = estimate_cohorts({("v1", "all"): eu + us, ("v1", "region=eu"): eu, ("v1", "region=us"): us}, recent)
    by_cohort = {e.cohort: e for e in found}
    assert set(by_cohort) == {"all", "region=eu", "region=us"} and {e.version for e in found} == {"v1"}
    all_threshold = atc_threshold(np.append(eu_conf, us_conf), np.append(eu_right, us_right))
    assert by_cohort["region=eu"].fitted_cohort == "region=eu"
    assert by_cohort["region=eu"].fit.threshold == atc_threshold(eu_conf, eu_right)
    assert by_cohort["region=us"].fitted_cohort == "all" and by_cohort["region=us"].fit.threshold == all_threshold
    us_estimate = np.mean(recent[("v1", "region=us")] >= all_threshold)
    assert by_cohort["region=us"].estimated_accuracy == us_estimate and by_cohort["region=us"].predictions == 100
    assert by_cohort["all"].fit.fitted_on == 50


# --- the real digits CNN: clean labelled held-out data, unseen corrupted traffic ---------------------------

SEVERITIES = (0.25, 0.5, 0.75, 1.0)
"""Corruption strengths tried (1.0 is the demo's drift phase: noise, blur or occlusion of half the image)."""
SEEDS = range(5)
TOLERANCE_FITTED_CLEAN = {0.25: 0.04, 0.5: 0.08, 0.75: 0.19, 1.0: 0.26}
"""Largest |estimate - true accuracy| allowed per severity, threshold fitted on clean labels only: what was
measured over the 5 seeds (mean/max: 0.012/0.024, 0.053/0.062, 0.136/0.164, 0.205/0.231) plus a small margin.
ATC over-estimates under strong shift: occlusion makes confident mistakes that no clean label foretold."""
TOLERANCE_REFITTED = (0.06, 0.13)
"""Mean and largest |estimate - true accuracy| when labels of half the corrupted traffic have arrived and the
threshold is refitted on them with the clean ones, estimating the unseen other half: measured 0.046 / 0.107."""


@pytest.fixture(scope="module")
def held_out_digits(model_dir: Path) -> HeldOutDigits:
    return load_held_out_digits(model_dir)


def test_estimate_tracks_the_true_accuracy_of_unseen_corrupted_digits(held_out_digits: HeldOutDigits) -> None:
    probabilities, labels = held_out_digits.held_out()
    fit = fit_atc(probabilities.max(axis=1), probabilities.argmax(axis=1) == labels)
    assert fit is not None and fit.fitted_on == 449
    clean, clean_labels = (
        held_out_digits.probabilities(held_out_digits.split.test.features),
        held_out_digits.split.test.labels,
    )
    assert abs(fit.estimate(clean.max(axis=1)) - np.mean(clean.argmax(axis=1) == clean_labels)) < 0.02
    mean_estimates = []
    for severity in SEVERITIES:
        atc_errors, confidence_errors, estimates = [], [], []
        for seed in SEEDS:
            traffic, truth = held_out_digits.traffic(severity=severity, seed=seed)
            accuracy = np.mean(traffic.argmax(axis=1) == truth)
            estimates.append(fit.estimate(traffic.max(axis=1)))
            atc_errors.append(abs(estimates[-1] - accuracy))
            confidence_errors.append(abs(traffic.max(axis=1).mean() - accuracy))  # the naive estimate
        assert max(atc_errors) <= TOLERANCE_FITTED_CLEAN[severity], (severity, atc_errors)
        assert np.mean(atc_errors) < np.mean(confidence_errors), "ATC beats the mean confidence"
        mean_estimates.append(np.mean(estimates))
    assert np.all(np.diff(mean_estimates) < 0), f"stronger corruption, lower estimate: {mean_estimates}"


def test_refitting_as_labels_arrive_tracks_the_rest_of_the_shifted_traffic(held_out_digits: HeldOutDigits) -> None:
    clean, clean_labels = held_out_digits.held_out()
    fitted, unseen = np.arange(450)[::2], np.arange(450)[1::2]
    errors = []
    for severity in SEVERITIES:
        for seed in SEEDS:
            traffic, truth = held_out_digits.traffic(severity=severity, seed=seed)
            fit = fit_atc(
                np.concatenate([clean.max(axis=1), traffic[fitted].max(axis=1)]),
                np.concatenate([clean.argmax(axis=1) == clean_labels, traffic[fitted].argmax(axis=1) == truth[fitted]]),
            )
            assert fit is not None
            accuracy = np.mean(traffic[unseen].argmax(axis=1) == truth[unseen])
            errors.append(abs(fit.estimate(traffic[unseen].max(axis=1)) - accuracy))
    assert np.mean(errors) <= TOLERANCE_REFITTED[0] and max(errors) <= TOLERANCE_REFITTED[1], errors
