"""Settings of a model's drift monitor (one ``DriftConfig`` per model)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BOOTSTRAPS_PER_ERT = 10
"""alibi-detect asks for at least ten bootstrap samples per event of expected run time."""
MAX_STEADY_STEPS = 20_000_000
"""Longest calibration stream for the steady threshold (~240 MB of indices and statistics)."""


class DriftConfig(BaseModel):
    """How a model's drift monitor builds its reference and detectors."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    reference_events: int = Field(default=2000, ge=2)
    """Events collected as the reference when none is given (the ``warming_up`` phase).

    When PCA applies, half of them fit it and the other half is the multivariate detectors' reference."""
    max_reference: int = Field(default=1000, ge=2)
    """Reference rows of the multivariate detectors (a seeded random subsample above this); cost grows with it."""
    pca_components: int | None = Field(default=32, ge=1)
    """Embedding dimensions kept by PCA before the multivariate detectors; ``None`` keeps them all."""
    online_detector: Literal["mmd", "lsdd", "none"] = "mmd"
    """Online detector on embeddings (alibi-detect, pytorch backend); ``none`` skips it."""
    ert: int = Field(default=1000, ge=2)
    """Expected events between false alarms of the online detector on undrifted data."""
    window_size: int = Field(default=50, ge=2)
    """Sliding test window of the online detector, events: smaller reacts faster to large shifts."""
    n_bootstraps: int | None = Field(default=None, ge=1)
    """Bootstrap samples for the online thresholds; ``None`` means ``10 * ert``, the least accepted."""
    steady_steps_per_ert: int = Field(default=0, ge=0, le=10_000)
    """MMD: when above 0, the online detector's last threshold (the one that holds after its first window
    and so sets the run length) is re-estimated on a clean stream of this many x ``ert`` events replayed
    from the reference rows, at hazard 1/ERT (1,000: ~3% Monte-Carlo error instead of ~30% from the
    bootstrap runs; calibration ~1.5x longer). Off by default: on sentence embeddings at the default
    reference size it did not bring more calibration seeds within 25% of the ERT, and it errs long
    (README, Benchmarks)."""
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
        if self.steady_steps_per_ert * self.ert > MAX_STEADY_STEPS:
            raise ValueError(
                f"steady_steps_per_ert={self.steady_steps_per_ert} x ert={self.ert} is a calibration stream of more "
                f"than {MAX_STEADY_STEPS} events (12 bytes each, held at once): lower it"
            )
        if self.window_tests and self.p_value * (self.n_permutations + 1) < 1 - 1e-9:
            raise ValueError(
                f"n_permutations={self.n_permutations} cannot give a permutation p-value <= {self.p_value}: "
                f"use at least {math.ceil(1 / self.p_value) - 1}"
            )
        least = self.least_reference
        collected = self.reference_events // 2 if self.pca_components is not None else self.reference_events
        if self.online_detector != "none" and min(collected, self.max_reference) < least:
            raise ValueError(
                f"the online detector's reference (max_reference, and reference_events, halved when PCA applies) "
                f"must hold at least {least} rows for window_size={self.window_size}: raise them or shrink window_size"
            )
        return self

    @property
    def bootstraps(self) -> int:
        """Bootstrap samples actually used."""
        return self.n_bootstraps if self.n_bootstraps is not None else BOOTSTRAPS_PER_ERT * self.ert

    @property
    def least_reference(self) -> int:
        """Smallest reference the online detectors accept (LSDD sets ``2 x window`` rows aside as kernel centres)."""
        return 4 * self.window_size + 1
