"""Output drift, for models without embeddings: predicted-class mix (chi-squared) and top-1 confidence (KS).

Both run on tumbling windows with scipy only (no alibi-detect). Scores are
``-log10(p)`` against ``-log10(p_value)``. Reference class counts get half a
pseudo-count each so a class unseen in the reference does not make the
expected count zero; the chi-squared approximation is rough when expected
counts fall below about five, so keep ``window_events`` well above ``5 x classes``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from common.codec import EncodedArray
from monitors.drift.base import DriftBatch, DriftResult, surprise
from monitors.drift.states import OutputDriftState
from monitors.drift.tumbling import Tumbler

CLASS_NAME = "output_class_chi2"
CONFIDENCE_NAME = "output_confidence_ks"
PSEUDO_COUNT = 0.5


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
        """Both tests of one window against the reference."""
        if predicted.size == 0 or predicted.min() < 0:
            raise ValueError("predictions must be non-empty class indices >= 0")
        k = max(self._class_counts.size, int(predicted.max()) + 1)
        observed = np.bincount(predicted, minlength=k).astype(np.float64)
        reference = np.bincount(np.arange(self._class_counts.size), weights=self._class_counts, minlength=k)
        expected_share = (reference + PSEUDO_COUNT) / (reference + PSEUDO_COUNT).sum()
        p_class = float(stats.chisquare(observed, expected_share * observed.sum()).pvalue)
        p_confidence = float(stats.ks_2samp(self._confidence, confidence, method="asymp").pvalue)
        return [self._result(CLASS_NAME, p_class), self._result(CONFIDENCE_NAME, p_confidence)]

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
            drift=p_value < self._p_value,
            p_value=p_value,
        )
