"""Settings of a model's drift monitor (one ``DriftConfig`` per model)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

BOOTSTRAPS_PER_ERT = 10
"""alibi-detect asks for at least ten bootstrap samples per event of expected run time."""
MAX_STEADY_STEPS = 20_000_000
"""Longest calibration stream for the steady threshold (~240 MB of indices and statistics)."""
AUTO_STEADY_MIN_REFERENCE = 5000
"""Reference rows (as handed to the monitor, uploaded or collected) from which ``steady_steps_per_ert=None``
chooses the steady threshold."""
AUTO_STEADY_STEPS_PER_ERT = 1000
"""``steady_steps_per_ert`` chosen automatically for a reference of ``AUTO_STEADY_MIN_REFERENCE`` rows or more
(at most ``MAX_STEADY_STEPS // ert``)."""


PCA_SHARE = 0.5
"""The default ``pca_share``: the halves every state stored before the setting existed was fitted with."""


class DriftConfig(BaseModel):
    """How a model's drift monitor builds its reference and detectors."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    reference_events: int = Field(default=AUTO_STEADY_MIN_REFERENCE, ge=2)
    """Events collected as the reference when none is given (the ``warming_up`` phase).

    When PCA applies, it takes ``pca_share`` of them (fitting on the distinct ones); of the rest, repeated
    embeddings included, ``max_reference`` are the multivariate detectors' reference and the others only help
    calibrate the online detector. The default, 5,000, is the
    size from which the online detector's run length holds per calibration, not only on average: on sentence
    embeddings every one of 10 (and of 20) calibration seeds within 25% of the ERT, against 7 of 10 at 2,000,
    the default until 2026-11-30 (README, Benchmarks). Lower it for a model with little traffic (the monitor
    watches nothing until it has them) and accept a wider spread; a warm-up state stored at another value is
    recalibrated. At start-up it (and ``max_reference``) must hold the online detector's :attr:`least_reference`
    rows, what every width needs; embeddings wider than ``pca_components`` need :meth:`least_rows` of their width,
    checked when the warm-up calibrates, whose error names the value to set."""
    max_reference: int = Field(default=1000, ge=2)
    """Reference rows of the multivariate detectors (a seeded random subsample above this); cost grows with it.

    Rows beyond it (at most twice as many) still calibrate the online MMD detector: they cost calibration
    time only, and show it traffic its reference was not drawn from."""
    pca_components: int | None = Field(default=32, ge=1)
    """Embedding dimensions kept by PCA before the multivariate detectors; ``None`` keeps them all."""
    pca_share: float = Field(default=PCA_SHARE, gt=0.0, lt=1.0)
    """Share of the reference rows PCA takes (when it applies): that share of the distinct rows, which fit it, and
    of the copies of an embedding, which are dropped, so the rows left repeat an input as often as the reference
    does. No detector or calibration uses them:
    rows a projection was fitted on spread more along its axes than new rows do (~10% more variance
    with 1,000 of 384-d sentence embeddings), which reads as drift. A quarter (its other rows calibrate as
    spare rows), with ``steady_steps_per_ert``, narrowed the per-seed spread of run lengths on sentence
    embeddings a little but put fewer seeds within 25% of the ERT, and erred long on the digits' small
    reference (README, Benchmarks), so the default stays a half."""
    online_detector: Literal["mmd", "lsdd", "none"] = "mmd"
    """Online detector on embeddings (alibi-detect, pytorch backend); ``none`` skips it."""
    ert: int = Field(default=1000, ge=2)
    """Expected events between false alarms of the online detector on undrifted data."""
    window_size: int = Field(default=50, ge=2)
    """Sliding test window of the online detector, events: smaller reacts faster to large shifts."""
    n_bootstraps: int | None = Field(default=None, ge=1)
    """Bootstrap samples for the online thresholds; ``None`` means ``10 * ert``, the least accepted."""
    steady_steps_per_ert: int | None = Field(default=None, ge=0, le=10_000)
    """MMD: when above 0, the online detector's last threshold (the one that holds after its first window
    and so sets the run length) is re-estimated on a clean stream of this many x ``ert`` events replayed
    from the calibration rows, at hazard 1/ERT (1,000: ~3% Monte-Carlo error instead of ~30% from the
    bootstrap runs; calibration a few seconds longer), then scaled from the stream's windows to fresh ones
    (``mmd_thresholds.fresh_window_ratio``: without that it erred long where the reference is small, 2-23x
    the ERT on the digits). 0: never (every threshold from the bootstrap runs). ``None``, the default
    (``VAI_DRIFT__STEADY_STEPS_PER_ERT`` unset), is automatic (:meth:`steady_steps_for`): 1,000 from a reference
    of 5,000 rows, 0 below. On sentence embeddings with a reference of 5,000 rows it put 20 of 20 calibration
    seeds' mean run within 25% of the ERT (8 of 10 sequentially); at 2,000 rows no more than sequentially (7 of
    10 both) (README, Benchmarks). A monitor stores the value it used (:meth:`resolved`), never ``None``."""
    window_events: int = Field(default=500, ge=10)
    """Events per tumbling window of the batch tests (MMD/KS, output drift, embedding distance)."""
    window_tests: bool = True
    """Run the alibi-detect MMD permutation and per-dimension KS tests on each tumbling window."""
    n_permutations: int = Field(default=100, ge=10)
    """Permutations of the windowed MMD test; its p-value is ``(1 + #{permuted >= observed}) / (1 + n)``."""
    p_value: float = Field(default=0.05, gt=0.0, lt=1.0)
    """Significance level of every windowed test (before the Bonferroni correction of the KS test)."""
    device: str = "cpu"
    """Torch device of the alibi-detect detectors; one event at a time is fastest on the CPU."""
    seed: int = 0
    """Seed of the reference subsample."""

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        if self.n_bootstraps is not None and self.n_bootstraps < BOOTSTRAPS_PER_ERT * self.ert:
            raise ValueError(
                f"n_bootstraps={self.n_bootstraps} is too few for ert={self.ert}: "
                f"use at least {BOOTSTRAPS_PER_ERT * self.ert} (10 x ert) or leave it unset"
            )
        if self.steady_steps_per_ert is not None and self.steady_steps_per_ert * self.ert > MAX_STEADY_STEPS:
            raise ValueError(
                f"steady_steps_per_ert={self.steady_steps_per_ert} x ert={self.ert} is a calibration stream of more "
                f"than {MAX_STEADY_STEPS} events (12 bytes each, held at once): lower it"
            )
        if self.window_tests and self.p_value * (self.n_permutations + 1) < 1 - 1e-9:
            raise ValueError(
                f"n_permutations={self.n_permutations} cannot give a permutation p-value <= {self.p_value}: "
                f"use at least {math.ceil(1 / self.p_value) - 1}"
            )
        # Only what a reference of any width needs: PCA's share applies above pca_components dimensions, a width
        # known only once embeddings come, so least_rows(width) is checked where it is (uploads, calibration).
        least = self.least_rows(0)
        if min(self.reference_events, self.max_reference) < least:
            raise ValueError(
                f"the online detector's reference (reference_events and max_reference) must hold at least {least} "
                f"rows for window_size={self.window_size}: raise them or shrink window_size"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_default_pca_share(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``pca_share`` is left out at its default: a stored state then reads as before the setting existed,
        so monitors of the previous release (whose ``DriftConfig`` forbids unknown keys) still adopt it during a
        rolling upgrade. Set to anything else, it is kept, and such a monitor refuses the state and recalibrates."""
        data: dict[str, Any] = handler(self)
        if self.pca_share == PCA_SHARE:
            data.pop("pca_share", None)
        return data

    def steady_steps_for(self, reference_rows: int) -> int:
        """``steady_steps_per_ert`` for a reference of ``reference_rows`` (as handed to the monitor, before
        deduplication and the PCA split): the setting when given; when ``None``, ``AUTO_STEADY_STEPS_PER_ERT``
        from ``AUTO_STEADY_MIN_REFERENCE`` rows, capped to the longest stream allowed (``MAX_STEADY_STEPS //
        ert``: above ert 20,000 fewer per ERT, still a smaller Monte-Carlo error than the bootstrap's), else 0."""
        if self.steady_steps_per_ert is not None:
            return self.steady_steps_per_ert
        if reference_rows < AUTO_STEADY_MIN_REFERENCE:
            return 0
        return min(AUTO_STEADY_STEPS_PER_ERT, MAX_STEADY_STEPS // self.ert)

    def resolved(self, reference_rows: int) -> DriftConfig:
        """This config as calibrated on a reference of ``reference_rows``: ``steady_steps_per_ert`` made concrete
        (:meth:`steady_steps_for`). Stored states hold it, so monitors of earlier releases (an ``int`` there, no
        ``None``) still read them, and a state of the earlier default (0, under 5,000 rows) equals it."""
        return self.model_copy(update={"steady_steps_per_ert": self.steady_steps_for(reference_rows)})

    def pca_rows(self, reference_rows: int) -> int:
        """Rows of a reference of ``reference_rows`` distinct rows that fit PCA: ``pca_share`` of them rounded down
        (a half is ``reference_rows // 2``, as before the setting existed), at least 2, 1 left over."""
        return min(max(int(self.pca_share * reference_rows), 2), reference_rows - 1)

    @property
    def bootstraps(self) -> int:
        """Bootstrap samples actually used."""
        return self.n_bootstraps if self.n_bootstraps is not None else BOOTSTRAPS_PER_ERT * self.ert

    @property
    def steady_steps(self) -> int:
        """Events of the steady threshold's calibration stream (0: none), once :meth:`resolved` on the reference."""
        if self.steady_steps_per_ert is None:
            raise ValueError("steady_steps_per_ert is automatic: resolve the config on the reference first (resolved)")
        return self.steady_steps_per_ert * self.ert

    @property
    def least_reference(self) -> int:
        """Smallest reference the online detectors accept (LSDD sets ``2 x window`` rows aside as kernel centres)."""
        return 4 * self.window_size + 1

    def least_rows(self, width: int) -> int:
        """Fewest distinct rows a reference of ``width``-d embeddings needs to calibrate with this config: the
        online detector's :attr:`least_reference` once PCA has taken its ``pca_share`` (when it applies, above
        ``pca_components`` dimensions), 2 without an online detector. A sidecar refuses a smaller upload at once
        instead of the monitor failing to calibrate it later; a warm-up is checked when it calibrates. ``width`` 0
        (no PCA at any setting) gives what every width needs, the start-up check's bound.

        Copies of an embedding count once, though the MMD detector takes them (as traffic brings them): PCA fits on
        distinct rows, LSDD needs distinct rows, and the bound asks the reference's variety, not its copies, to fill
        the detector's reference: a warm-up of 5,000 health-check pings and a dozen real requests has the rows but
        is no sample of traffic to calibrate on. So the bound stays one count of distinct rows, which a sidecar
        counts in an upload, exact (one distinct row fewer leaves the online detector and window tests out,
        whatever the copies) and enough (the rows PCA does not fit on then hold :attr:`least_reference` rows)."""
        if self.online_detector == "none":
            return 2
        least = self.least_reference
        if self.pca_components is None or width <= self.pca_components:
            return least
        rows = least + 1
        while rows - self.pca_rows(rows) < least:
            rows += 1
        return rows
