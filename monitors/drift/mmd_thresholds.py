"""Bootstrap thresholds of the online MMD detector, vectorised.

:func:`held_out_mmd_thresholds` (what the detector uses) calibrates for the one
reference split it keeps; :func:`bootstrap_mmd_thresholds` is alibi-detect's
procedure, kept for comparison (``benchmarks/drift_ert.py --before``), described next.

It is the same procedure as alibi-detect's ``MMDDriftOnlineTorch._configure_thresholds``
(Cobb et al., 2021): each bootstrap sample splits the reference into a
sub-reference and an extended test window of ``2W - 1`` rows, read as ``W``
overlapping windows; the threshold at step ``w`` is the ``1 - 1/ERT`` quantile
of the squared MMD over the samples that have not crossed an earlier
threshold. alibi-detect loops in Python over samples and windows (about a
minute at ERT 1000, window 50, 10,000 samples); here each chunk of samples is
one tensor operation. Permutations are drawn as alibi-detect draws them, so a
given torch seed gives the same thresholds up to float rounding (tested).

:func:`steady_threshold` re-estimates the last threshold, the one that sets the run length, on a
long stream instead of from the ~10 runs above it (see there); :func:`fresh_window_ratio` then scales it
from the stream's windows to fresh ones.
"""

from __future__ import annotations

import torch

from monitors.drift._alibi import quantile

CHUNK = 500
"""Bootstrap samples processed together: memory is ``CHUNK x (2W-1)^2`` doubles."""
STREAM_CHUNK = 250_000
"""Steps of the steady-threshold stream scored together: temporaries of about ``20 x STREAM_CHUNK`` doubles
(~40 MB), besides the stream's row indices and statistics (12 bytes per step)."""


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
    return _sequential_quantiles(mmds.float().cpu(), ert=ert, keep_ties=False)


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


def held_out_mmd_thresholds(
    k_xx: torch.Tensor,
    *,
    ref_inds: torch.Tensor,
    init_test_inds: torch.Tensor,
    held_out_inds: torch.Tensor,
    ert: int,
    n_bootstraps: int,
    n_steady: int = 0,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Thresholds for the reference rows the detector keeps, calibrated mostly on rows it does not keep.

    The deployed detector compares each test window with the fixed rows ``ref_inds``; its first
    windows start as the rows ``init_test_inds``. ``held_out_inds`` are the undrifted rows it does not
    keep (the detector's held-out rows and any spare reference rows: every index of ``k_xx`` is a row).
    Each bootstrap sample is such a run: the ``W`` initial rows followed by ``W - 1`` distinct rows
    drawn from the kept and held-out rows together, scored against the kept rows less those drawn.
    Distinct rows are distinct indices: rows may hold equal embeddings (a reference repeats an input as
    traffic does), and two copies in a window are a pair with kernel 1, as in the deployed statistic,
    which leaves out each row's pair with itself by position; only an index's own pair is zeroed here.
    Drawing from the held-out rows alone would take their own sampling error for the kept reference's
    (a few hundred rows are far too few: single calibrations were off by 3x either way); drawing from
    both shrinks that error in proportion (in a mean-shift picture, to the error of the kept rows'
    offset estimated from kept and held-out rows together, ~1/(kept + held out)), so more held-out rows
    narrow it. The kept reference stays (nearly) the deployed one, unlike alibi-detect's fresh split
    per sample, whose thresholds are too high for a typical kept reference (run lengths about 2x the ERT
    on the digits embeddings); "nearly": a window is scored against the kept rows it does not hold,
    fewer than the deployed detector has, and those move opposite to the kept rows it draws, so its
    statistic scatters more than a fresh window's does (:func:`fresh_window_ratio`; where kept rows are
    few, e.g. the digits' 122, the thresholds come out too high: runs 1-8x the ERT sequentially).
    Thresholds are the ``1 - 1/ERT`` quantiles over the samples that have not
    crossed an earlier one, as in :func:`bootstrap_mmd_thresholds`. With ``n_steady`` > 0 the last
    threshold, which holds for every step after the first ``W``, is re-estimated on a clean stream of
    that many steps (:func:`steady_threshold`) and divided by :func:`fresh_window_ratio` to put it on
    the deployed detector's scale. Draws use ``generator`` (torch's global one if ``None``).
    """
    window_size, kept = init_test_inds.numel(), ref_inds.numel()
    if kept - (window_size - 1) < 2:
        raise ValueError(f"{kept} kept rows are too few for window_size={window_size}")
    pool = torch.cat([init_test_inds, ref_inds, held_out_inds]).to(k_xx.device)
    # One gather in the kernel's own precision, then one double copy with its diagonal zeroed in place: at
    # 2,450 pool rows (a 5,000-row reference) this holds 2 matrices at once instead of 4 (~100 MB less).
    k_pool = k_xx[pool[:, None], pool].double().fill_diagonal_(0.0)
    mmds = torch.cat(
        [
            _sample_mmds(
                k_pool, _draw_runs(size, pool.numel(), window_size, generator).to(k_xx.device), window_size, kept
            )
            for size in _chunks(n_bootstraps)
        ]
    )
    thresholds = _sequential_quantiles(mmds.float().cpu(), ert=ert, keep_ties=True)
    if n_steady >= window_size:  # a stream shorter than one window has no step after it
        stream_level = steady_threshold(
            k_pool, window_size=window_size, kept=kept, ert=ert, n_steps=n_steady, generator=generator
        )
        ratio = fresh_window_ratio(kept=kept, held_out=pool.numel() - window_size - kept, window_size=window_size)
        thresholds[-1] = float(torch.tensor(stream_level / ratio, dtype=torch.float32))
    return thresholds


def fresh_window_ratio(*, kept: int, held_out: int, window_size: int) -> float:
    """How much more a calibration stream window scatters about its reference than a fresh one (about 1 for many rows).

    The steady stream draws each window of ``W`` rows from the ``kept`` and ``held_out`` rows (``j = W kept /
    (kept + held_out)`` kept ones on average) and scores it against the kept rows it does not hold. Those
    shrink as the window takes rows, and each kept row a window draws moves the rest the other way, so the
    difference of their mean embeddings, ``(j/W + j/(kept - j)) d_K + ((W - j)/W) d_H`` with ``d_K``, ``d_H``
    the drawn rows' deviations from the kept and held-out means (without-replacement variances
    ``(1 - j/kept)/j`` and ``(1 - h/held_out)/h`` per unit of row variance, ``h = W - j``), scatters more than
    a fresh window does about the deployed detector's fixed kept rows (variance ``1/W``). This is that ratio of
    variances. The statistic is, to first order, a squared norm of that difference less its mean, so its
    spread, and a threshold, scale with the ratio: 1.45 for the digits' 122 kept and 53 held-out rows at
    window 50 (their steady thresholds gave mean runs of 2.4-23x the ERT without it, 0.5-3.4x with it), 1.06
    for 665 kept and 285 held out. It leaves out each seed's offset of the kept rows, which the calibration
    sees only through the held-out rows (with so few rows that alone spreads the runs several-fold), and it
    is not applied to the sequential thresholds, whose last one comes out lower: divided by it, the digits'
    runs came out about half the ERT.
    """
    pool = kept + held_out
    drawn_kept = window_size * kept / pool
    drawn_held = window_size - drawn_kept
    kept_part = (drawn_kept / window_size + drawn_kept / (kept - drawn_kept)) ** 2
    kept_part *= (1 - drawn_kept / kept) / drawn_kept
    held_part = (drawn_held / window_size) ** 2 * (1 - drawn_held / held_out) / drawn_held if held_out else 0.0
    return window_size * (kept_part + held_part)


def _chunks(total: int) -> list[int]:
    return [min(CHUNK, total - start) for start in range(0, total, CHUNK)]


def _draw_runs(count: int, pool_size: int, window_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` runs of pool rows: the initial window ``[0, W)``, then ``W - 1`` distinct rows (indices) of the
    rest."""
    draws = (
        torch.rand(count, pool_size - window_size, generator=generator).argsort(1)[:, : window_size - 1] + window_size
    )
    return torch.cat([torch.arange(window_size).expand(count, -1), draws], 1)


def steady_threshold(
    k_pool: torch.Tensor,
    *,
    window_size: int,
    kept: int,
    ert: int,
    n_steps: int,
    generator: torch.Generator | None = None,
) -> float:
    """The threshold after the first ``W`` steps, whose hazard on a clean stream of ``n_steps`` events is ``1 / ERT``.

    The detector uses its last threshold at every step after the first ``W``, so that one threshold
    sets the run length. The sequential procedure estimates it from the ~10 of ``10 x ERT`` runs
    above it, and conditions it on the runs' survival under the earlier thresholds, which are just
    as noisy. Here it is what the run length needs directly: the level ``h`` whose hazard on a
    stationary stream is ``1 / ERT``, i.e. ``S_t > h`` at a step whose previous ``W - 1`` statistics
    were ``<= h`` (windows further back share no row with ``S_t``), counted per step whose previous
    ``W - 1`` were ``<= h``. The stream replays the kept and held-out rows (pool rows ``[W, n)``) in
    shuffled blocks, no row (index) twice within a window, though copies of an embedding at other
    indices come together as traffic brings them, each window scored against the kept rows it does not
    hold; one step costs ``O(W)`` kernel look-ups, so ``1000 x ERT`` steps (~1,000 alarms, Monte-Carlo
    error of the hazard ~3%) cost less than the ``10 x ERT`` sequential runs.
    """
    z = _stream(k_pool.shape[0], window_size, n_steps, generator)
    segments = (z[start : start + STREAM_CHUNK + window_size - 1] for start in range(0, n_steps + 1, STREAM_CHUNK))
    s = torch.cat([_stream_statistic(k_pool, rows, window_size, kept).float().cpu() for rows in segments])
    earlier = s.unfold(0, window_size - 1, 1).max(1).values[:-1]  # max of the W - 1 statistics before ``current``
    current = s[window_size - 1 :]
    low, high = float(current.min()), float(current.max())
    for _ in range(60):  # bisection on h: the hazard falls as h rises
        middle = (low + high) / 2
        below = earlier <= middle
        hazard = float((below & (current > middle)).sum()) / max(int(below.sum()), 1)
        low, high = (middle, high) if hazard > 1.0 / ert else (low, middle)
    return float(torch.tensor(high, dtype=torch.float32))


def _stream(pool_size: int, window_size: int, n_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pool rows ``[W, pool_size)`` in blocks, each a permutation of the rows not among the last ``W - 1`` drawn."""
    rows = torch.arange(window_size, pool_size)
    blocks, recent = [], torch.zeros(pool_size, dtype=torch.bool)
    total = 0
    while total < n_steps + window_size:
        candidates = rows[~recent[rows]]
        block = candidates[torch.randperm(candidates.numel(), generator=generator)]
        blocks.append(block)
        total += block.numel()
        recent.zero_()
        recent[block[-(window_size - 1) :]] = True
    return torch.cat(blocks)[: n_steps + window_size]


def _stream_statistic(k_pool: torch.Tensor, z: torch.Tensor, window_size: int, kept: int) -> torch.Tensor:
    """Squared MMD of each window ``z[t : t + W]`` against the kept rows not in it (pool as in ``_sample_mmds``)."""
    z = z.to(k_pool.device)
    w, steps = window_size, z.numel() - window_size + 1
    is_kept = ((z >= w) & (z < w + kept)).to(k_pool.dtype)
    kept_sums = k_pool[w : w + kept].sum(0)[z]
    pair_sum = k_pool[w : w + kept, w : w + kept].sum()
    # Pair (s, s + lag) lies in window t for s in [t, t + W - lag): summed over lags, the window sums are
    # cumsum(pairs shifted right by lag)[t + W] - cumsum(pairs)[t], so each lag adds in place, no cumsum.
    n = z.numel()
    starts = torch.zeros(3, n, dtype=k_pool.dtype, device=k_pool.device)  # all, both kept, to kept
    ends = torch.zeros_like(starts)
    for lag in range(1, w):
        k = k_pool[z[:-lag], z[lag:]]
        first, second = is_kept[:-lag], is_kept[lag:]
        pairs = torch.stack([k, k * first * second, k * (first + second)])
        starts[:, : n - lag] += pairs
        ends[:, lag:n] += pairs
    sums = torch.nn.functional.pad(ends.cumsum(1), (1, 0))[:, w : w + steps]
    all_pairs, kept_pairs, to_kept = sums - torch.nn.functional.pad(starts.cumsum(1), (1, 0))[:, :steps]
    drawn = _window_sums(is_kept, w, steps)
    sub = kept - drawn
    k_xx = (pair_sum - 2 * _window_sums(kept_sums * is_kept, w, steps) + 2 * kept_pairs) / (sub * (sub - 1))
    k_xy = (_window_sums(kept_sums, w, steps) - to_kept) / (sub * w)
    statistic: torch.Tensor = k_xx + 2 * all_pairs / (w * (w - 1)) - 2 * k_xy
    return statistic


def _window_sums(values: torch.Tensor, length: int, steps: int) -> torch.Tensor:
    """Sums of ``values[t : t + length]`` for ``t`` in ``[0, steps)``."""
    sums = torch.nn.functional.pad(values.cumsum(0), (1, 0))
    return sums[length : length + steps] - sums[:steps]


def _sample_mmds(k_pool: torch.Tensor, rows: torch.Tensor, window_size: int, kept: int) -> torch.Tensor:
    """Squared MMD of each sample's windows (``L - W + 1`` of its ``L`` rows) against the kept rows it did not draw.

    Pool rows ``[0, W)`` are the initial window, ``[W, W + kept)`` the kept reference.
    """
    k_yy = k_pool[rows[:, :, None], rows[:, None, :]]  # (B, 2W-1, 2W-1), zero diagonal
    is_kept = ((rows >= window_size) & (rows < window_size + kept)).to(k_pool.dtype)
    kept_sums = k_pool[window_size : window_size + kept].sum(0)[rows]  # sum over all kept rows, per ETW row
    sub_size = kept - is_kept.sum(1)
    pair_sum = k_pool[window_size : window_size + kept, window_size : window_size + kept].sum()
    k_xx_sums = pair_sum - 2 * (kept_sums * is_kept).sum(1) + torch.einsum("bi,bij,bj->b", is_kept, k_yy, is_kept)
    k_xx_sums = k_xx_sums / (sub_size * (sub_size - 1))
    ref_means = (kept_sums - torch.einsum("bj,bjy->by", is_kept, k_yy)) / sub_size[:, None]
    # 2-d prefix sums with a leading zero row and column, built in place: one more (B, L+1, L+1) buffer, not three.
    prefix = k_yy.new_zeros((k_yy.shape[0], k_yy.shape[1] + 1, k_yy.shape[2] + 1))
    prefix[:, 1:, 1:] = k_yy
    del k_yy
    prefix.cumsum_(1).cumsum_(2)
    start = torch.arange(rows.shape[1] - window_size + 1, device=rows.device)
    end = start + window_size
    block = prefix[:, end, end] - prefix[:, start, end] - prefix[:, end, start] + prefix[:, start, start]
    means = torch.nn.functional.pad(ref_means.cumsum(1), (1, 0))
    return (
        k_xx_sums[:, None]
        + block / (window_size * (window_size - 1))
        - 2 * (means[:, end] - means[:, start]) / window_size
    )


def _sequential_quantiles(mmds: torch.Tensor, *, ert: int, keep_ties: bool) -> list[float]:
    """Per step, the ``1 - 1/ERT`` quantile over the samples below every earlier threshold."""
    thresholds: list[float] = []
    alive = torch.ones(mmds.shape[0], dtype=torch.bool)
    for w in range(mmds.shape[1]):
        threshold = quantile(mmds[alive, w], 1 - 1.0 / ert)
        thresholds.append(threshold)
        # A sample equal to its threshold raises no alarm (drift is ``score > threshold``): it stays alive.
        alive &= mmds[:, w] <= threshold if keep_ties else mmds[:, w] < threshold
    return thresholds
