"""Turn a drift monitor and labelled windows into the typed results the sidecars serve."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from monitors.cohorts import ALL
from monitors.collector import SeriesFigures
from monitors.drift.monitor import DriftMonitor
from monitors.estimates import MIN_LABELLED, estimate_cohorts
from monitors.fleet.carried import CarriedVerdicts, verdict
from monitors.fleet.results import (
    REFERENCE_LOST,
    AccuracyEstimate,
    Bin,
    DriftStatus,
    QualityReport,
    SeriesQuality,
    TemperatureScaling,
)
from monitors.prediction_window import ConfidenceSnapshot
from monitors.temperature import temperature_of
from monitors.window import SeriesSnapshot


def drift_status(
    model: str,
    monitor: DriftMonitor,
    *,
    examined: int,
    backlog: int,
    waiting_s: float,
    owner: str,
    state: str | None = None,
    source: str | None = None,
    lost: str | None = None,
    now_s: float | None = None,
    carried: CarriedVerdicts | None = None,
) -> DriftStatus:
    """``state``: the monitor's phase unless given (as read before its state was stored, or ``reference_lost``);
    ``source`` and ``lost``: see :class:`DriftStatus`. ``now_s``: Redis's clock, which readers on other hosts compare
    ``updated_at`` with (this host's when not given). ``carried``: the previous owner's verdicts, carried over a
    takeover; ``examined`` counts this owner's records only."""
    collected, needed = monitor.warmup_progress or (None, None)
    if state == REFERENCE_LOST:
        collected = needed = None
    own = monitor.results()
    return DriftStatus(
        model=model,
        state=state or monitor.phase.value,
        reference_source=source,
        reference_lost=lost,
        detectors=tuple(verdict(r) for r in own) if carried is None else carried.merge(own),
        calibration_error=monitor.calibration_error,
        warmup_collected=collected,
        warmup_needed=needed,
        reference_rows=monitor.reference_rows,
        online_reference_rows=monitor.online_reference_rows,
        examined=examined + (0 if carried is None else carried.examined),
        backlog=backlog,
        oldest_waiting_s=waiting_s,
        owner=owner,
        updated_at=time.time() if now_s is None else now_s,
        carried_over=None if carried is None else carried.over,
    )


def series_quality(figures: SeriesFigures) -> SeriesQuality:
    calibration = figures.calibration
    accuracy = figures.quality.accuracy
    return SeriesQuality(
        version=figures.key.version,
        cohort=figures.key.cohort,
        count=calibration.count,
        ece=calibration.ece,
        mce=calibration.mce,
        brier_score=calibration.brier_score,
        brier_count=calibration.brier_count,
        accuracy=accuracy.value,
        accuracy_lower=accuracy.lower,
        accuracy_upper=accuracy.upper,
        bins=tuple(
            Bin(
                lower=b.lower,
                upper=b.upper,
                count=b.count,
                mean_confidence=b.mean_confidence,
                accuracy=b.accuracy,
            )
            for b in calibration.bins
        ),
    )


def accuracy_estimates(
    snapshots: Sequence[SeriesSnapshot], recent: Sequence[ConfidenceSnapshot], *, min_labelled: int = MIN_LABELLED
) -> tuple[AccuracyEstimate, ...]:
    """ATC estimates of one model's (version, cohort) slices from its labelled windows and recent predictions."""
    found = estimate_cohorts(
        {(s.key.version, s.key.cohort): s.records for s in snapshots},
        {(r.key.version, r.key.cohort): r.confidence for r in recent},
        min_labelled=min_labelled,
    )
    return tuple(
        AccuracyEstimate(
            version=e.version,
            cohort=e.cohort,
            estimated_accuracy=e.estimated_accuracy,
            predictions=e.predictions,
            threshold=e.fit.threshold,
            fitted_on=e.fit.fitted_on,
            fit_gap=e.fit.fit_gap,
            fitted_cohort=e.fitted_cohort,
        )
        for e in found
    )


def temperature_scaling(
    snapshots: Sequence[SeriesSnapshot], *, min_labelled: int = MIN_LABELLED
) -> tuple[TemperatureScaling, ...]:
    """The temperature of each version, fitted on its labelled window (cohort ``all``)."""
    scaled = []
    for snapshot in snapshots:
        fit = temperature_of(snapshot.records, min_labelled=min_labelled) if snapshot.key.cohort == ALL else None
        if fit is not None:
            scaled.append(
                TemperatureScaling(
                    version=snapshot.key.version,
                    temperature=fit.temperature,
                    ece_before=fit.ece_before,
                    ece_after=fit.ece_after,
                    nll_before=fit.nll_before,
                    nll_after=fit.nll_after,
                    count=fit.count,
                )
            )
    return tuple(scaled)


def quality_report(
    model: str,
    snapshots: Sequence[SeriesSnapshot],
    *,
    window_s: float,
    owner: str,
    recent: Sequence[ConfidenceSnapshot] = (),
    min_labelled: int = MIN_LABELLED,
    figures: Sequence[SeriesFigures] | None = None,
    versions: Iterable[str] | None = None,
) -> QualityReport:
    """The report of one model: ``snapshots`` are its labelled windows, ``recent`` its recent predictions,
    ``figures`` those of ``snapshots`` when they are already computed, ``versions`` those seen (``None``: not
    said, as by a monitor of an earlier release)."""
    if figures is None:
        figures = [SeriesFigures.of(s) for s in snapshots]
    return QualityReport(
        model=model,
        window_s=window_s,
        series=tuple(series_quality(f) for f in figures),
        estimates=accuracy_estimates(snapshots, recent, min_labelled=min_labelled),
        temperature=temperature_scaling(snapshots, min_labelled=min_labelled),
        versions=None if versions is None else tuple(sorted(versions)),
        owner=owner,
        updated_at=time.time(),
    )
