"""Embedding distance: cosine distance of each embedding to the reference centroid.

The reference fixes a centroid (mean of the unit-normalised reference embeddings) and a tail distance, the
``r``-th largest of the reference's own distances (``r = round(n x 1%)``, at least 1: about its 99th percentile).
On each tumbling window the count of embeddings beyond it is tested against the count the reference predicts:
the score is the share beyond, the threshold the largest share the test still accepts at ``p_value``, and the
verdict is ``p <= p_value``.

The test is two-sample and exact (:func:`exceedance_tail`): the tail distance is itself estimated from the
``n`` reference rows, and a test that took its exceedance probability as exactly 1% (a one-sample binomial)
alarmed on clean windows far above ``p_value``: 0.167 at 0.05 with 449 reference rows and windows of 500, 0.082
with 1,000, 0.048 with 5,000. When reference and window are drawn from one distribution, the ranks of their
``n + m`` distances are exchangeable, so the count of window distances beyond the reference's ``r``-th largest has
a distribution that depends on ``n``, ``m`` and ``r`` alone (negative hypergeometric): its p-value has size at
most ``p_value`` whatever the reference's size and the embeddings' distribution (ties, e.g. repeated embeddings,
only make it conservative). ``benchmarks/drift_false_alarms.py`` measures both.

An all-zero embedding has no direction: its distance is ``inf`` (:func:`cosine_distance`), so in a window it
always counts as beyond the tail (a window of blank embeddings alarms instead of reading as "no drift"), and in
the reference it counts as one of its farthest rows. The distance histogram leaves such rows out (an infinite
observation would make its sum, and every mean read from it, infinite).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from prometheus_client import Histogram
from scipy import stats

from common.codec import EncodedArray
from monitors.drift.base import DriftBatch, DriftResult, rejects
from monitors.drift.states import EmbeddingDistanceState
from monitors.drift.tumbling import Tumbler

NAME = "embedding_distance"
TAIL_QUANTILE = 0.99
"""Reference quantile whose exceedances are counted (the tail distance is the reference's ``r``-th largest
distance, ``r = round(n x (1 - TAIL_QUANTILE))``, at least 1)."""
_EPS = 1e-12


def cosine_distance(x: NDArray[np.float32], centroid: NDArray[np.float64]) -> NDArray[np.float64]:
    """``1 - cos(x_i, centroid)`` per row, in ``[0, 2]``; ``inf`` for an all-zero row, which has no direction
    (an epsilon floor on its norm read as distance 1, "no drift", for a window of blank embeddings)."""
    rows = x.astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = 1.0 - rows @ centroid / (norms * np.linalg.norm(centroid))
    return np.asarray(np.where(norms > 0.0, distance, np.inf))


def tail_rank(reference_rows: int) -> int:
    """``r``: the tail distance is the reference's ``r``-th largest."""
    return max(1, round(reference_rows * (1.0 - TAIL_QUANTILE)))


def exceedance_tail(window_rows: int, *, reference_rows: int, rank: int) -> NDArray[np.float64]:
    """``P(X >= k)`` for ``k = 0 .. window_rows``, ``X`` the count of ``window_rows`` exchangeable values above the
    ``rank``-th largest of ``reference_rows`` more: the exact, distribution-free p-value of each exceedance count.

    Rank the ``n + m`` values from the largest: the window values above the reference's ``r``-th largest are the
    window values drawn before the ``r``-th reference value, drawing without replacement: negative hypergeometric
    (scipy's ``nhypergeom(M=n + m, n=m, r=r)``), summed from the top so small tails keep their precision. Ties
    counted as not beyond only lower the count: conservative."""
    pmf = stats.nhypergeom(reference_rows + window_rows, window_rows, rank).pmf(np.arange(window_rows + 1))
    tail = np.cumsum(np.asarray(pmf, dtype=np.float64)[::-1])[::-1]
    return np.asarray(np.clip(tail / tail[0], 0.0, 1.0))


class EmbeddingDistance:
    """Share of embeddings far from the reference centroid per tumbling window (``DriftDetector``)."""

    def __init__(
        self,
        *,
        centroid: NDArray[np.float64],
        tail_distance: float,
        window_events: int,
        p_value: float,
        reference_rows: int | None = None,
        histogram: Histogram | None = None,
    ) -> None:
        """``reference_rows``: the size of the reference ``tail_distance`` was taken from (its
        :func:`tail_rank`-th largest distance); ``None`` for a state stored before it was kept, whose tail is the
        interpolated 99th percentile, tested as before: a one-sample binomial against 1% (too many false alarms on
        small references; recalibrate to drop it)."""
        if centroid.ndim != 1 or not np.linalg.norm(centroid) > _EPS:
            raise ValueError(
                "the reference embeddings have no mean direction (all zero, or cancelling out): embedding_distance "
                "needs a reference whose embeddings point somewhere"
            )
        if reference_rows is not None and reference_rows < 1:
            raise ValueError(f"reference_rows must be at least 1, got {reference_rows}")
        self._centroid = centroid.astype(np.float64)
        self._tail = tail_distance
        self._p_value = p_value
        self._reference_rows = reference_rows
        self._tumbler = Tumbler(size=window_events)
        self._histogram = histogram
        self._tails: dict[int, NDArray[np.float64]] = {}

    @classmethod
    def fit(
        cls, reference: NDArray[np.float32], *, window_events: int, p_value: float, histogram: Histogram | None = None
    ) -> EmbeddingDistance:
        """From raw ``(n, d)`` reference embeddings, every row as it came (repeated ones too: traffic repeats them
        as often)."""
        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError(f"reference must be a (n, d) matrix with n >= 2, got shape {reference.shape}")
        rows = reference.astype(np.float64)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        pointing = norms[:, 0] > 0.0
        centroid = np.mean(rows[pointing] / norms[pointing], axis=0) if pointing.any() else np.zeros(rows.shape[1])
        detector = cls(
            centroid=centroid,
            tail_distance=0.0,
            window_events=window_events,
            p_value=p_value,
            reference_rows=len(rows),
            histogram=histogram,
        )
        distances = np.sort(cosine_distance(reference, detector._centroid))
        detector._tail = float(distances[-tail_rank(len(rows))])
        return detector

    @classmethod
    def from_state(cls, state: EmbeddingDistanceState, *, histogram: Histogram | None = None) -> EmbeddingDistance:
        return cls(
            centroid=state.centroid.decode().astype(np.float64),
            tail_distance=state.tail_distance,
            window_events=state.window_events,
            p_value=state.p_value,
            reference_rows=state.reference_rows,
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
                if math.isfinite(distance):
                    self._histogram.observe(float(distance))
        results = []
        for window in self._tumbler.add(batch):
            if window.embeddings is not None:
                results.append(self.test(window.embeddings))
        return results

    def test(self, x: NDArray[np.float32]) -> DriftResult:
        """Share of one window's embeddings beyond the tail distance (all-zero ones included), tested against the
        reference's own share (:func:`exceedance_tail`)."""
        beyond = int(np.sum(cosine_distance(x, self._centroid) > self._tail))
        n = len(x)
        tail = self._tail_of(n)
        p_value = float(tail[beyond])
        # The p-value falls as the count grows: the counts still accepted are those below the first rejected one.
        accepted = int(np.count_nonzero(tail[1:] > self._p_value))  # not rejects(p): p <= p_value is
        return DriftResult(
            name=NAME,
            score=beyond / n,
            threshold=accepted / n,
            drift=rejects(p_value, self._p_value),
            p_value=p_value,
        )

    def _tail_of(self, n: int) -> NDArray[np.float64]:
        """p-value of each count ``0 .. n`` beyond the tail in a window of ``n`` (made once per window size)."""
        if n not in self._tails:
            if self._reference_rows is None:  # a state stored before the reference's size was kept
                binomial = stats.binom.sf(np.arange(n + 1) - 1, n, 1.0 - TAIL_QUANTILE)
                self._tails[n] = np.asarray(binomial, dtype=np.float64)
            else:
                rows = self._reference_rows
                self._tails[n] = exceedance_tail(n, reference_rows=rows, rank=tail_rank(rows))
        return self._tails[n]

    def export_state(self) -> EmbeddingDistanceState:
        return EmbeddingDistanceState(
            centroid=EncodedArray.of(self._centroid),
            tail_distance=self._tail,
            window_events=self._tumbler.size,
            p_value=self._p_value,
            reference_rows=self._reference_rows,
        )
