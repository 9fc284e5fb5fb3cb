"""The online detector on traffic that repeats inputs (a blank request, a cached query) as its reference did.

The MMD detector takes the reference rows with their copies, so its calibration's null windows repeat an input as
often as clean traffic does; with one row per distinct embedding it alarmed on most clean events where 30% of them
were one input. The bandwidth is set over distinct rows, so a reference mostly of one input calibrates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from monitors.drift.base import DriftBatch
from monitors.drift.config import DriftConfig
from monitors.drift.detectors import build
from monitors.drift.metrics import DriftMetrics
from monitors.drift.online import OnlineDriftDetector, median_sigma
from monitors.drift.reduction import Pca
from monitors.drift.reference import Reference
from monitors.drift.states import OnlineState

DIM = 16
ERT, WINDOW = 50, 10
SHARE = 0.3
CONFIG = DriftConfig(
    ert=ERT,
    window_size=WINDOW,
    n_bootstraps=10 * ERT,
    steady_steps_per_ert=0,  # as resolved below 5,000 rows
    reference_events=1200,
    window_tests=False,
    seed=3,
)
WITH_AND_WITHOUT_PCA = pytest.mark.parametrize(
    "pca_components", [pytest.param(None, id="no-pca"), pytest.param(8, id="pca-on-16-d")]
)


def embeddings(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    x = 0.5 * rng.normal(size=(n, DIM))
    x[:, 0] += 3.0
    return x.astype(np.float32)


def traffic(rng: np.random.Generator, n: int, repeated: NDArray[np.float32]) -> NDArray[np.float32]:
    """Stationary embeddings, ``SHARE`` of them copies of one input."""
    x = embeddings(rng, n)
    x[rng.random(n) < SHARE] = repeated
    return x


def reference_of(x: NDArray[np.float32]) -> Reference:
    n = len(x)
    return Reference.from_batch(DriftBatch(np.zeros(n, np.int64), np.full(n, 0.9), x, time_s=1.0))


def built(reference: Reference, pca_components: int | None) -> tuple[OnlineDriftDetector, Pca | None]:
    """The online detector calibrated on ``reference`` as a monitor builds it, and the PCA before it."""
    config = CONFIG.model_copy(update={"pca_components": pca_components})
    detectors = build("m", reference, config, DriftMetrics(registry=CollectorRegistry()), torch.Generator())
    (online,) = [d for d in detectors.reduced if isinstance(d, OnlineDriftDetector)]
    return online, detectors.pca


def copies_in(state: OnlineState, repeated: NDArray[np.float32]) -> int:
    """Rows of the detector's kept reference that are the repeated input (after PCA: equal up to rounding)."""
    kept = state.reference.decode()[state.ref_inds.decode()]
    return int(np.sum(np.abs(kept - repeated).max(1) < 1e-4))


@WITH_AND_WITHOUT_PCA
def test_the_mmd_detector_keeps_a_repeated_input_as_often_as_the_reference_holds_it(
    pca_components: int | None,
) -> None:
    """30% of the reference one input: about 30% of the kept rows are it. PCA takes its share of the copies too,
    not only of the distinct rows (which left 46%); one row per distinct embedding kept it at most once."""
    rng = np.random.default_rng(21)
    repeated = embeddings(rng, 1)[0]
    x = traffic(rng, 1200, repeated)
    share = float(np.mean((x == repeated).all(1)))
    online, pca = built(reference_of(x), pca_components)
    state = online.export_state()
    seen = repeated if pca is None else pca.transform(repeated[None, :])[0]
    kept = int(state.ref_inds.shape[0])
    assert abs(copies_in(state, seen) / kept - share) < 0.06, (copies_in(state, seen), kept, share)


@pytest.mark.slow
@WITH_AND_WITHOUT_PCA
def test_clean_traffic_repeating_an_input_as_the_reference_did_holds_the_ert(pca_components: int | None) -> None:
    """Reference and clean streams with 30% of their events one input: the mean run to a false alarm (events
    observed / alarms over 40 streams capped at 4 x ERT, seeded) stays within the loose band about the ERT that
    test_online holds on traffic without repeats (here 52 and 56 events). With one row per distinct embedding it
    was 8 and 9 events."""
    rng = np.random.default_rng(22)
    repeated = embeddings(rng, 1)[0]
    detector, pca = built(reference_of(traffic(rng, 1200, repeated)), pca_components)
    cap, observed, alarms = 4 * ERT, 0, 0
    for _ in range(40):
        detector.reset()
        x = traffic(rng, cap, repeated)
        scores, thresholds = detector.scores(x if pca is None else pca.transform(x))
        hits = np.flatnonzero(scores > thresholds)
        observed += int(hits[0]) + 1 if hits.size else cap
        alarms += int(hits.size > 0)
    mean_run = observed / max(alarms, 1)
    assert ERT / 2.5 < mean_run < 2.5 * ERT, (mean_run, alarms)


def test_a_reference_mostly_of_one_input_calibrates_on_the_bandwidth_of_its_distinct_rows() -> None:
    """80% copies of one row: most pairs are identical, so the median over every pair is 0 and no bandwidth could
    be set; over distinct rows it is the bandwidth of the varied rows, and the restored detector scores alike."""
    rng = np.random.default_rng(23)
    varied = embeddings(rng, 60)
    x = np.concatenate([varied, np.repeat(varied[:1], 240, axis=0)])[rng.permutation(300)]
    detector = OnlineDriftDetector.calibrate(
        x, method="mmd", ert=20, window_size=5, n_bootstraps=200, generator=torch.Generator().manual_seed(1)
    )
    state = detector.export_state()
    assert state.sigma == median_sigma(varied)
    assert state.reference.decode().shape == (300, DIM), "copies kept"
    restored = OnlineDriftDetector.from_state(OnlineState.model_validate_json(state.model_dump_json()))
    stream = traffic(rng, 60, varied[0])
    np.testing.assert_array_equal(detector.scores(stream)[0], restored.scores(stream)[0])


def test_the_bandwidth_of_rows_without_copies_is_the_median_over_every_pair_as_before() -> None:
    """Distinct rows keep the bandwidth they had (and stored states the one they were calibrated with): the median
    over every pair, computed as before copies were left out, bit for bit."""
    x = embeddings(np.random.default_rng(24), 200)
    data = x.astype(np.float64)
    norms = np.sum(data * data, axis=1)
    squared = norms[:, None] + norms[None, :] - 2.0 * data @ data.T
    before = float(np.float32(np.sqrt(max(float(np.median(squared[np.triu_indices(200, k=1)])), 0.0) / 2.0)))
    assert median_sigma(x) == before
    assert median_sigma(np.concatenate([x, x[:50]])) == before, "copies change nothing"


def test_lsdd_refuses_copies_and_gets_one_row_per_distinct_embedding() -> None:
    """LSDD takes kernel centres from its reference: copies among them would be jittered by an unseeded draw the
    state does not keep, so it is given one row per distinct embedding."""
    rng = np.random.default_rng(25)
    x = traffic(rng, 600, embeddings(rng, 1)[0])
    with pytest.raises(ValueError, match="LSDD takes its kernel centres from the reference and needs distinct rows"):
        OnlineDriftDetector.calibrate(x, method="lsdd", ert=20, window_size=5, n_bootstraps=200)
    config = CONFIG.model_copy(update={"online_detector": "lsdd", "pca_components": None, "n_bootstraps": None})
    detectors = build("m", reference_of(x), config, DriftMetrics(registry=CollectorRegistry()), torch.Generator())
    (online,) = [d for d in detectors.reduced if isinstance(d, OnlineDriftDetector)]
    rows = online.export_state().reference.decode()
    assert len(np.unique(rows, axis=0)) == len(rows) == len(np.unique(x, axis=0))
