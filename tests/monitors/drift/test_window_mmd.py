"""The windowed MMD permutation test decides on p = (1 + #{permuted >= observed}) / (1 + B): its size is alpha."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from scipy import stats

from demo.models.training import DatasetSplit
from monitors.drift import window_tests
from monitors.drift._alibi import MMDDriftTorch, mmd2_from_kernel_matrix
from monitors.drift.config import DriftConfig
from monitors.drift.window_tests import (
    MMD_NAME,
    WindowTests,
    mmd2_by_split,
    permutation_p_value,
    permutation_threshold,
    permuted_y_rows,
    rejections_allowed,
)

DIM = 4
REFERENCE_ROWS, WINDOW_ROWS, PERMUTATIONS = 600, 300, 100


def pixels(features: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.ascontiguousarray(features.reshape(len(features), -1))


@pytest.fixture(scope="module")
def digits_windows(digits_split: DatasetSplit) -> dict[str, NDArray[np.float32]]:
    """Real data: digit images as 64 pixels; a window of unseen digits, and one of the digits 0-4 only."""
    test = digits_split.test
    return {
        "reference": pixels(digits_split.train.features[:REFERENCE_ROWS]),
        "clean": pixels(test.features[:WINDOW_ROWS]),
        "fewer-classes": pixels(test.features[test.labels < 5][:WINDOW_ROWS]),
    }


@pytest.mark.parametrize("window", ["clean", "fewer-classes"])
def test_permuted_statistics_are_alibi_detects(digits_windows: dict[str, NDArray[np.float32]], window: str) -> None:
    """One matrix product gives what ``mmd2_from_kernel_matrix(permute=True)`` gives, draw for draw.

    Both in float64 on alibi-detect's own kernel matrix (float32 rounding alone moves alibi-detect's
    own values by ~0.2 % of their spread).
    """
    detector = MMDDriftTorch(digits_windows["reference"], n_permutations=PERMUTATIONS, device="cpu")
    x_ref, y = torch.from_numpy(digits_windows["reference"]), torch.from_numpy(digits_windows[window])
    kernel_mat = detector.kernel_matrix(x_ref, y).to(torch.float64).fill_diagonal_(0.0)
    n_rows, m = kernel_mat.shape[0], len(y)
    k_xx, k_xy, k_yy = kernel_mat[:-m, :-m], kernel_mat[:-m, -m:], kernel_mat[-m:, -m:]

    torch.manual_seed(3)
    alibi = [float(mmd2_from_kernel_matrix(kernel_mat, m, permute=True, zero_diag=False)) for _ in range(PERMUTATIONS)]
    torch.manual_seed(3)
    y_rows = permuted_y_rows(n_rows, m, PERMUTATIONS)
    in_y = torch.zeros(n_rows, PERMUTATIONS, dtype=torch.float64).scatter_(0, y_rows.T, 1.0)
    ours = mmd2_by_split(k_xx, k_xy, k_yy, in_y).numpy()

    assert len(set(alibi)) == PERMUTATIONS  # distinct draws: a mismatch in any one would show
    np.testing.assert_allclose(ours, alibi, rtol=1e-9, atol=1e-15)
    observed = torch.zeros(n_rows, 1, dtype=torch.float64)
    observed[-m:] = 1.0
    assert float(mmd2_by_split(k_xx, k_xy, k_yy, observed)[0]) == pytest.approx(
        float(mmd2_from_kernel_matrix(kernel_mat, m, permute=False, zero_diag=False)), rel=1e-9
    )


@pytest.mark.parametrize(("window", "drift"), [("clean", False), ("fewer-classes", True)])
def test_window_mmd_agrees_with_alibi_detects_detector(
    digits_windows: dict[str, NDArray[np.float32]], window: str, drift: bool
) -> None:
    """Same seed, same permutations: alibi-detect's p-value ``#{permuted >= observed} / B`` plus one, over ``B + 1``."""
    reference, x = digits_windows["reference"], digits_windows[window]
    alibi = MMDDriftTorch(reference, p_val=0.05, n_permutations=PERMUTATIONS, device="cpu")
    ours = WindowTests(reference, window_events=WINDOW_ROWS, p_value=0.05, n_permutations=PERMUTATIONS)

    torch.manual_seed(4)
    alibi_p, alibi_mmd2, _ = alibi.score(x)
    torch.manual_seed(4)
    (result,) = [r for r in ours.test(x) if r.name == MMD_NAME]

    assert result.p_value == pytest.approx((1 + round(alibi_p * PERMUTATIONS)) / (1 + PERMUTATIONS))
    assert result.score == pytest.approx(alibi_mmd2, abs=1e-6)  # alibi-detect sums ~1e6 kernel values in float32
    assert result.drift is drift and result.drift == (result.score > result.threshold)


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


def test_many_permutations_are_scored_in_bounded_products(
    digits_windows: dict[str, NDArray[np.float32]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Splitting the permutations over several products changes nothing but the memory they take."""
    reference, x = digits_windows["reference"], digits_windows["fewer-classes"]
    tests = WindowTests(reference, window_events=WINDOW_ROWS, p_value=0.05, n_permutations=300)

    def permuted(splits_per_product: int) -> tuple[float, NDArray[np.float64]]:
        monkeypatch.setattr(window_tests, "SPLITS_PER_PRODUCT", splits_per_product)
        torch.manual_seed(5)
        return tests._mmd.permutation_test(x)

    (observed, chunked), (observed_whole, whole) = permuted(64), permuted(1000)
    assert observed == observed_whole and len(chunked) == 300
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)
