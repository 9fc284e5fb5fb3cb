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

The MMD detector's reference may hold copies of a row: traffic repeats inputs (a blank request, a cached
query), and a reference collected from it repeats them as often. Kept, held-out and spare rows are then drawn
with their copies, so the calibration's null windows repeat an input at the reference's rate, as clean traffic
does. The unbiased statistic leaves out each row's pair with itself by position, not by value, so two copies
are a pair of identical embeddings (kernel 1) in the calibration as in the deployed detector. With one row per
distinct embedding, a clean window of traffic in which 30% of events were one input held far more identical
pairs than any calibration window, and the detector alarmed far more often than its ERT allows. The bandwidth
is taken over distinct rows (:func:`median_sigma`). LSDD still needs distinct rows: it takes ``2 x window`` of
them as kernel centres, and copies among them make alibi-detect jitter the centres with an unseeded draw that
the state does not keep.
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
        ``reference`` (MMD) may hold copies of a row (see the module's docstring); LSDD refuses them.
        ``generator`` (MMD): the calibration's random draws, so that calibrations running at once in
        several threads cannot change each other's (torch's global generator when ``None``; LSDD always
        draws from it, inside alibi-detect).

        The detector returned is rebuilt from the exported state, so a detector
        restored elsewhere from that state scores every event bit for bit alike.
        """
        x = _checked_reference(reference, window_size, method)
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
    """Median heuristic bandwidth over the distinct rows of ``x``: ``sqrt(median pairwise squared distance / 2)``,
    as alibi-detect infers it from rows without copies.

    Copies are left out: a reference drawn from traffic that repeats an input (a blank request, a cached query)
    holds it as often, and its identical pairs (distance 0) would pull the median down with the input's share,
    to 0 once over half the pairs are identical, though the spread of the embeddings is the same. The kernel is a
    choice, not an estimate (any bandwidth gives a valid test when the calibration uses it too), so it is set by
    the embeddings the reference holds, not by how often traffic repeats one; rows without copies give the
    bandwidth they always gave, bit for bit. The bandwidth is stored in the state (``OnlineState.sigma``), so a
    restored detector, including one calibrated before copies were kept, uses the one it was calibrated with."""
    data = _distinct(x).astype(np.float64)
    norms = np.sum(data * data, axis=1)
    squared = norms[:, None] + norms[None, :] - 2.0 * data @ data.T
    upper = squared[np.triu_indices(len(data), k=1)]
    sigma = float(np.sqrt(max(float(np.median(upper)), 0.0) / 2.0)) if upper.size else 0.0
    if sigma <= 0.0:
        raise ValueError(
            "reference rows are (nearly) all identical: a kernel bandwidth cannot be set; collect a varied reference"
        )
    return float(np.float32(sigma))


def _distinct(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """The rows of ``x`` with copies left out, first copies in their order (``x`` itself when it has none)."""
    _, first = np.unique(x, axis=0, return_index=True)
    return x if len(first) == len(x) else x[np.sort(first)]


def standardise(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Zero mean, unit variance per column, as alibi-detect's LSDD detectors normalise their inputs."""
    data = x.astype(np.float64)
    scaled: NDArray[np.float32] = ((data - data.mean(axis=0)) / (data.std(axis=0, ddof=1) + 1e-12)).astype(np.float32)
    return scaled


def _checked_reference(reference: NDArray[np.float32], window_size: int, method: OnlineMethod) -> NDArray[np.float32]:
    x = np.ascontiguousarray(reference, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"reference must be a (n, d) matrix, got shape {x.shape}")
    if method == "lsdd" and len(np.unique(x, axis=0)) != len(x):
        raise ValueError(
            "reference has duplicate rows: LSDD takes its kernel centres from the reference and needs distinct rows "
            "(detectors._reduced_rows gives it one per distinct embedding)"
        )
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
