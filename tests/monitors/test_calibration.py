from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from monitors.calibration import (
    DEFAULT_BINS,
    bin_index,
    calibration_of,
    compute_calibration,
)
from monitors.records import LabelledPrediction

# Worked by hand with bins (k/15, (k+1)/15]:
#   0.95 -> bin 14: 2 events, 1 right: accuracy 0.5, confidence 0.95, gap 0.45
#   0.62 -> bin 9:  2 events, 2 right: accuracy 1.0, confidence 0.62, gap 0.38
#   0.30 -> bin 4:  1 event,  wrong:   accuracy 0.0, confidence 0.30, gap 0.30
#   0.10 -> bin 1:  1 event,  wrong:   accuracy 0.0, confidence 0.10, gap 0.10
#   ECE = (2*0.45 + 2*0.38 + 0.30 + 0.10) / 6 = 2.06 / 6;  MCE = 0.45
HAND_CONFIDENCE = [0.95, 0.95, 0.62, 0.62, 0.30, 0.10]
HAND_PREDICTED = [0, 0, 1, 1, 2, 3]
HAND_LABELS = [0, 1, 1, 1, 0, 0]


def reference_calibration(conf: NDArray[Any], correct: NDArray[Any], n_bins: int) -> tuple[float, float]:
    """Straightforward ECE and MCE: loop over bins, membership by the (lo, hi] definition."""
    ece, mce = 0.0, 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (k == 0 and c == 0.0)]
        if not members:
            continue
        gap = abs(sum(correct[i] for i in members) / len(members) - sum(conf[i] for i in members) / len(members))
        ece += len(members) / len(conf) * gap
        mce = max(mce, gap)
    return ece, mce


def reference_brier(probs: NDArray[Any], labels: NDArray[Any]) -> float:
    total = 0.0
    for row, label in zip(probs, labels, strict=True):
        total += sum((p - (1.0 if k == label else 0.0)) ** 2 for k, p in enumerate(row))
    return total / len(labels)


def test_hand_worked_table() -> None:
    report = compute_calibration(confidence=HAND_CONFIDENCE, predicted=HAND_PREDICTED, labels=HAND_LABELS)

    assert report.count == 6
    assert report.ece == pytest.approx(2.06 / 6)
    assert report.mce == pytest.approx(0.45)
    assert report.brier_score is None and report.brier_count == 0
    filled = {k: (b.count, b.accuracy, b.mean_confidence) for k, b in enumerate(report.bins) if b.count}
    expected = {14: (2, 0.5, 0.95), 9: (2, 1.0, 0.62), 4: (1, 0.0, 0.30), 1: (1, 0.0, 0.10)}
    assert filled.keys() == expected.keys()
    for k, (count, accuracy, confidence) in expected.items():
        assert filled[k][:2] == (count, accuracy)
        assert filled[k][2] == pytest.approx(confidence)


def test_brier_by_hand() -> None:
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.1^2 + 0.6^2 + 0.7^2) = 0.86: mean 0.5
    report = compute_calibration(
        confidence=[0.7, 0.6], predicted=[0, 1], labels=[0, 2], probabilities=[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]
    )
    assert report.brier_score == pytest.approx(0.5)
    assert report.brier_count == 2


@pytest.mark.parametrize(
    ("probs", "label", "expected"),
    [
        pytest.param([1.0, 0.0, 0.0], 0, 0.0, id="certain-and-right"),
        pytest.param([1.0, 0.0, 0.0], 1, 2.0, id="certain-and-wrong"),
        pytest.param([0.5, 0.5], 0, 0.5, id="coin-flip"),
    ],
)
def test_brier_range(probs: list[float], label: int, expected: float) -> None:
    report = compute_calibration(
        confidence=[max(probs)], predicted=[int(np.argmax(probs))], labels=[label], probabilities=[probs]
    )
    assert report.brier_score == pytest.approx(expected)


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed-{s}") for s in range(3)])
def test_matches_straightforward_implementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(5) * 0.7, size=400)
    predicted = probs.argmax(axis=1)
    labels = np.where(rng.random(400) < 0.6, predicted, rng.integers(0, 5, 400))
    confidence = probs.max(axis=1)

    report = compute_calibration(confidence=confidence, predicted=predicted, labels=labels, probabilities=probs)

    ece, mce = reference_calibration(confidence, (predicted == labels).astype(float), DEFAULT_BINS)
    assert report.ece == pytest.approx(ece, abs=1e-12)
    assert report.mce == pytest.approx(mce, abs=1e-12)
    assert report.brier_score == pytest.approx(reference_brier(probs, labels), abs=1e-12)
    assert sum(b.count for b in report.bins) == 400


@pytest.mark.parametrize(
    ("confidence", "expected_bin"),
    [
        pytest.param(0.0, 0, id="zero-in-first-bin"),
        pytest.param(1.0, 14, id="one-in-last-bin"),
        pytest.param(float(np.linspace(0, 1, 16)[3]), 2, id="edge-belongs-below"),
        pytest.param(math.nextafter(float(np.linspace(0, 1, 16)[3]), 1.0), 3, id="just-above-edge"),
    ],
)
def test_bin_edges(confidence: float, expected_bin: int) -> None:
    assert int(bin_index(np.array([confidence]), 15)[0]) == expected_bin


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"confidence": [], "predicted": [], "labels": []}, "non-empty", id="empty"),
        pytest.param({"confidence": [0.5], "predicted": [0, 1], "labels": [0]}, "same shape", id="shapes"),
        pytest.param({"confidence": [3.2], "predicted": [0], "labels": [0]}, "not logits", id="logits"),
        pytest.param(
            {"confidence": [0.5], "predicted": [0], "labels": [4], "probabilities": [[0.5, 0.5]]},
            "class indices",
            id="label-outside-vector",
        ),
    ],
)
def test_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_calibration(**kwargs)  # type: ignore[arg-type]  # bad input on purpose


def _record(confidence: float, predicted: int, label: int, probabilities: list[float] | None) -> LabelledPrediction:
    vector = None if probabilities is None else np.array(probabilities)
    return LabelledPrediction(
        model="m",
        version="1",
        predicted=predicted,
        confidence=confidence,
        label=label,
        time_s=0.0,
        probabilities=vector,
    )


def test_records_brier_uses_only_events_with_vectors() -> None:
    records = [
        _record(0.7, 0, 0, [0.7, 0.2, 0.1]),
        _record(0.9, 1, 1, None),
        _record(0.6, 1, 2, [0.1, 0.6, 0.3]),
    ]
    report = calibration_of(records)
    assert report.count == 3
    assert report.brier_count == 2
    assert report.brier_score == pytest.approx(0.5)
