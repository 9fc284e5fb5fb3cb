from __future__ import annotations

import numpy as np
import pytest
import torch

from monitors.drift._alibi import MMDDriftOnlineTorch
from monitors.drift.mmd_thresholds import bootstrap_mmd_thresholds


@pytest.mark.parametrize(
    ("ert", "window_size", "n_bootstraps"),
    [pytest.param(50, 10, 500, id="ert50-w10"), pytest.param(20, 4, 300, id="ert20-w4")],
)
def test_same_thresholds_as_alibi_detect_for_the_same_draws(ert: int, window_size: int, n_bootstraps: int) -> None:
    reference = np.random.default_rng(0).normal(size=(250, 6)).astype(np.float32)
    torch.manual_seed(11)
    alibi = MMDDriftOnlineTorch(
        reference,
        ert=ert,
        window_size=window_size,
        n_bootstraps=n_bootstraps,
        sigma=np.array([1.5], np.float32),
        device="cpu",
        verbose=False,
    )
    torch.manual_seed(11)  # alibi-detect draws its permutations first thing, as we do

    ours = bootstrap_mmd_thresholds(alibi.k_xx, window_size=window_size, ert=ert, n_bootstraps=n_bootstraps)

    np.testing.assert_allclose(ours, alibi.thresholds, rtol=1e-5)


def test_too_small_reference_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        bootstrap_mmd_thresholds(torch.eye(10), window_size=5, ert=10, n_bootstraps=100)


def test_held_out_thresholds_equal_a_direct_computation() -> None:
    """Runs of init rows then rows drawn from kept + held-out, scored by alibi-detect's formula against kept - drawn."""
    from monitors.drift._alibi import quantile, zero_diag
    from monitors.drift.mmd_thresholds import held_out_mmd_thresholds

    window, ert, n_bootstraps = 4, 10, 200
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(40, 3)))
    k = torch.exp(-(torch.cdist(x, x) ** 2) / 2)
    ref, init, held = torch.arange(0, 20), torch.arange(20, 24), torch.arange(24, 40)
    torch.manual_seed(5)
    ours = held_out_mmd_thresholds(
        k, ref_inds=ref, init_test_inds=init, held_out_inds=held, ert=ert, n_bootstraps=n_bootstraps
    )
    torch.manual_seed(5)
    candidates = torch.cat([ref, held])
    draws = torch.rand(n_bootstraps, candidates.numel()).argsort(1)[:, : window - 1]
    mmds = torch.empty(n_bootstraps, window)
    for b in range(n_bootstraps):
        drawn = candidates[draws[b]]
        sub = torch.tensor([i for i in ref.tolist() if i not in drawn.tolist()])
        k_xx_sum = zero_diag(k[sub][:, sub]).sum() / (sub.numel() * (sub.numel() - 1))
        run = torch.cat([init, drawn])
        for w in range(window):
            y = run[w : w + window]
            k_yy = zero_diag(k[y][:, y]).sum() / (window * (window - 1))
            mmds[b, w] = k_xx_sum + k_yy - 2 * k[sub][:, y].mean()
    expected, alive = [], torch.ones(n_bootstraps, dtype=torch.bool)
    for w in range(window):
        expected.append(float(quantile(mmds[alive, w], 1 - 1 / ert)))
        alive &= mmds[:, w] <= expected[-1]
    np.testing.assert_allclose(ours, expected, rtol=1e-5)
