"""The monitoring routes' typed answers serialise as the hand-built bodies they replaced."""

from __future__ import annotations

import orjson

from monitors.fleet.results import DetectorVerdict, DriftStatus, QualityReport, SeriesQuality
from service.monitoring.public import CalibrationPublic, DriftStatusPublic


def _series(version: str) -> SeriesQuality:
    return SeriesQuality(
        version=version,
        cohort="all",
        count=10,
        ece=0.1,
        mce=0.2,
        brier_score=None,
        brier_count=0,
        accuracy=0.9,
        accuracy_lower=0.8,
        accuracy_upper=0.95,
    )


def test_drift_status_public_is_the_published_status_with_its_age() -> None:
    verdict = DetectorVerdict(name="mmd", score=0.5, threshold=0.4, drift=True, since=3.0)
    status = DriftStatus(model="m", state="drift", detectors=(verdict,), owner="o", updated_at=12.5)
    public = DriftStatusPublic.of(status, 1.25)
    assert orjson.loads(public.to_json()) == orjson.loads(orjson.dumps({**status.model_dump(), "age_s": 1.25}))


def test_calibration_before_any_report_has_no_window_or_time() -> None:
    body = orjson.loads(CalibrationPublic.of("m", None).to_json())
    assert body == {"model": "m", "series": [], "estimates": [], "temperature": []}


def test_calibration_of_a_report_has_its_figures() -> None:
    report = QualityReport(model="m", window_s=60.0, series=(_series("v1"),), owner="o", updated_at=7.0)
    body = orjson.loads(CalibrationPublic.of("m", report.chosen()).to_json())
    shown = {"series", "estimates", "temperature", "window_s", "updated_at"}
    assert body == orjson.loads(orjson.dumps({"model": "m", **report.model_dump(include=shown)}))
