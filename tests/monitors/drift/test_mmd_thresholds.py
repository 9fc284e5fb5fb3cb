from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from monitors.drift._alibi import MMDDriftOnlineTorch
from monitors.drift.mmd_thresholds import bootstrap_mmd_thresholds, fresh_window_ratio, held_out_mmd_thresholds
from monitors.drift.online_backends import held_out_split


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


def _gaussian_pool(seed: int, n: int = 400, dim: int = 3) -> torch.Tensor:
    """Zero-diagonal kernel matrix of a pool laid out as ``held_out_mmd_thresholds`` lays it out."""
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, dim)))
    k = torch.exp(-(torch.cdist(x, x) ** 2) / 2)
    return k - torch.diag_embed(k.diagonal())


def test_stream_statistic_equals_the_run_statistic_window_by_window() -> None:
    """Each window of the calibration stream is scored as a bootstrap run's window is (kept rows it holds left out)."""
    from monitors.drift.mmd_thresholds import _sample_mmds, _stream, _stream_statistic

    window, kept = 6, 150
    k_pool = _gaussian_pool(1, n=250)
    stream = _stream(250, window, 1000)

    ours = _stream_statistic(k_pool, stream, window, kept)

    windows = stream.unfold(0, window, 1)
    assert all(len(set(w.tolist())) == window for w in windows), "a row twice in one window"
    assert int(stream.min()) >= window  # the initial rows are not replayed
    np.testing.assert_allclose(ours, _sample_mmds(k_pool, windows, window, kept)[:, 0], rtol=0, atol=1e-12)


def _thresholds(seed: int, *, n_bootstraps: int, n_steady: int) -> list[float]:
    from monitors.drift.mmd_thresholds import held_out_mmd_thresholds

    n = 400
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3)))
    k = torch.exp(-(torch.cdist(x, x) ** 2) / 2)
    ref, init, held = torch.arange(0, 270), torch.arange(270, 275), torch.arange(275, n)
    torch.manual_seed(seed)
    return held_out_mmd_thresholds(
        k, ref_inds=ref, init_test_inds=init, held_out_inds=held, ert=20, n_bootstraps=n_bootstraps, n_steady=n_steady
    )


def test_steady_threshold_is_seeded_and_leaves_the_earlier_thresholds() -> None:
    sequential = _thresholds(3, n_bootstraps=200, n_steady=0)
    steady = _thresholds(3, n_bootstraps=200, n_steady=4000)

    assert steady == _thresholds(3, n_bootstraps=200, n_steady=4000)
    assert steady[:-1] == sequential[:-1]
    assert steady[-1] != _thresholds(4, n_bootstraps=200, n_steady=4000)[-1]


def test_steady_threshold_agrees_with_many_sequential_runs_and_its_spread_shrinks() -> None:
    """Same level as the sequential last threshold (given plenty of runs); the spread over seeds falls with the steps.

    ERT 20, window 5: the sequential estimate from 20,000 runs (1,000 per event of ERT) has a Monte-Carlo
    error of ~1-2%; a stream of 20 x ERT steps rests on ~20 alarms, of 400 x ERT on ~400.
    """
    reference = _thresholds(0, n_bootstraps=20_000, n_steady=0)[-1]
    short = np.array([_thresholds(seed, n_bootstraps=200, n_steady=20 * 20)[-1] for seed in range(8)])
    long = np.array([_thresholds(seed, n_bootstraps=200, n_steady=400 * 20)[-1] for seed in range(8)])

    assert abs(np.mean(long) / reference - 1) < 0.05, (np.mean(long), reference)
    assert np.std(long) < 0.5 * np.std(short), (np.std(long), np.std(short))


def test_stream_scored_in_segments_gives_the_same_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitors.drift import mmd_thresholds

    k_pool = _gaussian_pool(2, n=300)
    torch.manual_seed(1)
    whole = mmd_thresholds.steady_threshold(k_pool, window_size=6, kept=200, ert=50, n_steps=5000)
    monkeypatch.setattr(mmd_thresholds, "STREAM_CHUNK", 777)
    torch.manual_seed(1)
    assert mmd_thresholds.steady_threshold(k_pool, window_size=6, kept=200, ert=50, n_steps=5000) == whole


@pytest.mark.parametrize(
    ("kept", "held_out", "window"),
    [
        pytest.param(122, 53, 50, id="digits-122-kept"),
        pytest.param(35, 15, 10, id="small-35-kept"),
        pytest.param(665, 285, 50, id="sentences-665-kept"),
    ],
)
def test_fresh_window_ratio_is_the_variance_ratio_of_the_window_and_reference_means(
    kept: int, held_out: int, window: int
) -> None:
    """Windows drawn from fixed kept and held-out values, each against the kept values it does not hold: the
    variance of (window mean - those kept values' mean) over that of a fresh window's mean (row variance / W)."""
    values = torch.from_numpy(np.random.default_rng(4).normal(size=kept + held_out))
    values[:kept] -= values[:kept].mean()  # no offset between kept and held-out rows: the ratio leaves it out
    values[kept:] -= values[kept:].mean()
    row_variance = (values[:kept].var() * (kept - 1) + values[kept:].var() * (held_out - 1)) / (kept + held_out - 2)
    draws = torch.rand(20_000, kept + held_out, generator=torch.Generator().manual_seed(5)).argsort(1)[:, :window]
    in_window = torch.zeros(draws.shape[0], kept + held_out, dtype=torch.float64).scatter_(1, draws, 1.0)
    kept_left = 1 - in_window[:, :kept]
    reference_means = (kept_left * values[:kept]).sum(1) / kept_left.sum(1)
    differences = values[draws].mean(1) - reference_means

    measured = float(differences.var() / (row_variance / window))
    expected = fresh_window_ratio(kept=kept, held_out=held_out, window_size=window)
    assert abs(measured / expected - 1) < 0.05, (measured, expected)


def test_fresh_window_ratio_vanishes_for_a_large_reference() -> None:
    assert fresh_window_ratio(kept=122, held_out=53, window_size=50) > 1.4
    assert 1.0 <= fresh_window_ratio(kept=1_000_000, held_out=400_000, window_size=50) < 1.001


def _fresh_statistics(
    kept_rows: NDArray[np.float64], fresh: NDArray[np.float64], window: int, sigma: float
) -> torch.Tensor:
    """The deployed statistic of each window of fresh rows against every kept row (alibi-detect's formula)."""

    def kernel(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
        squared = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.asarray(np.exp(-squared / (2 * sigma**2)), dtype=np.float64)

    k_xx = kernel(kept_rows, kept_rows)
    n = len(kept_rows)
    steps, starts = len(fresh) - window + 1, np.arange(len(fresh) - window + 1)
    pairs = np.zeros(steps)
    for lag in range(1, window):
        sums = np.concatenate([[0.0], np.exp(-((fresh[:-lag] - fresh[lag:]) ** 2).sum(1) / (2 * sigma**2)).cumsum()])
        pairs += sums[starts + window - lag] - sums[starts]
    cross = np.concatenate([[0.0], kernel(kept_rows, fresh).mean(0).cumsum()])
    statistic = (k_xx.sum() - n) / (n * (n - 1)) + 2 * pairs / (window * (window - 1))
    return torch.from_numpy(statistic - 2 * (cross[starts + window] - cross[starts]) / window)


def _run_length(statistics: torch.Tensor, threshold: float, window: int) -> float:
    """1 / hazard: steps whose previous ``W - 1`` statistics were at most ``threshold`` over those crossing it."""
    earlier = statistics.unfold(0, window - 1, 1).max(1).values[:-1] <= threshold
    crossing = earlier & (statistics[window - 1 :] > threshold)
    return float(earlier.sum()) / max(int(crossing.sum()), 1)


@pytest.mark.slow
def test_steady_threshold_holds_the_ert_on_fresh_rows_for_a_small_reference() -> None:
    """60 rows (35 kept, 15 held out), window 10, ERT 50: on fresh rows the corrected steady threshold's run length
    is about the ERT (per seed it varies with the kept rows' offset); without the correction it is far longer."""
    window, ert, sigma = 10, 50, 1.5
    corrected, uncorrected = [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(60, 3))
        generator = torch.Generator().manual_seed(seed)
        ref, init, held = held_out_split(60, window, generator)
        k = torch.exp(-(torch.cdist(torch.from_numpy(x), torch.from_numpy(x)) ** 2) / (2 * sigma**2))
        thresholds = held_out_mmd_thresholds(
            k,
            ref_inds=ref,
            init_test_inds=init,
            held_out_inds=held,
            ert=ert,
            n_bootstraps=10 * ert,
            n_steady=1000 * ert,
            generator=generator,
        )
        ratio = fresh_window_ratio(kept=ref.numel(), held_out=held.numel(), window_size=window)
        statistics = _fresh_statistics(x[ref.numpy()], rng.normal(size=(150_000, 3)), window, sigma)
        corrected.append(_run_length(statistics, thresholds[-1], window))
        uncorrected.append(_run_length(statistics, thresholds[-1] * ratio, window))

    assert 0.75 * ert < np.median(corrected) < 1.33 * ert, corrected
    assert np.median(uncorrected) > 1.4 * ert, uncorrected
