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
