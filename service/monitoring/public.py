"""What the monitoring routes answer, as typed results named by direction (``…Public``, ``…Accepted``): each
serialises itself, and the routes declare them so that OpenAPI documents their bodies. No HTTP here."""

from __future__ import annotations

import re
from typing import Literal

import orjson
from pydantic import BaseModel, Field

from monitors.fleet.results import (
    AccuracyEstimate,
    DriftStatus,
    QualityReport,
    SeriesQuality,
    TemperatureScaling,
)


class ReferenceAccepted(BaseModel):
    """The answer to an accepted drift reference (202): stored, and waiting for the owning monitor to calibrate."""

    model: str
    state: Literal["calibrating"] = "calibrating"
    rows: int
    dims: int
    """Values per embedding row (0: a reference of probabilities only)."""
    outputs: bool
    """Whether it carries the model's outputs (``probabilities``) too."""


class DriftStatusPublic(DriftStatus):
    """The drift status as the owning monitor published it, with its age."""

    age_s: float
    """Seconds since the owner published it, by Redis's clock."""

    @classmethod
    def of(cls, status: DriftStatus, age_s: float) -> DriftStatusPublic:
        return cls.model_validate({**dict(status), "age_s": age_s})  # its parts as read: not validated again

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


_FIGURES = frozenset({"series", "estimates", "temperature", "window_s", "updated_at"})


class CalibrationPublic(BaseModel):
    """The calibration of one model, narrowed to a version and/or cohort; empty lists before any labels."""

    model: str
    series: tuple[SeriesQuality, ...] = ()
    estimates: tuple[AccuracyEstimate, ...] = ()
    temperature: tuple[TemperatureScaling, ...] = ()
    window_s: float | None = Field(default=None, description="Absent until the monitor has published a report.")
    updated_at: float | None = Field(default=None, description="Absent until the monitor has published a report.")

    @classmethod
    def of(cls, model: str, chosen: QualityReport | None) -> CalibrationPublic:
        """``chosen`` (:meth:`QualityReport.chosen`) as answered for ``model``, or the empty answer."""
        if chosen is None:
            return cls(model=model)
        return cls.model_validate({"model": model, **{name: getattr(chosen, name) for name in _FIGURES}})

    def to_json(self) -> bytes:
        """Without ``window_s`` and ``updated_at`` when no report was published (as ever: absent, not null)."""
        absent = {"window_s", "updated_at"} if self.updated_at is None else None
        return orjson.dumps(self.model_dump(exclude=absent))


def newest(series: tuple[SeriesQuality, ...]) -> SeriesQuality:
    """The series of the newest version, as the overview page picks it (not the one with most labels: during a
    canary rollout that is the old version)."""
    version = max({s.version for s in series}, key=_version_order)
    return next(s for s in series if s.version == version)


def _version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Versions in natural order (``v2`` < ``v10``), as the viewer sorts them: the last is the newest."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.casefold()) for part in re.split(r"(\d+)", version))
