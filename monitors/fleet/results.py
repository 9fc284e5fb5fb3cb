"""What the owning monitor publishes for every sidecar to answer: typed, versioned JSON in Redis.

The monitor writes these (only while it holds the model's lease); any sidecar replica reads
them for ``GET /v1/models/{model}/drift`` and ``/calibration``. Pydantic and the calibration
types only (numpy): a sidecar imports this without the detectors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from monitors.calibration import CalibrationReport, ReliabilityBin

FORMAT_VERSION = 1
REFERENCE_LOST = "reference_lost"
"""The drift state of a model whose uploaded reference Redis lost with no monitor keeping it (see
``DriftStatus.reference_lost``): nothing is watched until a reference is uploaded again."""


class Result(BaseModel):
    """Base of what a monitor publishes (here and in :mod:`monitors.fleet.views`): frozen, and read by sidecars of
    another release, so fields it does not know are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class DetectorVerdict(Result):
    name: str
    score: float
    threshold: float
    drift: bool
    since: float | None = None
    """Epoch seconds of the first drift verdict of the current run."""
    p_value: float | None = None
    carried: bool = False
    """The previous owner's verdict of the same calibration, carried over a takeover (see
    :attr:`DriftStatus.carried_over`): this owner has no result of the detector yet. Absent from monitors of earlier
    releases."""


class CarriedOver(Result):
    """What a new owner carried over a takeover from the owner before it (``monitors.fleet.carried``)."""

    owner: str
    """The previous owner, whose verdicts (and ``since``) are shown until this owner's own replace them."""
    updated_at: float
    """When the previous owner last stored them (epoch seconds, Redis's clock)."""
    examined: int
    """Records the detectors of this calibration had examined before this owner took over (in ``examined``)."""


class DriftStatus(Result):
    """The latest verdicts of a model's detectors, fed by every replica of the fleet."""

    v: int = FORMAT_VERSION
    model: str
    state: str
    """``warming_up``, ``calibrating`` or ``monitoring``; ``reference_lost`` (:data:`REFERENCE_LOST`) while the
    uploaded reference Redis lost waits to be uploaded again."""
    reference_source: str | None = None
    """What the detectors' reference is (or, warming up or calibrating, will be): ``upload:<id>`` (an uploaded
    reference) or ``warmup`` (the first ``reference_events`` records of traffic). ``None`` from monitors of earlier
    releases."""
    reference_lost: str | None = None
    """Set when Redis lost the model's drift reference and calibration (restarted empty, flushed) and no live monitor
    had kept them to store back: what was lost and what happens now (an upload is waited for; a warm-up is collected
    anew). Cleared once a calibration is stored again."""
    detectors: tuple[DetectorVerdict, ...] = ()
    calibration_error: str | None = None
    warmup_collected: int | None = None
    """While ``warming_up``: records collected for the reference so far (``None`` in the other states, and from
    monitors of earlier releases)."""
    warmup_needed: int | None = None
    """While ``warming_up``: records the reference takes (``VAI_DRIFT__REFERENCE_EVENTS``)."""
    reference_rows: int | None = None
    """Rows of the reference as handed to the monitor (uploaded, or collected in the warm-up), copies included;
    ``None`` while ``warming_up``, from an owner that adopted the stored calibration (the state does not keep the
    count), and from monitors of earlier releases."""
    online_reference_rows: int | None = None
    """Reference rows the online detector's verdicts rest on: those it compares each window against, after PCA's
    share (copies kept; LSDD one per distinct embedding), the ``max_reference`` subsample and the rows held out to
    calibrate it (122 of a 449-row upload of the digits). ``None`` before ``monitoring``, without an online
    detector, and from monitors of earlier releases."""
    examined: int = 0
    """Records the detectors have examined (or the warm-up collected; not those skipped, e.g. while calibrating)
    since this owner took the model, plus, when it carried the previous owner's verdicts over
    (:attr:`carried_over`), those its predecessors had examined under the same calibration."""
    backlog: int = 0
    """Records published but not examined yet (in Redis and in the owner's buffer)."""
    oldest_waiting_s: float = 0.0
    """Age of the oldest record not examined yet; 0 when none waits."""
    owner: str
    updated_at: float
    carried_over: CarriedOver | None = None
    """Set when this owner adopted the stored calibration at a takeover and carried its predecessor's verdicts over:
    a detector it has no result of yet shows the predecessor's (``carried``), and an alarm that goes on keeps its
    ``since``. ``None`` otherwise, and from monitors of earlier releases."""


class Bin(Result):
    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


class SeriesQuality(Result):
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


class AccuracyEstimate(Result):
    """Estimated accuracy of one (model version, cohort slice) from its recent predictions alone (ATC, see
    :mod:`monitors.estimates`): an estimate, not a measurement."""

    version: str
    cohort: str
    estimated_accuracy: float
    predictions: int
    """Recent predictions, labelled or not, the estimate is the share of (those with confidence >= threshold)."""
    threshold: float
    fitted_on: int
    """Labelled predictions the threshold was fitted on."""
    fit_gap: float = 0.0
    """The estimate on those labelled predictions minus their measured accuracy (0 but for tied confidences);
    absent from reports of monitors older than the field."""
    source: Literal["labelled_window", "reference"] = "labelled_window"
    fitted_cohort: str
    """Cohort slice the threshold was fitted on: this one, or ``all`` when this one has too few labels."""


class TemperatureScaling(Result):
    """What one temperature ``T`` fitted on a version's labelled window would do (see :mod:`monitors.temperature`)."""

    version: str
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    count: int
    """Labelled probability vectors of the version's window (cohort ``all``) the fit used."""


class QualityReport(Result):
    v: int = FORMAT_VERSION
    model: str
    window_s: float
    series: tuple[SeriesQuality, ...] = ()
    estimates: tuple[AccuracyEstimate, ...] = ()
    """Per (version, cohort) with enough labels to fit on and recent predictions to estimate from."""
    temperature: tuple[TemperatureScaling, ...] = ()
    """Per version whose labelled window holds enough probability vectors."""
    versions: tuple[str, ...] | None = None
    """The versions the owner has seen in the model's predictions or labels (and those its predecessors' reports
    named), sorted: at most ``VAI_MAX_VERSIONS_PER_MODEL``, those past it count as ``__other__``. A version seen
    without labels yet is here and in no series, so a sidecar tells it from a typo. ``None`` from monitors of earlier
    releases, which did not say: every version is then taken as known (an added field, read by old and new sidecars
    alike, so ``v`` stays 1)."""
    owner: str
    updated_at: float

    def chosen(self, *, version: str | None = None, cohort: str | None = None) -> QualityReport:
        """The report narrowed to a version and/or a cohort (``None``: all); temperatures are per version only.
        Series without labelled predictions are left out."""

        def kept(item: SeriesQuality | AccuracyEstimate) -> bool:
            return (version is None or item.version == version) and (cohort is None or item.cohort == cohort)

        return self.model_copy(
            update={
                "series": tuple(s for s in self.series if kept(s) and s.count),
                "estimates": tuple(e for e in self.estimates if kept(e)),
                "temperature": tuple(t for t in self.temperature if version is None or t.version == version),
            }
        )
