"""What an owner's drift monitor is started as, kept as and lost as: :class:`Started` (the monitor, with what it
calibrates on), :class:`Kept` (a calibration held in memory once the model is given up), :class:`LostBaseline`
(the record of a baseline Redis lost, ``keys.drift_lost``), and the prefixes naming a state's version and source.
:class:`~monitors.fleet.drift_state.DriftStates` decides which one a model starts with."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from monitors.drift.monitor import DriftMonitor, Phase
from monitors.drift.warmup import WarmupMark
from monitors.fleet.references import StoredReference

WARMUP_VERSION = "warmup-"
"""Prefix of the version of a state calibrated on a warm-up (``reference_events`` events of traffic)."""
WARMUP = "warmup"
"""The ``reference_source`` of a monitor whose reference is (or will be) a warm-up."""
UPLOAD = "upload:"
"""Prefix of the ``reference_source`` of a monitor calibrated (or calibrating) on an uploaded reference."""


class LostBaseline(BaseModel):
    """A model's drift baseline that Redis lost and no live monitor kept (``keys.drift_lost``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: Literal[1] = 1
    source: str
    """``upload:<id>`` or ``warmup``: what the model's drift monitor was calibrated (or calibrating) on."""
    at: float
    """When a monitor found Redis had lost its data (epoch seconds)."""

    @property
    def uploaded(self) -> bool:
        return self.source.startswith(UPLOAD)

    def note(self, model: str) -> str:
        """What ``/drift`` says of it."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        lost = f"Redis lost its data (restarted empty or flushed; noticed {when}), and no live monitor had kept "
        if self.uploaded:
            return (
                f"{lost}the uploaded reference {self.source.removeprefix(UPLOAD)} of this model and its calibration: "
                f"drift is not watched until a reference is uploaded again (PUT /v1/models/{model}/reference)"
            )
        return (
            f"{lost}the warm-up reference of this model and its calibration: a new warm-up on current traffic "
            "becomes the reference (if the model may have drifted meanwhile, upload a reference instead)"
        )


@dataclass(frozen=True, slots=True)
class Kept:
    """A calibrated drift monitor of a model this process no longer owns, with what it was calibrated on."""

    monitor: DriftMonitor
    version: str
    reference: StoredReference | None
    """The uploaded reference (``None`` for a warm-up: its rows are in the state)."""


@dataclass(slots=True)
class Started:
    monitor: DriftMonitor
    built_from: str | None
    """Reference id the monitor calibrates (or was calibrated) on; ``None`` for a warm-up."""
    stored: bool
    """Whether its calibrated state is already in Redis."""
    resumed: WarmupMark | None = None
    """What of its warm-up is in Redis already: the stored warm-up it resumed."""
    reference: StoredReference | None = None
    """The uploaded reference it was built from, once read (kept to store back should Redis lose it)."""
    foreign: str | None = None
    """Why it runs the settings stored with the state rather than this process's (``None``: it runs ours)."""
    rows: int | None = None
    """Rows of the reference, when known (for :meth:`~monitors.fleet.drift_state.DriftStates.keeps_stored`)."""
    dims: int | None = None
    """Width of the uploaded reference's embeddings, when known."""
    lost: LostBaseline | None = None
    """The baseline Redis lost, until the model has a stored state again."""

    @property
    def watching(self) -> bool:
        """Whether the monitor takes the model's records: not while its uploaded reference is lost."""
        return self.lost is None or not self.lost.uploaded or self.built_from is not None

    @property
    def source(self) -> str:
        """``upload:<id>``, or ``warmup``; the lost reference's while waiting for it."""
        if not self.watching and self.lost is not None:
            return self.lost.source
        if self.built_from is None or self.built_from.startswith(WARMUP_VERSION):
            return WARMUP
        return f"{UPLOAD}{self.built_from}"

    def kept(self) -> Kept | None:
        """What to keep of it when the model is given up: a stored calibration (and its reference, once read)."""
        if not self.stored or self.built_from is None or self.monitor.phase is not Phase.MONITORING:
            return None
        if self.reference is None and not self.built_from.startswith(WARMUP_VERSION):
            return None  # its reference not read yet: it could not be stored back whole
        return Kept(self.monitor, self.built_from, self.reference)
