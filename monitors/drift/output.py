"""Output drift, for models without embeddings: predicted-class mix (chi-squared) and top-1 confidence (KS).

Both run on tumbling windows with scipy only (no alibi-detect). Scores are
``-log10(p)`` against ``-log10(p_value)``.

Both tests are two-sample: the reference is itself a sample, often about a window's size, and a test that took
its class shares as exact (a one-sample chi-squared against them) alarmed on clean windows far above ``p_value``
(0.52 at 0.05 with a 449-row, 10-class reference and windows of 500). The class test is Pearson's chi-squared
test of homogeneity on the ``2 x K`` table of reference and window counts (:func:`class_p_value`).

That rate is ``p_value`` over references drawn from the traffic; the windows tested against one reference share
its sampling error, so their rate given it spreads around ``p_value`` the more the smaller it is. Ten classes,
windows of 500, at 0.05: with 449 rows, one reference in ten alarms on 13% or more of the clean windows (one in a
hundred on about half); with 1,000, 11% and 22%; with 5,000, 7% and 9%.

Both decide ``p <= p_value`` (:func:`~monitors.drift.base.rejects`), as every windowed test does. A window whose
classes pool into one cell (a model that predicts one class, or every class too rare) has no class test: it gets
no ``output_class_chi2`` result, so it is not counted in ``vai_drift_tests_total`` (a p-value of 1 counted as a
test would dilute the alarm share the alerts read); its confidence test still runs.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from common.codec import EncodedArray
from monitors.drift.base import DriftBatch, DriftResult, rejects, surprise
from monitors.drift.states import OutputDriftState
from monitors.drift.tumbling import Tumbler

CLASS_NAME = "output_class_chi2"
CONFIDENCE_NAME = "output_confidence_ks"
MIN_EXPECTED = 5.0
"""Smallest expected count of a cell of the class test's table; rarer classes are pooled into one cell."""


class OutputDrift:
    """Chi-squared test of the predicted classes and KS test of the confidences per window (``DriftDetector``)."""

    def __init__(
        self, *, class_counts: NDArray[np.int64], confidence: NDArray[np.float64], window_events: int, p_value: float
    ) -> None:
        if class_counts.ndim != 1 or class_counts.sum() < 1 or confidence.ndim != 1 or confidence.size < 2:
            raise ValueError("output drift needs reference class counts and at least two reference confidences")
        self._class_counts = class_counts.astype(np.int64)
        self._confidence = confidence.astype(np.float64)
        self._p_value = p_value
        self._tumbler = Tumbler(size=window_events)

    @classmethod
    def fit(
        cls, *, predicted: NDArray[np.int64], confidence: NDArray[np.float64], window_events: int, p_value: float
    ) -> OutputDrift:
        """From reference predictions and their confidences."""
        if predicted.size == 0 or predicted.min() < 0:
            raise ValueError("reference predictions must be non-empty class indices >= 0")
        return cls(
            class_counts=np.bincount(predicted).astype(np.int64),
            confidence=confidence,
            window_events=window_events,
            p_value=p_value,
        )

    @classmethod
    def from_state(cls, state: OutputDriftState) -> OutputDrift:
        return cls(
            class_counts=state.class_counts.decode().astype(np.int64),
            confidence=state.confidence.decode().astype(np.float64),
            window_events=state.window_events,
            p_value=state.p_value,
        )

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        results: list[DriftResult] = []
        for window in self._tumbler.add(batch):
            results.extend(self.test(predicted=window.predicted, confidence=window.confidence))
        return results

    def test(self, *, predicted: NDArray[np.int64], confidence: NDArray[np.float64]) -> list[DriftResult]:
        """Both tests of one window against the reference; the class test only when it has two cells or more
        (:func:`class_p_value`)."""
        if predicted.size == 0 or predicted.min() < 0:
            raise ValueError("predictions must be non-empty class indices >= 0")
        p_class = class_p_value(self._class_counts, np.bincount(predicted))
        p_confidence = float(stats.ks_2samp(self._confidence, confidence, method="asymp").pvalue)
        results = [] if p_class is None else [self._result(CLASS_NAME, p_class)]
        return [*results, self._result(CONFIDENCE_NAME, p_confidence)]

    def export_state(self) -> OutputDriftState:
        return OutputDriftState(
            class_counts=EncodedArray.of(self._class_counts),
            confidence=EncodedArray.of(self._confidence),
            window_events=self._tumbler.size,
            p_value=self._p_value,
        )

    def _result(self, name: str, p_value: float) -> DriftResult:
        return DriftResult(
            name=name,
            score=surprise(p_value),
            threshold=surprise(self._p_value),
            drift=rejects(p_value, self._p_value),
            p_value=p_value,
        )


def class_p_value(reference: NDArray[np.int64], window: NDArray[np.int64]) -> float | None:
    """p-value of the chi-squared test that two samples of class indices (counts per class) share their class mix.

    The table is ``2 x K``: the reference's counts over the window's, classes absent from both dropped. The
    chi-squared approximation needs every expected count (row total x column total / grand total) at
    :data:`MIN_EXPECTED` or more: rarer classes are pooled into one cell, from the rarest up, until that cell
    reaches it too (everything pooled: one cell, nothing to test: ``None``, not a p-value of 1 that would count as a
    test). The pooling rests on the column totals
    alone, margins the test conditions on, so it keeps the test's size; left unpooled, sparse cells made the test
    conservative (alarm rate ~0.015 at 0.05 with ten classes of 0.2% each beside two large ones; 0.05 pooled). A
    class new in the window is tested as any other (a column whose reference count is 0), pooled when rare. No
    Yates correction on a ``2 x 2`` table: with every expected count at 5 or more it only makes the test
    conservative. An exact or permutation test would cost each window far more for a size the pooling holds
    already (near ``p_value`` on clean windows, ``tests/monitors/drift/test_window_detectors.py``)."""
    k = max(reference.size, window.size)
    table = np.zeros((2, k), dtype=np.int64)
    table[0, : reference.size] = reference
    table[1, : window.size] = window
    table = _pooled(table[:, table.sum(axis=0) > 0])
    if table.shape[1] < 2:
        return None
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _pooled(table: NDArray[np.int64]) -> NDArray[np.int64]:
    """``table`` with its sparse columns pooled into one, last (see :func:`class_p_value`)."""
    totals = table.sum(axis=0)
    least = MIN_EXPECTED * table.sum() / table.sum(axis=1).min()  # column total whose smaller expected count is 5
    order = np.argsort(totals, kind="stable")
    taken = 0
    while taken < len(order) and (totals[order[taken]] < least or 0 < totals[order[:taken]].sum() < least):
        taken += 1
    if taken == 0:
        return table
    pooled = table[:, order[:taken]].sum(axis=1, keepdims=True)
    return np.concatenate([table[:, np.sort(order[taken:])], pooled], axis=1)
