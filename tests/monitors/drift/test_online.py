from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from monitors.drift.base import DriftBatch, OnlineResult
from monitors.drift.online import OnlineDriftDetector
from monitors.drift.online_backends import KEPT_SHARE
from monitors.drift.states import OnlineMethod, OnlineState

ERT = 50
WINDOW = 10
BOOTSTRAPS = 500
DIM = 8


def gaussian(rng: np.random.Generator, n: int, shift: float = 0.0) -> NDArray[Any]:
    return (rng.normal(size=(n, DIM)) + shift).astype(np.float32)


@pytest.fixture(scope="module", params=[pytest.param("mmd", id="mmd"), pytest.param("lsdd", id="lsdd")])
def calibrated(request: pytest.FixtureRequest) -> OnlineState:
    """One calibration per method for the whole module; tests rebuild detectors from its state."""
    import torch

    torch.manual_seed(1)
    method: OnlineMethod = request.param
    reference = gaussian(np.random.default_rng(1), 300)
    detector = OnlineDriftDetector.calibrate(
        reference, method=method, ert=ERT, window_size=WINDOW, n_bootstraps=BOOTSTRAPS
    )
    return detector.export_state()


def first_alarm(detector: OnlineDriftDetector, x: NDArray[Any]) -> int | None:
    scores, thresholds = detector.scores(x)
    hits = np.nonzero(scores > thresholds)[0]
    return int(hits[0]) + 1 if hits.size else None


def test_false_alarm_run_length_matches_ert(calibrated: OnlineState) -> None:
    rng = np.random.default_rng(2)
    detector = OnlineDriftDetector.from_state(calibrated)
    cap = 4 * ERT
    runs = []
    for _ in range(30):
        detector.reset()
        runs.append(first_alarm(detector, gaussian(rng, cap)) or cap)
    assert ERT / 2.5 < np.mean(runs) < ERT * 2.5
    # A run much shorter than the ERT mostly passes without a false alarm: P = (1 - 1/ERT)^5 ~ 0.9.
    assert np.mean([r > ERT // 10 for r in runs]) >= 0.75


def test_alarm_soon_after_shift(calibrated: OnlineState) -> None:
    rng = np.random.default_rng(3)
    detector = OnlineDriftDetector.from_state(calibrated)
    delays = []
    for _ in range(10):
        detector.reset()
        first_alarm(detector, gaussian(rng, 2 * WINDOW))
        delays.append(first_alarm(detector, gaussian(rng, 5 * WINDOW, shift=1.0)))
    assert all(d is not None and d <= 2 * WINDOW for d in delays), delays


def test_exported_state_scores_identically_without_recalibrating(calibrated: OnlineState) -> None:
    rng = np.random.default_rng(4)
    stream = np.concatenate([gaussian(rng, 60), gaussian(rng, 40, shift=0.8)])
    original = OnlineDriftDetector.from_state(calibrated)
    first_scores, first_thresholds = original.scores(stream[:30])

    restored = OnlineDriftDetector.from_state(
        OnlineState.model_validate_json(original.export_state().model_dump_json())
    )
    restored.scores(stream[:30])
    rest_original = original.scores(stream[30:])
    rest_restored = restored.scores(stream[30:])

    np.testing.assert_array_equal(rest_original[0], rest_restored[0])
    np.testing.assert_array_equal(rest_original[1], rest_restored[1])
    assert first_scores.shape == first_thresholds.shape == (30,)


def test_calibrated_detector_equals_one_restored_from_json() -> None:
    rng = np.random.default_rng(5)
    detector = OnlineDriftDetector.calibrate(gaussian(rng, 200), method="mmd", ert=20, window_size=5, n_bootstraps=200)
    restored = OnlineDriftDetector.from_state(
        OnlineState.model_validate_json(detector.export_state().model_dump_json())
    )
    stream = np.concatenate([gaussian(rng, 30), gaussian(rng, 30, shift=1.0)])
    np.testing.assert_array_equal(detector.scores(stream)[0], restored.scores(stream)[0])


def test_history_stays_bounded(calibrated: OnlineState) -> None:
    detector = OnlineDriftDetector.from_state(calibrated)
    detector.scores(gaussian(np.random.default_rng(6), 300))
    backend = detector.backend
    assert backend.t == 300
    assert len(backend.test_stats) == 0 and len(backend.drift_preds) == 0
    assert tuple(backend.test_window.shape) == (WINDOW, DIM)


def test_update_reports_the_state_after_the_last_event_and_counts_earlier_alarms(calibrated: OnlineState) -> None:
    rng = np.random.default_rng(7)
    shifted_last = np.concatenate([gaussian(rng, 20), gaussian(rng, 20, shift=1.5)])
    (result,) = OnlineDriftDetector.from_state(calibrated).update(_batch(shifted_last))
    assert result.name == f"{calibrated.method}_online"
    assert result.drift and result.score > result.threshold
    # A burst of shifted events followed by clean ones: alarms inside the batch are counted, but the verdict is
    # the latest traffic's (the worst event's would say drift in most big clean batches, see below).
    burst = np.concatenate([gaussian(rng, 20), gaussian(rng, 20, shift=1.5), gaussian(rng, 10 * WINDOW)])
    scores, thresholds = OnlineDriftDetector.from_state(calibrated).scores(burst)
    assert scores[-1] <= thresholds[-1], "the window has slid past the burst"
    (result,) = OnlineDriftDetector.from_state(calibrated).update(_batch(burst))
    assert isinstance(result, OnlineResult)
    assert not result.drift and (result.score, result.threshold) == (scores[-1], thresholds[-1])
    assert result.alarms == int(np.count_nonzero(scores > thresholds)) > 0


def test_clean_batches_say_drift_about_as_often_as_clean_events_do_whatever_their_size(
    calibrated: OnlineState,
) -> None:
    """The verdict after each batch's last event alarms in about the per-event share of clean batches; the worst
    event of a batch of 100 at ERT 50 would be above threshold in nearly all of them."""
    rng = np.random.default_rng(9)
    detector = OnlineDriftDetector.from_state(calibrated)
    verdicts, worst, alarms, events = [], [], 0, 0
    for _ in range(60):
        x = gaussian(rng, 100)
        scores, thresholds = OnlineDriftDetector.from_state(calibrated).scores(x)
        worst.append(bool((scores > thresholds).any()))
        (result,) = detector.update(_batch(x))
        assert isinstance(result, OnlineResult)
        verdicts.append(result.drift)
        alarms, events = alarms + result.alarms, events + result.events
    assert sum(worst) >= 40  # the old verdict: most clean batches
    share = alarms / events
    # Binomial band around the per-event share (60 batches), loose for the runs alarms come in.
    assert sum(verdicts) <= 60 * share + 4 * (60 * share * (1 - share)) ** 0.5 + 3, (sum(verdicts), share)


def _batch(x: NDArray[Any]) -> DriftBatch:
    n = len(x)
    return DriftBatch(predicted=np.zeros(n, dtype=np.int64), confidence=np.full(n, 0.9), embeddings=x, time_s=1.0)


def test_update_counts_the_events_scored_and_those_above_their_threshold(calibrated: OnlineState) -> None:
    """The alert reads the share of events above threshold, which does not grow with the batch as the worst
    event's verdict does."""
    rng = np.random.default_rng(8)
    x = np.concatenate([gaussian(rng, 30), gaussian(rng, 30, shift=1.5)])
    scores, thresholds = OnlineDriftDetector.from_state(calibrated).scores(x)
    above = int(np.count_nonzero(scores > thresholds))
    assert 0 < above < len(x)
    batch = DriftBatch(predicted=np.zeros(60, dtype=np.int64), confidence=np.full(60, 0.9), embeddings=x, time_s=1.0)
    (result,) = OnlineDriftDetector.from_state(calibrated).update(batch)
    assert isinstance(result, OnlineResult)
    assert (result.events, result.alarms, result.ert) == (60, above, ERT)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        pytest.param(np.zeros((100, DIM), dtype=np.float32), "all identical", id="one-row-repeated"),
        pytest.param(np.random.default_rng(0).normal(size=(30, DIM)), "needs at least 41", id="too-small"),
    ],
)
def test_calibrate_rejects_unusable_reference(reference: NDArray[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnlineDriftDetector.calibrate(reference, method="mmd", ert=ERT, window_size=WINDOW, n_bootstraps=BOOTSTRAPS)


def test_scores_reject_wrong_width(calibrated: OnlineState) -> None:
    detector = OnlineDriftDetector.from_state(calibrated)
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        detector.scores(np.zeros((3, DIM + 1), dtype=np.float32))


def test_mmd_calibrates_on_held_out_rows_deterministically() -> None:
    """The kept reference, initial window and held-out rows partition the reference; a torch seed fixes them."""
    import torch

    reference = gaussian(np.random.default_rng(8), 200)
    states = []
    for _ in range(2):
        torch.manual_seed(9)
        states.append(
            OnlineDriftDetector.calibrate(
                reference, method="mmd", ert=20, window_size=5, n_bootstraps=200
            ).export_state()
        )
    first, second = states
    assert first == second
    assert first.held_out_inds is not None
    kept, init, held = (s.decode() for s in (first.ref_inds, first.init_test_inds, first.held_out_inds))
    assert sorted(np.concatenate([kept, init, held]).tolist()) == list(range(200))
    assert len(init) == 5 and len(kept) == round(KEPT_SHARE * (200 - 5))
    torch.manual_seed(10)
    other = OnlineDriftDetector.calibrate(reference, method="mmd", ert=20, window_size=5, n_bootstraps=200)
    assert other.export_state().held_out_inds != first.held_out_inds


def test_mmd_last_threshold_is_the_steady_estimate_when_asked_and_survives_export() -> None:
    """With ``steady_steps`` the threshold that holds after the first window comes from the calibration stream;
    without it, from the 10 x ERT runs like the others."""
    import torch

    from monitors.drift.mmd_thresholds import held_out_mmd_thresholds
    from monitors.drift.online_backends import held_out_split

    reference = gaussian(np.random.default_rng(11), 200)
    torch.manual_seed(12)
    detector = OnlineDriftDetector.calibrate(
        reference, method="mmd", ert=20, window_size=5, n_bootstraps=200, steady_steps=20_000
    )
    torch.manual_seed(12)
    default = OnlineDriftDetector.calibrate(reference, method="mmd", ert=20, window_size=5, n_bootstraps=200)
    torch.manual_seed(12)  # the calibration's draws again: the split, the runs, the stream
    ref_inds, init_test_inds, held_out_inds = held_out_split(200, 5)
    k_xx = detector.backend.k_xx

    def thresholds(n_steady: int) -> list[float]:
        return held_out_mmd_thresholds(
            k_xx,
            ref_inds=ref_inds,
            init_test_inds=init_test_inds,
            held_out_inds=held_out_inds,
            ert=20,
            n_bootstraps=200,
            n_steady=n_steady,
        )

    steady = thresholds(20_000)
    torch.manual_seed(12)
    held_out_split(200, 5)
    sequential = thresholds(0)

    restored = OnlineState.model_validate_json(detector.export_state().model_dump_json())
    assert list(restored.thresholds) == steady
    assert list(default.export_state().thresholds) == sequential
    assert steady[:-1] == sequential[:-1] and steady[-1] != sequential[-1]


def test_mmd_spare_rows_join_the_held_out_rows_and_leave_the_kept_reference() -> None:
    """Spare rows are calibrated on as held-out rows appended after the reference's; what is kept is unchanged."""
    import torch

    from monitors.drift.mmd_thresholds import held_out_mmd_thresholds
    from monitors.drift.online_backends import held_out_split

    rng = np.random.default_rng(13)
    reference, spare = gaussian(rng, 200), gaussian(rng, 150)
    torch.manual_seed(14)
    with_spare = OnlineDriftDetector.calibrate(
        reference, method="mmd", ert=20, window_size=5, n_bootstraps=200, steady_steps=2000, spare=spare
    )
    torch.manual_seed(14)
    without = OnlineDriftDetector.calibrate(
        reference, method="mmd", ert=20, window_size=5, n_bootstraps=200, steady_steps=2000
    )
    torch.manual_seed(14)  # the calibration's draws again: the split, the runs, the stream
    ref_inds, init_test_inds, held_out_inds = held_out_split(200, 5)
    rows = torch.from_numpy(np.concatenate([reference, spare]))
    kernel = with_spare.backend.kernel(rows, rows)
    expected = held_out_mmd_thresholds(
        kernel,
        ref_inds=ref_inds,
        init_test_inds=init_test_inds,
        held_out_inds=torch.cat([held_out_inds, torch.arange(200, 350)]),
        ert=20,
        n_bootstraps=200,
        n_steady=2000,
    )

    ours, theirs = with_spare.export_state(), without.export_state()
    assert list(ours.thresholds) == expected
    assert ours.thresholds != theirs.thresholds
    assert ours.model_copy(update={"thresholds": theirs.thresholds}) == theirs  # reference, split, sigma alike


def test_spare_rows_of_another_width_are_refused() -> None:
    reference = gaussian(np.random.default_rng(15), 200)
    with pytest.raises(ValueError, match="spare rows must have shape"):
        OnlineDriftDetector.calibrate(
            reference, method="mmd", ert=20, window_size=5, n_bootstraps=200, spare=reference[:, :3]
        )
