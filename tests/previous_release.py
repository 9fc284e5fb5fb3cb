"""What the previous release reads, for tests of rolling upgrades (its monitors adopt what this one stores)."""

from __future__ import annotations

from pydantic import Field

from monitors.drift.config import DriftConfig


class PreviousDriftConfig(DriftConfig):
    """``DriftConfig`` as the previous release reads it: ``steady_steps_per_ert`` an integer (0 by default), and
    unknown keys refused (inherited)."""

    steady_steps_per_ert: int = Field(default=0, ge=0, le=10_000)
