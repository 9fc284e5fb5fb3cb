"""Turn a drift monitor and labelled windows into the typed results the sidecars serve."""

from __future__ import annotations

import time
from collections.abc import Sequence

from monitors.calibration import calibration_of
from monitors.drift.monitor import DriftMonitor
from monitors.fleet.results import Bin, DetectorVerdict, DriftStatus, QualityReport, SeriesQuality
from monitors.quality import quality_of
from monitors.window import SeriesSnapshot


def drift_status(
    model: str, monitor: DriftMonitor, *, examined: int, backlog: int, waiting_s: float, owner: str
) -> DriftStatus:
    return DriftStatus(
        model=model,
        state=monitor.phase.value,
        detectors=tuple(
            DetectorVerdict(
                name=r.name, score=r.score, threshold=r.threshold, drift=r.drift, since=r.since, p_value=r.p_value
            )
            for r in monitor.results()
        ),
        calibration_error=monitor.calibration_error,
        examined=examined,
        backlog=backlog,
        oldest_waiting_s=waiting_s,
        owner=owner,
        updated_at=time.time(),
    )


def series_quality(snapshot: SeriesSnapshot) -> SeriesQuality:
    calibration = calibration_of(snapshot.records)
    accuracy = quality_of(snapshot.records).accuracy
    return SeriesQuality(
        version=snapshot.key.version,
        cohort=snapshot.key.cohort,
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


def quality_report(model: str, snapshots: Sequence[SeriesSnapshot], *, window_s: float, owner: str) -> QualityReport:
    return QualityReport(
        model=model,
        window_s=window_s,
        series=tuple(series_quality(s) for s in snapshots),
        owner=owner,
        updated_at=time.time(),
    )
