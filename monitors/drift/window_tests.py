"""Two-sample tests on tumbling windows of (reduced) embeddings: alibi-detect ``MMDDrift`` and ``KSDrift``.

A second view next to the online detector: a verdict per full window, with a
p-value. ``window_mmd`` scores the squared MMD against the permutation
threshold; ``window_ks`` runs a KS test per dimension and scores
``-log10`` of the Bonferroni-adjusted smallest p-value against ``-log10(p_value)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from monitors.drift._alibi import KSDrift, MMDDrift
from monitors.drift.base import DriftBatch, DriftResult, EncodedArray, surprise
from monitors.drift.states import WindowTestsState
from monitors.drift.tumbling import Tumbler

MMD_NAME = "window_mmd"
KS_NAME = "window_ks"


class WindowTests:
    """MMD permutation test and per-dimension KS tests on each tumbling window (implements ``DriftDetector``)."""

    def __init__(
        self,
        reference: NDArray[np.float32],
        *,
        window_events: int,
        p_value: float,
        n_permutations: int,
        device: str = "cpu",
    ) -> None:
        if reference.ndim != 2 or len(reference) < 2:
            raise ValueError(f"reference must be a (n, d) matrix with n >= 2, got shape {reference.shape}")
        self._reference = np.ascontiguousarray(reference, dtype=np.float32)
        self._p_value = p_value
        self._n_permutations = n_permutations
        self._tumbler = Tumbler(size=window_events)
        self._mmd = MMDDrift(
            self._reference, backend="pytorch", p_val=p_value, n_permutations=n_permutations, device=device
        )
        self._ks = KSDrift(self._reference, p_val=p_value, correction="bonferroni")

    @classmethod
    def from_state(cls, state: WindowTestsState, *, device: str = "cpu") -> WindowTests:
        return cls(
            state.reference.decode().astype(np.float32),
            window_events=state.window_events,
            p_value=state.p_value,
            n_permutations=state.n_permutations,
            device=device,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return (MMD_NAME, KS_NAME)

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        if batch.embeddings is None:
            return []
        results: list[DriftResult] = []
        for window in self._tumbler.add(batch):
            if window.embeddings is not None:
                results.extend(self.test(window.embeddings))
        return results

    def test(self, x: NDArray[np.float32]) -> list[DriftResult]:
        """Both tests of one window of ``(n, d)`` rows against the reference."""
        rows = np.ascontiguousarray(x, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self._reference.shape[1]:
            raise ValueError(f"expected rows of shape (n, {self._reference.shape[1]}) (after PCA), got {rows.shape}")
        p_mmd, distance, distance_threshold = self._mmd.score(rows)
        p_features, _ = self._ks.score(rows)
        p_ks = min(1.0, float(np.min(p_features)) * rows.shape[1])
        return [
            DriftResult(
                name=MMD_NAME,
                score=float(distance),
                threshold=float(distance_threshold),
                drift=bool(distance > distance_threshold),
                p_value=float(p_mmd),
            ),
            DriftResult(
                name=KS_NAME,
                score=surprise(p_ks),
                threshold=surprise(self._p_value),
                drift=p_ks < self._p_value,
                p_value=p_ks,
            ),
        ]

    def export_state(self) -> WindowTestsState:
        return WindowTestsState(
            reference=EncodedArray.of(self._reference),
            window_events=self._tumbler.size,
            p_value=self._p_value,
            n_permutations=self._n_permutations,
        )
