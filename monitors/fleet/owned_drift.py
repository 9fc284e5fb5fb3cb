"""The drift monitor of an owned model: started, kept to what Redis says it is, its warm-up copied to Redis."""

from __future__ import annotations

import logging

from common import keys
from common.redis import text
from monitors.drift.buffer import IngestBuffer
from monitors.drift.monitor import DriftMonitor
from monitors.fleet.carried import CarriedVerdicts, load
from monitors.fleet.context import OwnerContext
from monitors.fleet.drift_started import UPLOAD, Kept, Started
from monitors.fleet.warmup_store import WarmupCopy

log = logging.getLogger(__name__)


class OwnedDrift:
    """Runs the model's drift monitor on the drift runner over ``buffer``: the one Redis holds (or a warm-up this
    process kept, or its own calibration stored back), followed as uploads and stored states change."""

    def __init__(
        self,
        model: str,
        context: OwnerContext,
        *,
        buffer: IngestBuffer,
        warm: DriftMonitor | None = None,
        kept: Kept | None = None,
    ) -> None:
        self.model = model
        self._context = context
        self._buffer = buffer
        self._warm = warm
        """A warm-up this process collected before it lost the model, resumed unless a state was stored since."""
        self._kept = kept
        """This process's calibration of the model from before it gave it up, stored back if Redis lost it."""
        self._looked_at: str | None = None
        """The stored state's version last looked at while warming up (a state stored back after Redis lost it)."""
        self._drift: Started | None = None
        self.carried: CarriedVerdicts | None = None
        """The previous owner's verdicts, carried over when this process adopted its calibration."""
        self._warmup_copy = WarmupCopy(model, context.states.warmups)
        """The drift warm-up as stored in Redis, for the next owner should this process die."""

    async def start(self) -> None:
        self._looked_at = text(await self._context.redis.get(keys.drift_version(self.model)))
        self._drift = await self._context.states.start(self.model, warm=self._warm, kept=self._kept)
        self._warm = self._kept = None
        await self._carry(self._drift)
        self._watch(self._drift)

    def stop(self) -> None:
        self._context.runner.remove(self.model)

    @property
    def warming_up(self) -> DriftMonitor | None:
        """The drift monitor, while it collects a warm-up reference and has collected some of it."""
        monitor = self._drift.monitor if self._drift is not None else None
        progress = monitor.warmup_progress if monitor is not None else None
        return monitor if progress is not None and progress[0] > 0 else None

    @property
    def calibrated(self) -> Kept | None:
        """The calibrated drift monitor (with its reference) to keep when the model is given up; ``None`` before."""
        return None if self._drift is None else self._drift.kept()

    async def current(self) -> Started | None:
        """The drift monitor to report on, after following what Redis now says it is; ``None`` before :meth:`start`."""
        if self._drift is None:
            return None
        await self._follow(self._drift)
        return self._drift

    async def store_warmup(self) -> None:
        """A task of its own: Redis refusing the warm-up's writes delays nothing else (its rows wait in memory)."""
        drift = self._drift
        if drift is not None:
            keep = not drift.stored and drift.built_from is None
            await self._warmup_copy.sync(drift.monitor, resumed=drift.resumed, keep=keep)

    async def read_reference(self, drift: Started) -> None:
        """Read the uploaded reference of an adopted state once, to keep (see :attr:`calibrated`)."""
        if drift.reference is None and drift.stored and drift.source.startswith(UPLOAD):
            stored = await self._context.states.references.get(self.model)
            if stored is not None and stored.id == drift.built_from:
                drift.reference = stored

    async def _follow(self, drift: Started) -> None:
        """Run what Redis now says the model's drift monitor is: a newer upload, a calibration stored back after Redis
        lost it, or, once no reason is left to run the settings stored with the state, a calibration under ours."""
        states = self._context.states
        started = await self._newer(drift)
        config = drift.monitor.config
        if started is None and drift.foreign and states.keeps_stored(config, drift.rows, drift.dims) is None:
            log.warning(
                "drift monitor of %s ran the settings stored with its state (%s); no longer: recalibrating under "
                "this monitor's",
                self.model,
                drift.foreign,
            )
            started = await states.recalibrate(self.model)
        if started is not None:
            self._drift = started
            self._context.drift_metrics.clear_verdicts(self.model)  # of the replaced calibration
            await self._carry(started)
            self._watch(started)

    async def _newer(self, drift: Started) -> Started | None:
        states = self._context.states
        latest = await states.references.latest_id(self.model)
        if latest is not None and latest != drift.built_from:
            log.info("drift monitor of %s follows the uploaded reference %s", self.model, latest)
            return await states.start(self.model)
        if drift.stored or drift.built_from is not None:
            return None
        version = text(await self._context.redis.get(keys.drift_version(self.model)))
        if version is None or version == self._looked_at:
            return None
        self._looked_at = version  # warming up (or waiting) while a state was stored: stored back, say
        started = await states.start(self.model, warm=drift.monitor if drift.watching else None)
        return None if started.monitor is drift.monitor else started

    async def _carry(self, drift: Started) -> None:
        """Carry the previous owner's verdicts over when ``drift`` runs the stored calibration they are of
        (:mod:`monitors.fleet.carried`); none for any other monitor."""
        carried = None
        if drift.stored and drift.built_from is not None and drift.watching:
            carried = await load(self._context.redis, self.model, calibration=drift.built_from)
        self.carried = carried
        self._context.drift_metrics.carry(self.model, carried)

    def _watch(self, drift: Started) -> None:
        if drift.watching:
            self._context.runner.add(monitor=drift.monitor, buffer=self._buffer)
        else:
            self._context.runner.remove(self.model)
