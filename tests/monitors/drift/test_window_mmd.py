"""The windowed MMD permutation test decides on p = (1 + #{permuted >= observed}) / (1 + B): its size is alpha."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from monitors.drift.config import DriftConfig
from monitors.drift.window_tests import (
    WindowTests,
    permutation_p_value,
    permutation_threshold,
    rejections_allowed,
)

DIM = 4


def test_p_value_counts_ties_and_adds_one() -> None:
    permuted = np.array([0.1, 0.5, 0.7, 0.2, 0.5])
    # 0.5, 0.7 and 0.5 are >= 0.5 (ties count): (1 + 3) / (1 + 5).
    assert permutation_p_value(0.5, permuted) == pytest.approx(4 / 6)
    assert permutation_p_value(0.8, permuted) == pytest.approx(1 / 6)
    assert permutation_p_value(0.0, permuted) == pytest.approx(1.0)


def test_threshold_is_the_m_plus_first_largest() -> None:
    # alpha 0.2 with 9 permutations: p <= 0.2 iff at most 1 permuted value is >= observed, m = 1.
    permuted = np.arange(1.0, 10.0)
    assert rejections_allowed(0.2, 9) == 1
    assert permutation_threshold(permuted, 0.2) == 8.0
    assert permutation_p_value(8.5, permuted) == pytest.approx(0.2)  # one value (9) >= 8.5: (1 + 1) / 10
    assert permutation_p_value(8.0, permuted) == pytest.approx(0.3)  # 8 and 9: not drift, and 8.0 > 8.0 fails too


@pytest.mark.parametrize(
    ("p_value", "n_permutations", "allowed"),
    [
        pytest.param(0.05, 100, 4, id="default-0.05-100"),
        pytest.param(0.05, 99, 4, id="0.05-99"),
        pytest.param(0.05, 19, 0, id="0.05-19-least"),
        pytest.param(0.01, 100, 0, id="0.01-100"),
    ],
)
def test_rejections_allowed(p_value: float, n_permutations: int, allowed: int) -> None:
    assert rejections_allowed(p_value, n_permutations) == allowed


def test_threshold_verdict_equals_p_value_verdict_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        permuted = rng.integers(0, 6, size=20).astype(np.float64)  # many ties
        observed = float(rng.integers(0, 7))
        alpha = float(rng.choice([0.05, 0.1, 0.2]))
        by_p = permutation_p_value(observed, permuted) <= alpha
        assert by_p == (observed > permutation_threshold(permuted, alpha))


def test_too_few_permutations_are_refused() -> None:
    reference = np.random.default_rng(1).normal(size=(50, DIM)).astype(np.float32)
    with pytest.raises(ValueError, match="use at least 99"):
        WindowTests(reference, window_events=20, p_value=0.01, n_permutations=50)
    with pytest.raises(ValueError, match="use at least 99"):
        DriftConfig(p_value=0.01, n_permutations=50)
    DriftConfig(p_value=0.01, n_permutations=50, window_tests=False)


def test_size_on_null_data_is_alpha() -> None:
    """Windows drawn from the reference's distribution are flagged at rate alpha, within a binomial tolerance.

    alpha 0.2 with 20 permutations: the +1 rule rejects with probability floor(0.2 * 21) / 21 = 19.0 %
    (alibi-detect's own rule, 23.8 %). The permutation test is exact over references too, so several
    references are drawn: one reference alone has a size of its own, a few points either side.
    """
    alpha, n_permutations = 0.2, 20
    rng = np.random.default_rng(2)
    references, windows_each = 20, 30
    flagged = 0
    for _ in range(references):
        detector = WindowTests(
            rng.normal(size=(80, DIM)).astype(np.float32),
            window_events=40,
            p_value=alpha,
            n_permutations=n_permutations,
        )
        for _ in range(windows_each):
            result = detector.test(rng.normal(size=(40, DIM)).astype(np.float32))[0]  # MMD, then KS
            assert result.drift == (result.score > result.threshold)
            assert result.p_value is not None and result.drift == (result.p_value <= alpha)
            flagged += result.drift
    n = references * windows_each
    low, high = stats.binom.interval(0.999, n, alpha)
    assert low <= flagged <= high, f"{flagged}/{n} flagged, expected within [{low:.0f}, {high:.0f}] at alpha {alpha}"
