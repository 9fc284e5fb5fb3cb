"""Bootstrap thresholds of the online MMD detector, vectorised.

The same procedure as alibi-detect's ``MMDDriftOnlineTorch._configure_thresholds``
(Cobb et al., 2021): each bootstrap sample splits the reference into a
sub-reference and an extended test window of ``2W - 1`` rows, read as ``W``
overlapping windows; the threshold at step ``w`` is the ``1 - 1/ERT`` quantile
of the squared MMD over the samples that have not crossed an earlier
threshold. alibi-detect loops in Python over samples and windows (about a
minute at ERT 1000, window 50, 10,000 samples); here each chunk of samples is
one tensor operation. Permutations are drawn as alibi-detect draws them, so a
given torch seed gives the same thresholds up to float rounding (tested).
"""

from __future__ import annotations

import torch

from monitors.drift._alibi import quantile

CHUNK = 500
"""Bootstrap samples processed together: memory is ``CHUNK x (2W-1)^2`` doubles."""


def bootstrap_mmd_thresholds(k_xx: torch.Tensor, *, window_size: int, ert: int, n_bootstraps: int) -> list[float]:
    """Thresholds of the squared MMD at steps ``0 .. window_size - 1`` from the reference kernel matrix."""
    n = k_xx.shape[0]
    etw = 2 * window_size - 1
    if n <= etw + 1:
        raise ValueError(f"reference of {n} rows is too small for window_size={window_size}")
    perms = torch.stack([torch.randperm(n) for _ in range(n_bootstraps)])
    test_rows = perms[:, -etw:].to(k_xx.device)
    kernel = k_xx.double()
    column_sums = kernel.sum(0)
    full_sum = kernel.sum() - kernel.diagonal().sum()
    mmds = torch.cat(
        [_window_mmds(kernel, column_sums, full_sum, rows, window_size) for rows in torch.split(test_rows, CHUNK)]
    )
    # Select in float32, as alibi-detect does, so a sample equal to a threshold is treated alike.
    mmds = mmds.float().cpu()
    thresholds: list[float] = []
    alive = torch.ones(n_bootstraps, dtype=torch.bool)
    for w in range(window_size):
        threshold = quantile(mmds[alive, w], 1 - 1.0 / ert)
        thresholds.append(threshold)
        alive &= mmds[:, w] < threshold
    return thresholds


def _window_mmds(
    kernel: torch.Tensor, column_sums: torch.Tensor, full_sum: torch.Tensor, rows: torch.Tensor, window_size: int
) -> torch.Tensor:
    """Squared MMD of each sample (row of ``rows``) at each of the ``W`` overlapping windows: ``(B, W)``."""
    n = kernel.shape[0]
    etw = rows.shape[1]
    rw_size = n - etw
    k_yy = kernel[rows[:, :, None], rows[:, None, :]]  # (B, etw, etw)
    k_yy_offdiag = k_yy - torch.diag_embed(k_yy.diagonal(dim1=1, dim2=2))
    # The sub-reference is every row not in the test window, so its column sums follow from the full ones.
    k_xy_cols = column_sums[rows] - k_yy.sum(1)  # (B, etw)
    k_xx_sums = (full_sum - k_yy_offdiag.sum((1, 2)) - 2 * k_xy_cols.sum(1)) / (rw_size * (rw_size - 1))
    k_xy_cols = k_xy_cols / (rw_size * window_size)
    columns = []
    for w in range(window_size):
        block = k_yy_offdiag[:, w : w + window_size, w : w + window_size].sum((1, 2))
        columns.append(
            k_xx_sums + block / (window_size * (window_size - 1)) - 2 * k_xy_cols[:, w : w + window_size].sum(1)
        )
    return torch.stack(columns, 1)
