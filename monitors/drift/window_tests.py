"""Two-sample tests on tumbling windows of (reduced) embeddings: alibi-detect ``MMDDrift`` and ``KSDrift``.

A second view next to the online detector: a verdict per full window, with a
p-value. ``window_mmd`` is a permutation test of the squared MMD (alibi-detect's
kernel, statistic and permutation draws) that decides on the permutation
p-value with the +1 correction, ``p = (1 + #{permuted >= observed}) / (1 + B)``,
drift iff ``p <= p_value``: its size is then at most ``p_value`` under
exchangeability (alibi-detect's own verdict, the distance above the
``int(p_value * B)``-th largest permuted value, rejects one permutation count
too many: 5.9 % at 0.05 and 100 permutations). It scores the squared MMD
against :func:`permutation_threshold`, which gives the same verdict.
``window_ks`` runs a KS test per dimension and scores ``-log10`` of the
Bonferroni-adjusted smallest p-value against ``-log10(p_value)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import NDArray

from common.codec import EncodedArray
from monitors.drift._alibi import KSDrift, MMDDriftTorch, mmd2_from_kernel_matrix
from monitors.drift.base import DriftBatch, DriftResult, surprise
from monitors.drift.states import WindowTestsState
from monitors.drift.tumbling import Tumbler

MMD_NAME = "window_mmd"
KS_NAME = "window_ks"


def permutation_p_value(observed: float, permuted: NDArray[np.float64]) -> float:
    """``(1 + #{permuted >= observed}) / (1 + B)``: a valid p-value, never below ``1 / (1 + B)``."""
    return float((1 + np.count_nonzero(permuted >= observed)) / (1 + permuted.size))


def rejections_allowed(p_value: float, n_permutations: int) -> int:
    """Most permuted statistics at or above the observed one for which ``permutation_p_value <= p_value``."""
    # The epsilon keeps e.g. 0.05 * 100 from flooring to 4 through float rounding.
    return math.floor(p_value * (n_permutations + 1) + 1e-9) - 1


def permutation_threshold(permuted: NDArray[np.float64], p_value: float) -> float:
    """The statistic above which ``permutation_p_value <= p_value``: the ``(m + 1)``-th largest permuted value.

    With ``m = rejections_allowed``: ``observed > threshold`` holds exactly when at most ``m``
    permuted values are ``>= observed``, ties included.
    """
    m = rejections_allowed(p_value, permuted.size)
    if m < 0:
        raise _too_few_permutations(p_value, permuted.size)
    return float(np.sort(permuted)[::-1][m])


def _too_few_permutations(p_value: float, n_permutations: int) -> ValueError:
    least = math.ceil(1 / p_value - 1 - 1e-9)
    return ValueError(f"n_permutations={n_permutations} cannot reach p <= {p_value}: use at least {least}")


class _PermutationMMD(MMDDriftTorch):  # type: ignore[misc]
    """alibi-detect's MMD permutation test returning the permuted statistics (its ``score`` keeps one quantile)."""

    def permutation_test(self, x: NDArray[np.float32]) -> tuple[float, NDArray[np.float64]]:
        """The squared MMD of ``x`` against the reference and its ``n_permutations`` permuted values."""
        x_ref, y = self.preprocess(x)
        x_ref_t, y_t = torch.from_numpy(x_ref).to(self.device), torch.from_numpy(y).to(self.device)
        m = y_t.shape[0]
        with torch.no_grad():
            kernel_mat = self.kernel_matrix(x_ref_t, y_t)
            kernel_mat = kernel_mat - torch.diag(kernel_mat.diag())
            observed = mmd2_from_kernel_matrix(kernel_mat, m, permute=False, zero_diag=False)
            permuted = torch.stack(
                [
                    mmd2_from_kernel_matrix(kernel_mat, m, permute=True, zero_diag=False)
                    for _ in range(self.n_permutations)
                ]
            )
        return float(observed.cpu()), permuted.cpu().numpy().astype(np.float64)


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
        if rejections_allowed(p_value, n_permutations) < 0:
            raise _too_few_permutations(p_value, n_permutations)
        self._reference = np.ascontiguousarray(reference, dtype=np.float32)
        self._p_value = p_value
        self._n_permutations = n_permutations
        self._tumbler = Tumbler(size=window_events)
        self._mmd = _PermutationMMD(self._reference, p_val=p_value, n_permutations=n_permutations, device=device)
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
        rows = self._rows(x)
        return [self._mmd_result(rows), self._ks_result(rows)]

    def _rows(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        rows = np.ascontiguousarray(x, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self._reference.shape[1]:
            raise ValueError(f"expected rows of shape (n, {self._reference.shape[1]}) (after PCA), got {rows.shape}")
        return rows

    def _mmd_result(self, rows: NDArray[np.float32]) -> DriftResult:
        distance, permuted = self._mmd.permutation_test(rows)
        p_mmd = permutation_p_value(distance, permuted)
        return DriftResult(
            name=MMD_NAME,
            score=distance,
            threshold=permutation_threshold(permuted, self._p_value),
            drift=p_mmd <= self._p_value,
            p_value=p_mmd,
        )

    def _ks_result(self, rows: NDArray[np.float32]) -> DriftResult:
        p_features, _ = self._ks.score(rows)
        p_ks = min(1.0, float(np.min(p_features)) * rows.shape[1])
        return DriftResult(
            name=KS_NAME,
            score=surprise(p_ks),
            threshold=surprise(self._p_value),
            drift=p_ks < self._p_value,
            p_value=p_ks,
        )

    def export_state(self) -> WindowTestsState:
        return WindowTestsState(
            reference=EncodedArray.of(self._reference),
            window_events=self._tumbler.size,
            p_value=self._p_value,
            n_permutations=self._n_permutations,
        )
