"""Prediction quality of labelled predictions: accuracy with a Wilson interval, per-class precision and recall."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitors.records import LabelledPrediction

Z_95 = 1.959963984540054
"""Two-sided 95% standard normal quantile."""


@dataclass(frozen=True, slots=True)
class Proportion:
    """A proportion ``successes / count`` with its Wilson score interval."""

    successes: int
    count: int
    value: float
    lower: float
    upper: float


@dataclass(frozen=True, slots=True)
class ClassQuality:
    """Precision and recall of one class, with the counts behind them."""

    class_index: int
    true_positives: int
    predicted_count: int
    """Events predicted as this class (precision's denominator)."""
    support: int
    """Events whose label is this class (recall's denominator)."""
    precision: float | None
    """``None`` when the class was never predicted."""
    recall: float | None
    """``None`` when the class never occurred as a label."""


@dataclass(frozen=True, slots=True)
class QualityReport:
    accuracy: Proportion
    classes: tuple[ClassQuality, ...]
    """One entry per class seen as a prediction or a label, by class index."""


def wilson_interval(successes: int, count: int, *, z: float = Z_95) -> Proportion:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if count < 1:
        raise ValueError(f"a proportion needs at least one trial, got count={count}")
    if not 0 <= successes <= count:
        raise ValueError(f"successes must lie in [0, count={count}], got {successes}")
    p = successes / count
    z2 = z * z
    denominator = 1.0 + z2 / count
    centre = (p + z2 / (2 * count)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / count + z2 / (4 * count * count)) / denominator
    return Proportion(
        successes=successes, count=count, value=p, lower=max(0.0, centre - half), upper=min(1.0, centre + half)
    )


def compute_quality(*, predicted: ArrayLike, labels: ArrayLike) -> QualityReport:
    """Accuracy and per-class precision/recall of ``N`` predictions (both arrays of class indices)."""
    pred = np.asarray(predicted, dtype=np.int64)
    true = np.asarray(labels, dtype=np.int64)
    if pred.ndim != 1 or pred.size == 0 or pred.shape != true.shape:
        raise ValueError(
            f"predicted and labels must be non-empty 1-D arrays of one shape, got {pred.shape}, {true.shape}"
        )
    hits = pred == true
    classes = tuple(_class_quality(int(c), pred, true, hits) for c in np.union1d(pred, true))
    return QualityReport(accuracy=wilson_interval(int(hits.sum()), int(pred.size)), classes=classes)


def quality_of(records: Sequence[LabelledPrediction]) -> QualityReport:
    """:func:`compute_quality` of labelled predictions."""
    return compute_quality(predicted=[r.predicted for r in records], labels=[r.label for r in records])


def _class_quality(c: int, pred: NDArray[np.int64], true: NDArray[np.int64], hits: NDArray[np.bool_]) -> ClassQuality:
    true_positives = int(np.sum(hits & (pred == c)))
    predicted_count = int(np.sum(pred == c))
    support = int(np.sum(true == c))
    return ClassQuality(
        class_index=c,
        true_positives=true_positives,
        predicted_count=predicted_count,
        support=support,
        precision=true_positives / predicted_count if predicted_count else None,
        recall=true_positives / support if support else None,
    )
