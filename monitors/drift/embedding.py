"""Embedding distance: cosine distance of each embedding to the reference centroid.

The reference fixes a centroid (mean of unit-normalised reference embeddings)
and the 99th percentile of the reference's own distances. On each tumbling
window the share of embeddings beyond that percentile is tested against the
1% expected without drift (one-sided binomial test): the score is the share,
the threshold the largest share that the test still accepts at ``p_value``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from prometheus_client import Histogram
from scipy import stats

from common.codec import EncodedArray
from monitors.drift.base import DriftBatch, DriftResult
from monitors.drift.states import EmbeddingDistanceState
from monitors.drift.tumbling import Tumbler

NAME = "embedding_distance"
TAIL_QUANTILE = 0.99
"""Reference quantile whose exceedances are counted."""
_EPS = 1e-12


def cosine_distance(x: NDArray[np.float32], centroid: NDArray[np.float64]) -> NDArray[np.float64]:
    """``1 - cos(x_i, centroid)`` per row, in ``[0, 2]``."""
    rows = x.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(centroid)
    return np.asarray(1.0 - rows @ centroid / np.maximum(norms, _EPS))


class EmbeddingDistance:
    """Share of embeddings far from the reference centroid per tumbling window (``DriftDetector``)."""

    def __init__(
        self,
        *,
        centroid: NDArray[np.float64],
        tail_distance: float,
        window_events: int,
        p_value: float,
        histogram: Histogram | None = None,
    ) -> None:
        if centroid.ndim != 1 or not np.linalg.norm(centroid) > _EPS:
            raise ValueError("centroid must be a non-zero vector: the reference embeddings cancel out")
        self._centroid = centroid.astype(np.float64)
        self._tail = tail_distance
        self._p_value = p_value
        self._tumbler = Tumbler(size=window_events)
        self._histogram = histogram

    @classmethod
    def fit(
        cls, reference: NDArray[np.float32], *, window_events: int, p_value: float, histogram: Histogram | None = None
    ) -> EmbeddingDistance:
        """From raw ``(n, d)`` reference embeddings."""
        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError(f"reference must be a (n, d) matrix with n >= 2, got shape {reference.shape}")
        rows = reference.astype(np.float64)
        centroid = np.mean(rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _EPS), axis=0)
        tail = float(np.quantile(cosine_distance(reference, centroid), TAIL_QUANTILE))
        return cls(
            centroid=centroid, tail_distance=tail, window_events=window_events, p_value=p_value, histogram=histogram
        )

    @classmethod
    def from_state(cls, state: EmbeddingDistanceState, *, histogram: Histogram | None = None) -> EmbeddingDistance:
        return cls(
            centroid=state.centroid.decode().astype(np.float64),
            tail_distance=state.tail_distance,
            window_events=state.window_events,
            p_value=state.p_value,
            histogram=histogram,
        )

    @property
    def width(self) -> int:
        """Width of the embeddings it compares."""
        return int(self._centroid.size)

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        if batch.embeddings is None:
            return []
        if batch.embeddings.shape[1] != self._centroid.size:
            raise ValueError(f"expected embeddings of width {self._centroid.size}, got {batch.embeddings.shape[1]}")
        if self._histogram is not None:
            for distance in cosine_distance(batch.embeddings, self._centroid):
                self._histogram.observe(float(distance))
        results = []
        for window in self._tumbler.add(batch):
            if window.embeddings is not None:
                results.append(self.test(window.embeddings))
        return results

    def test(self, x: NDArray[np.float32]) -> DriftResult:
        """Share of one window's embeddings beyond the reference's 99th percentile distance."""
        beyond = int(np.sum(cosine_distance(x, self._centroid) > self._tail))
        n = len(x)
        p_value = float(stats.binom.sf(beyond - 1, n, 1.0 - TAIL_QUANTILE))
        threshold = float(stats.binom.isf(self._p_value, n, 1.0 - TAIL_QUANTILE)) / n
        share = beyond / n
        return DriftResult(name=NAME, score=share, threshold=threshold, drift=share > threshold, p_value=p_value)

    def export_state(self) -> EmbeddingDistanceState:
        return EmbeddingDistanceState(
            centroid=EncodedArray.of(self._centroid),
            tail_distance=self._tail,
            window_events=self._tumbler.size,
            p_value=self._p_value,
        )
