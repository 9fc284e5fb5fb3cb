"""What the owning monitor publishes for every sidecar to answer: typed, versioned JSON in Redis.

The monitor writes these (only while it holds the model's lease); any sidecar replica reads
them for ``GET /v1/models/{model}/drift`` and ``/calibration``. Pydantic and the calibration
types only (numpy): a sidecar imports this without the detectors.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from monitors.calibration import CalibrationReport, ReliabilityBin

FORMAT_VERSION = 1


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class DetectorVerdict(_Result):
    name: str
    score: float
    threshold: float
    drift: bool
    since: float | None = None
    """Epoch seconds of the first drift verdict of the current run."""
    p_value: float | None = None


class DriftStatus(_Result):
    """The latest verdicts of a model's detectors, fed by every replica of the fleet."""

    v: int = FORMAT_VERSION
    model: str
    state: str
    """``warming_up``, ``calibrating`` or ``monitoring``."""
    detectors: tuple[DetectorVerdict, ...] = ()
    calibration_error: str | None = None
    examined: int = 0
    """Records the detectors have examined since this owner took the model."""
    backlog: int = 0
    """Records published but not examined yet (in Redis and in the owner's buffer)."""
    oldest_waiting_s: float = 0.0
    """Age of the oldest record not examined yet; 0 when none waits."""
    owner: str
    updated_at: float


class Bin(_Result):
    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


class SeriesQuality(_Result):
    """Calibration and accuracy of one (model version, cohort slice) over the labelled window."""

    version: str
    cohort: str
    count: int
    ece: float
    mce: float
    brier_score: float | None
    brier_count: int
    accuracy: float
    accuracy_lower: float
    accuracy_upper: float
    bins: tuple[Bin, ...] = Field(default=())

    def calibration(self) -> CalibrationReport:
        """The calibration figures as the reliability diagram takes them."""
        return CalibrationReport(
            count=self.count,
            ece=self.ece,
            mce=self.mce,
            brier_score=self.brier_score,
            brier_count=self.brier_count,
            bins=tuple(ReliabilityBin(**b.model_dump()) for b in self.bins),
        )


class QualityReport(_Result):
    v: int = FORMAT_VERSION
    model: str
    window_s: float
    series: tuple[SeriesQuality, ...] = ()
    owner: str
    updated_at: float
