"""Calibration of a classifier from labelled predictions: ECE, MCE, Brier score, reliability bins.

Top-label calibration: each event contributes its top-1 probability (the
*confidence*) and whether the predicted class equals the true label. Events go
into ``n_bins`` equal-width bins ``(k/n, (k+1)/n]``; bin 0 also holds confidence 0.

* ECE = sum over bins of ``count/N * |accuracy - mean confidence|``.
* MCE = the largest ``|accuracy - mean confidence|`` over non-empty bins.
* Brier = mean over events of ``sum_k (p_k - y_k)**2`` (multi-class, in ``[0, 2]``).
  It needs the full probability vector, so it is computed over the events that
  carry one; ``brier_count`` says how many. Top-1 probability alone does not fix
  the squared error of the other classes, so nothing is guessed for those events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitors.records import LabelledPrediction

DEFAULT_BINS = 15
"""Equal-width confidence bins of the reliability diagram and the ECE."""


@dataclass(frozen=True, slots=True)
class ReliabilityBin:
    """One confidence bin ``(lower, upper]`` of the reliability diagram."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    """Mean top-1 probability of the events in the bin; ``None`` when empty."""
    accuracy: float | None
    """Share of the bin's events whose prediction was right; ``None`` when empty."""


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """Calibration figures of a set of labelled predictions."""

    count: int
    ece: float
    mce: float
    brier_score: float | None
    """Multi-class Brier score over the events with a probability vector; ``None`` if none had one."""
    brier_count: int
    """Events the Brier score was computed over."""
    bins: tuple[ReliabilityBin, ...]


def bin_index(confidence: NDArray[np.float64], n_bins: int) -> NDArray[np.intp]:
    """Bin of each confidence: ``(k/n, (k+1)/n]`` is bin ``k``, and 0 falls in bin 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges, confidence, side="left") - 1
    return np.clip(index, 0, n_bins - 1)


def compute_calibration(
    *,
    confidence: ArrayLike,
    predicted: ArrayLike,
    labels: ArrayLike,
    probabilities: ArrayLike | None = None,
    has_probabilities: ArrayLike | None = None,
    n_bins: int = DEFAULT_BINS,
) -> CalibrationReport:
    """Calibration of ``N`` predictions.

    ``confidence``, ``predicted`` and ``labels`` have shape ``(N,)``. ``probabilities``
    is an ``(N, K)`` matrix of class probabilities; ``has_probabilities`` (``(N,)``
    booleans) marks its rows that are real when only some events carried a vector
    (the other rows are ignored). Raises ``ValueError`` on empty or inconsistent input.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.int64)
    true = np.asarray(labels, dtype=np.int64)
    _check_inputs(conf, pred, true, n_bins)
    counts, mean_conf, accuracy = _bin_stats(conf, (pred == true).astype(np.float64), n_bins)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - mean_conf[filled])
    brier, brier_count = _brier(probabilities, has_probabilities, true)
    return CalibrationReport(
        count=int(conf.size),
        ece=float(np.sum(counts[filled] * gaps) / conf.size),
        mce=float(gaps.max()),
        brier_score=brier,
        brier_count=brier_count,
        bins=_bins(counts, mean_conf, accuracy),
    )


def calibration_of(records: Sequence[LabelledPrediction], *, n_bins: int = DEFAULT_BINS) -> CalibrationReport:
    """Calibration of labelled predictions.

    The Brier score uses the records whose probability vector has the length of the
    first one seen and covers the label; ``brier_count`` says how many that was.
    """
    width = next((r.probabilities.size for r in records if r.probabilities is not None), 0)
    probabilities = np.zeros((len(records), width))
    usable = np.zeros(len(records), dtype=bool)
    for row, record in enumerate(records):
        vector = record.probabilities
        if vector is not None and vector.size == width and 0 <= record.label < width:
            probabilities[row], usable[row] = vector, True
    return compute_calibration(
        confidence=[r.confidence for r in records],
        predicted=[r.predicted for r in records],
        labels=[r.label for r in records],
        probabilities=probabilities if width else None,
        has_probabilities=usable,
        n_bins=n_bins,
    )


def _check_inputs(conf: NDArray[np.float64], pred: NDArray[np.int64], true: NDArray[np.int64], n_bins: int) -> None:
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if conf.ndim != 1 or conf.size == 0:
        raise ValueError(f"confidence must be a non-empty 1-D array, got shape {conf.shape}")
    if pred.shape != conf.shape or true.shape != conf.shape:
        raise ValueError(
            f"confidence, predicted and labels must have the same shape, got {conf.shape}, {pred.shape}, {true.shape}"
        )
    if not np.all((conf >= 0.0) & (conf <= 1.0)):
        raise ValueError("confidence must lie in [0, 1]: pass probabilities, not logits")


def _bin_stats(
    conf: NDArray[np.float64], correct: NDArray[np.float64], n_bins: int
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Count, mean confidence and accuracy per bin (NaN where a bin is empty)."""
    index = bin_index(conf, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / counts
    return counts, mean_conf, accuracy


def _bins(
    counts: NDArray[np.int64], mean_conf: NDArray[np.float64], accuracy: NDArray[np.float64]
) -> tuple[ReliabilityBin, ...]:
    edges = np.linspace(0.0, 1.0, counts.size + 1)
    return tuple(
        ReliabilityBin(
            lower=float(edges[k]),
            upper=float(edges[k + 1]),
            count=int(counts[k]),
            mean_confidence=float(mean_conf[k]) if counts[k] else None,
            accuracy=float(accuracy[k]) if counts[k] else None,
        )
        for k in range(counts.size)
    )


def _brier(
    probabilities: ArrayLike | None, has_probabilities: ArrayLike | None, true: NDArray[np.int64]
) -> tuple[float | None, int]:
    if probabilities is None:
        return None, 0
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != true.size:
        raise ValueError(f"probabilities must have shape (N, K) with N={true.size}, got {probs.shape}")
    rows = np.ones(true.size, dtype=bool) if has_probabilities is None else np.asarray(has_probabilities, dtype=bool)
    if rows.shape != true.shape:
        raise ValueError(f"has_probabilities must have shape {true.shape}, got {rows.shape}")
    if not rows.any():
        return None, 0
    probs, true = probs[rows], true[rows]
    if true.min() < 0 or true.max() >= probs.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1]}) to match the probability vectors")
    onehot = np.zeros_like(probs)
    onehot[np.arange(true.size), true] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1))), int(true.size)
