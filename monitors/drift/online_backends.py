"""alibi-detect's online pytorch detectors with our configuration steps (see :mod:`monitors.drift.online`).

alibi-detect computes thresholds inside the constructor (``_configure_thresholds``) and offers no
public way to set them, so these subclasses override the private configuration steps: the held-out
calibration of :class:`HeldOutMMD`, and the thresholds, reference split and LSDD kernel centres of a
saved state for :class:`PresetMMD` and :class:`PresetLSDD`. The rest of alibi-detect's code runs
unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from monitors.drift._alibi import LSDDDriftOnlineTorch, MMDDriftOnlineTorch, zero_diag
from monitors.drift.mmd_thresholds import held_out_mmd_thresholds
from monitors.drift.states import OnlineState

KEPT_SHARE = 0.7
"""MMD: share of the reference rows (beyond the initial test window) the detector keeps; the rest help calibrate it."""


class HeldOutMMD(MMDDriftOnlineTorch):  # type: ignore[misc]
    """alibi-detect's MMD online detector calibrated on held-out rows given the rows it keeps.

    alibi-detect re-splits the reference for every bootstrap sample, so its thresholds fit the
    average reference, not the one kept: run lengths about 2x the ERT on the digits embeddings.
    Here one seeded split (``torch.randperm``) fixes the kept reference, the initial test window
    and the held-out rows, and :func:`held_out_mmd_thresholds` calibrates on runs drawn from the
    kept and held-out rows against the kept reference (less the rows drawn). Spare rows (reference
    rows the monitor gives no detector) join the held-out ones: the more rows the calibration sees
    that the kept reference was not drawn from, the better it sees how far that reference sits from
    traffic, and the fewer kept rows a calibration window takes from the reference it is scored on.
    They are not stored: the state holds what scoring needs.
    """

    def __init__(
        self,
        *args: Any,
        steady_steps: int = 0,
        spare: NDArray[np.float32] | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        # Read by _configure_thresholds, which alibi-detect's constructor calls.
        self._steady_steps = steady_steps
        self._spare = spare
        self._generator = generator
        super().__init__(*args, **kwargs)

    def _configure_thresholds(self) -> None:
        self.ref_inds, self.init_test_inds, self.held_out_inds = held_out_split(
            self.n, self.window_size, self._generator
        )
        kernel, held_out = self.k_xx, self.held_out_inds
        if self._spare is not None and len(self._spare):
            # Spare rows join the held-out ones, after the reference's: one kernel matrix over both.
            rows = torch.cat([self.x_ref, torch.from_numpy(self._spare).to(self.x_ref)])
            kernel = self.kernel(rows, rows)
            held_out = torch.cat([held_out, torch.arange(self.n, rows.shape[0])])
        self.thresholds = held_out_mmd_thresholds(
            kernel,
            ref_inds=self.ref_inds,
            init_test_inds=self.init_test_inds,
            held_out_inds=held_out,
            ert=self.ert,
            n_bootstraps=self.n_bootstraps,
            n_steady=self._steady_steps,
            generator=self._generator,
        )

    def _configure_ref_subset(self) -> None:
        _use_ref_subset(self)


def held_out_split(
    n: int, window_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept reference, initial test window and held-out rows of ``n`` reference rows (``generator``, or torch's)."""
    perm = torch.randperm(n, generator=generator)
    kept = round(KEPT_SHARE * (n - window_size))
    return perm[:kept], perm[kept : kept + window_size], perm[kept + window_size :]


def _use_ref_subset(backend: Any) -> None:
    """Set the kernel sums of the reference split already in ``backend.ref_inds`` and reset to step 0."""
    backend._initialise_state()
    rw_size = backend.ref_inds.numel()
    backend.k_xx_sub = backend.k_xx[backend.ref_inds][:, backend.ref_inds]
    backend.k_xx_sub_sum = zero_diag(backend.k_xx_sub).sum() / (rw_size * (rw_size - 1))


class PresetMMD(MMDDriftOnlineTorch):  # type: ignore[misc]
    """alibi-detect's MMD online detector with thresholds and reference split taken from a saved state."""

    def __init__(self, *, preset: OnlineState, **kwargs: Any) -> None:
        self._preset = preset
        super().__init__(**kwargs)

    def _configure_thresholds(self) -> None:
        self.thresholds = list(self._preset.thresholds)

    def _configure_ref_subset(self) -> None:
        self.ref_inds = torch.from_numpy(self._preset.ref_inds.decode())
        self.init_test_inds = torch.from_numpy(self._preset.init_test_inds.decode())
        _use_ref_subset(self)


class PresetLSDD(LSDDDriftOnlineTorch):  # type: ignore[misc]
    """alibi-detect's LSDD online detector with centres, thresholds and split taken from a saved state."""

    def __init__(self, *, preset: OnlineState, **kwargs: Any) -> None:
        if preset.kernel_perm is None or preset.h_lam_inv is None:
            raise ValueError("LSDD state lacks kernel_perm or h_lam_inv: export it again from a calibrated detector")
        self._preset = preset
        self._perm = torch.from_numpy(preset.kernel_perm.decode())
        self._h_lam_inv = torch.from_numpy(preset.h_lam_inv.decode())
        super().__init__(**kwargs)

    def _configure_kernel_centers(self) -> None:
        self.c_inds, self.non_c_inds = self._perm[: self.n_kernel_centers], self._perm[self.n_kernel_centers :]
        self.kernel_centers = torch.from_numpy(self.x_ref[self.c_inds]).to(self.device)
        self.x_ref_eff = torch.from_numpy(self.x_ref[self.non_c_inds]).to(self.device)
        self.k_xc = self.kernel(self.x_ref_eff, self.kernel_centers)

    def _configure_thresholds(self) -> None:
        self.thresholds = list(self._preset.thresholds)
        self.H_lam_inv = self._h_lam_inv.to(self.device)

    def _configure_ref_subset(self) -> None:
        self.ref_inds = torch.from_numpy(self._preset.ref_inds.decode())
        self.init_test_inds = torch.from_numpy(self._preset.init_test_inds.decode())
        self._initialise_state()
        self.c2s = self.k_xc[self.ref_inds].mean(0)
