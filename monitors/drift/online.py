"""Online drift on (reduced) embeddings: alibi-detect's ``MMDDriftOnline``/``LSDDDriftOnline`` behind our protocol.

Calibration (:meth:`OnlineDriftDetector.calibrate`) bootstraps the per-step
thresholds for the configured expected run time (ERT) and window. For MMD the
bootstrap runs vectorised (:mod:`monitors.drift.mmd_thresholds`, seconds at
ERT 1000) and is drawn for the reference rows the detector keeps
(``HeldOutMMD``: ``KEPT_SHARE`` of them; the rest are held out for
calibration, with any ``spare`` rows the caller has), not re-split per sample
as alibi-detect does (optionally its last threshold, which holds from step
``W`` on, is set on a clean stream: ``steady_steps``); LSDD keeps
alibi-detect's own loop (minutes at that ERT). Either way
callers run it off the request path. Its outcome is exported as
:class:`OnlineState` (plain arrays and numbers) and
:meth:`OnlineDriftDetector.from_state` rebuilds the detector without
bootstrapping again; ``calibrate`` itself returns the rebuilt detector, so a
replica that imports the state scores every event bit for bit alike.

alibi-detect has no public way to set thresholds: they are computed inside the
constructor (``_configure_thresholds``) and its ``save_detector`` does not keep
them. The detectors therefore subclass the pytorch backend classes
(:mod:`monitors.drift.online_backends`) and override the private configuration
steps (thresholds, reference split, LSDD kernel centres); the rest of alibi-detect's code runs unchanged. The kernel
bandwidth is always passed explicitly (median heuristic computed here), so
calibrated and restored detectors share it exactly. Scoring goes through
``score`` plus ``get_threshold``, never ``predict``, whose ``test_stats`` and
``drift_preds`` histories grow by one element per event, re-copied each time,
for the life of the detector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from common.codec import EncodedArray
from monitors.drift._alibi import LSDDDriftOnlineTorch
from monitors.drift.base import DriftBatch, DriftResult, OnlineResult
from monitors.drift.online_backends import HeldOutMMD, PresetLSDD, PresetMMD
from monitors.drift.states import OnlineMethod, OnlineState


class OnlineDriftDetector:
    """Sliding-window online drift test scored one event at a time (implements ``DriftDetector``)."""

    def __init__(self, *, backend: Any, state: OnlineState) -> None:
        """Use :meth:`calibrate` or :meth:`from_state`; this wraps an already configured alibi-detect detector."""
        self._backend = backend
        self._state = state
        self._name = f"{state.method}_online"

    @classmethod
    def calibrate(
        cls,
        reference: NDArray[np.float32],
        *,
        method: OnlineMethod,
        ert: int,
        window_size: int,
        n_bootstraps: int,
        steady_steps: int = 0,
        spare: NDArray[np.float32] | None = None,
        generator: torch.Generator | None = None,
        device: str = "cpu",
    ) -> OnlineDriftDetector:
        """Bootstrap thresholds for ``ert`` and ``window_size`` on ``reference`` (slow: run it in a worker).

        ``steady_steps`` (MMD): re-estimate the last threshold on a clean stream of that many events
        (:func:`monitors.drift.mmd_thresholds.steady_threshold`); 0 keeps the bootstrap's.
        ``spare`` (MMD; LSDD ignores it): more undrifted rows, of the reference's width, that the
        detector does not keep, only calibrates on, as it does on its held-out rows.
        ``generator`` (MMD): the calibration's random draws, so that calibrations running at once in
        several threads cannot change each other's (torch's global generator when ``None``; LSDD always
        draws from it, inside alibi-detect).

        The detector returned is rebuilt from the exported state, so a detector
        restored elsewhere from that state scores every event bit for bit alike.
        """
        x = _checked_reference(reference, window_size)
        sigma = median_sigma(x if method == "mmd" else standardise(x))
        kwargs = _backend_kwargs(
            x, ert=ert, window_size=window_size, n_bootstraps=n_bootstraps, sigma=sigma, device=device
        )
        if method == "lsdd":
            backend = LSDDDriftOnlineTorch(**kwargs)
        else:
            spare = _checked_spare(spare, x.shape[1])
            backend = HeldOutMMD(steady_steps=steady_steps, spare=spare, generator=generator, **kwargs)
        state = OnlineState(
            method=method,
            ert=ert,
            window_size=window_size,
            n_bootstraps=n_bootstraps,
            reference=EncodedArray.of(x),
            sigma=sigma,
            thresholds=tuple(float(t) for t in backend.thresholds),
            ref_inds=EncodedArray.of(backend.ref_inds.cpu().numpy().astype(np.int64)),
            init_test_inds=EncodedArray.of(backend.init_test_inds.cpu().numpy().astype(np.int64)),
            **_lsdd_extras(backend) if method == "lsdd" else _mmd_extras(backend),
        )
        return cls.from_state(state, device=device)

    @classmethod
    def from_state(cls, state: OnlineState, *, device: str = "cpu") -> OnlineDriftDetector:
        """Rebuild a calibrated detector, at step 0, without bootstrapping."""
        x = state.reference.decode().astype(np.float32)
        if len(state.thresholds) != state.window_size:
            raise ValueError(f"state has {len(state.thresholds)} thresholds for window_size={state.window_size}")
        kwargs = _backend_kwargs(
            x,
            ert=state.ert,
            window_size=state.window_size,
            n_bootstraps=state.n_bootstraps,
            sigma=state.sigma,
            device=device,
        )
        preset_class = PresetMMD if state.method == "mmd" else PresetLSDD
        return cls(backend=preset_class(preset=state, **kwargs), state=state)

    @property
    def backend(self) -> Any:
        """The wrapped alibi-detect detector, for inspection only."""
        return self._backend

    def reset(self) -> None:
        """Back to step 0 (test window drawn from the reference), keeping the thresholds; e.g. after an alarm."""
        self._backend.reset_state()

    def scores(self, x: NDArray[np.float32]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Feed ``(n, d)`` rows in order; the test statistic and threshold after each."""
        rows = np.ascontiguousarray(x, dtype=np.float32)
        dim = self._state.reference.shape[1]
        if rows.ndim != 2 or rows.shape[1] != dim:
            raise ValueError(f"expected rows of shape (n, {dim}) (after PCA), got {rows.shape}")
        scores = np.empty(len(rows))
        thresholds = np.empty(len(rows))
        with torch.no_grad():
            for i, row in enumerate(rows):
                scores[i] = self._backend.score(row)
                thresholds[i] = self._backend.get_threshold(self._backend.t)
        return scores, thresholds

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        """One result per batch: the detector's state after the batch's last event (its statistic against its
        threshold), with how many events were scored and how many were above their threshold (:class:`OnlineResult`).

        The state after the last event is the verdict on the latest traffic: on clean traffic it says drift for
        about 8 / ERT of the batches whatever their size, where the worst event of a batch of ``b`` would say so in
        about ``1 - exp(-b / ERT)`` of them (a third of the batches of 500 at ERT 1000). Drift keeps the statistic
        above its threshold, so the last event says so too; alarms earlier in the batch are counted (``alarms``)."""
        if batch.embeddings is None or len(batch) == 0:
            return []
        scores, thresholds = self.scores(batch.embeddings)
        score, threshold = float(scores[-1]), float(thresholds[-1])
        return [
            OnlineResult(
                name=self._name,
                score=score,
                threshold=threshold,
                drift=score > threshold,
                events=len(scores),
                alarms=int(np.count_nonzero(scores > thresholds)),
                ert=self._state.ert,
            )
        ]

    def export_state(self) -> OnlineState:
        return self._state


def median_sigma(x: NDArray[np.float32]) -> float:
    """Median heuristic bandwidth: ``sqrt(median pairwise squared distance / 2)``, as alibi-detect infers it."""
    data = x.astype(np.float64)
    norms = np.sum(data * data, axis=1)
    squared = norms[:, None] + norms[None, :] - 2.0 * data @ data.T
    upper = squared[np.triu_indices(len(data), k=1)]
    sigma = float(np.sqrt(max(float(np.median(upper)), 0.0) / 2.0))
    if sigma <= 0.0:
        raise ValueError(
            "reference rows are (nearly) all identical: a kernel bandwidth cannot be set; collect a varied reference"
        )
    return float(np.float32(sigma))


def standardise(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Zero mean, unit variance per column, as alibi-detect's LSDD detectors normalise their inputs."""
    data = x.astype(np.float64)
    scaled: NDArray[np.float32] = ((data - data.mean(axis=0)) / (data.std(axis=0, ddof=1) + 1e-12)).astype(np.float32)
    return scaled


def _checked_reference(reference: NDArray[np.float32], window_size: int) -> NDArray[np.float32]:
    x = np.ascontiguousarray(reference, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"reference must be a (n, d) matrix, got shape {x.shape}")
    if len(np.unique(x, axis=0)) != len(x):
        raise ValueError("reference has duplicate rows: deduplicate it (Reference.prepare does)")
    if len(x) < 4 * window_size + 1:
        raise ValueError(f"reference has {len(x)} rows; window_size={window_size} needs at least {4 * window_size + 1}")
    return x


def _checked_spare(spare: NDArray[np.float32] | None, dim: int) -> NDArray[np.float32] | None:
    if spare is None:
        return None
    rows = np.ascontiguousarray(spare, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"spare rows must have shape (n, {dim}) like the reference, got {rows.shape}")
    return rows


def _backend_kwargs(
    x: NDArray[np.float32], *, ert: int, window_size: int, n_bootstraps: int, sigma: float, device: str
) -> dict[str, Any]:
    return {
        "x_ref": x,
        "ert": ert,
        "window_size": window_size,
        "n_bootstraps": n_bootstraps,
        "sigma": np.array([sigma], dtype=np.float32),
        "device": device,
        "verbose": False,
    }


def _mmd_extras(backend: Any) -> dict[str, EncodedArray]:
    return {"held_out_inds": EncodedArray.of(backend.held_out_inds.cpu().numpy().astype(np.int64))}


def _lsdd_extras(backend: Any) -> dict[str, EncodedArray]:
    perm = torch.cat([backend.c_inds, backend.non_c_inds]).cpu().numpy().astype(np.int64)
    h_lam_inv = backend.H_lam_inv.detach().cpu().numpy().astype(np.float32)
    return {"kernel_perm": EncodedArray.of(perm), "h_lam_inv": EncodedArray.of(h_lam_inv)}
