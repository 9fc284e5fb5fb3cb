"""Which drift monitor an owner starts a model with, and how its calibrated state is shared.

The calibrated state (PCA, reference, thresholds; JSON, no pickle) is stored under
``vai:drift:{model}`` with ``vai:drift-version:{model}`` naming what it was calibrated on: the
id of an uploaded reference, or ``warmup-…`` for a reference gathered from traffic. A new owner
adopts a stored state that matches the newest reference without recalibrating, when its settings
resolved on that reference (``DriftConfig.resolved``: the automatic ``steady_steps_per_ert``) are the
stored ones. The stored settings are always resolved (an ``int`` there, as the previous release wrote
and reads it), so a state of the previous release's default is adopted where the build is the same.
Without a state or an uploaded reference, the owner resumes the warm-up its predecessor stored
(:mod:`monitors.fleet.warmup_store`), or its own from before it lost the model, whichever is further.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from common import keys
from common.redis import text
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.states import MonitorState
from monitors.drift.warmup import WarmupMark
from monitors.fleet.lease import Leases
from monitors.fleet.references import ReferenceStore
from monitors.fleet.warmup_store import WarmupStore

log = logging.getLogger(__name__)

WARMUP_VERSION = "warmup-"
"""Prefix of the version of a state calibrated on a warm-up (``reference_events`` events of traffic)."""


@dataclass(slots=True)
class Started:
    monitor: DriftMonitor
    built_from: str | None
    """Reference id the monitor calibrates (or was calibrated) on; ``None`` for a warm-up."""
    stored: bool
    """Whether its calibrated state is already in Redis."""
    resumed: WarmupMark | None = None
    """What of its warm-up is in Redis already: the stored warm-up it resumed."""


class DriftStates:
    def __init__(self, redis: Redis, leases: Leases, *, config: DriftConfig, metrics: DriftMetrics) -> None:
        self._redis = redis
        self._leases = leases
        self._config = config
        self._metrics = metrics
        self.references = ReferenceStore(redis)
        self.warmups = WarmupStore(redis, leases)

    async def start(self, model: str, *, warm: DriftMonitor | None = None) -> Started:
        """The monitor a new owner runs: adopted, calibrating on the newest reference, or warming up (resuming
        the warm-up stored in Redis, or ``warm``, this process's warm-up of the model from before it lost it, when
        its settings are ours: whichever holds more rows)."""
        reference_id = await self.references.latest_id(model)
        version = text(await self._redis.get(keys.drift_version(model)))
        body = await self._redis.get(keys.drift_state(model))
        if body is not None and version is not None and (reference_id is None or version == reference_id):
            try:
                state = MonitorState.model_validate_json(body)
            except ValueError as error:
                log.error("ignoring unreadable drift state of %s: %s", model, error)
            else:
                rows = await self._rows(model, version)
                if state.config == self._resolved(rows):
                    log.info("drift monitor of %s adopted from Redis (%s), no recalibration", model, version)
                    # Rebuilding the detectors is CPU work (~0.1 s for a 5,000-row reference's state): off the loop
                    # that renews the leases, as a take-over adopts every model it takes.
                    monitor = await asyncio.to_thread(
                        DriftMonitor.from_state, state, metrics=self._metrics, reference_rows=rows
                    )
                    return Started(monitor, version, stored=True)
                log.warning("drift settings of %s changed since its calibration: calibrating afresh", model)
        if reference_id is not None:
            return await self.from_reference(model)
        return await self._warm_up(model, warm)

    async def from_reference(self, model: str) -> Started:
        stored = await self.references.get(model)
        if stored is None:
            return Started(DriftMonitor(model=model, config=self._config, metrics=self._metrics), None, stored=False)
        monitor = DriftMonitor(model=model, config=self._config, metrics=self._metrics, reference=stored.reference)
        return Started(monitor, stored.id, stored=False)

    async def store(self, model: str, started: Started) -> bool:
        """Share a calibrated state, if this process still owns the model."""
        version = started.built_from or f"{WARMUP_VERSION}{uuid.uuid4().hex}"
        state = started.monitor.export_state().model_dump_json()
        written = await self._leases.set_if_owner(
            model, {keys.drift_state(model): state, keys.drift_version(model): version}
        )
        if written:
            started.built_from, started.stored = version, True
            log.info("drift monitor of %s calibrated; state stored (%s)", model, version)
        return written

    async def _warm_up(self, model: str, warm: DriftMonitor | None) -> Started:
        own = warm.warmup_progress if warm is not None and warm.config == self._config else None
        stored = await self.warmups.load(model, max_rows=self._config.reference_events)
        wanted = self._config.reference_events
        if stored is not None and (own is None or len(stored) >= own[0]):
            monitor = DriftMonitor(model=model, config=self._config, metrics=self._metrics)
            resumed = monitor.resume_warmup(stored)
            log.info(
                "drift monitor of %s resumes the warm-up stored in Redis (%d of %d events)", model, len(stored), wanted
            )
            return Started(monitor, None, stored=False, resumed=resumed)
        if warm is not None and own is not None:
            log.info("drift monitor of %s resumes its warm-up (%d of %d events)", model, own[0], wanted)
            return Started(warm, None, stored=False)
        return Started(DriftMonitor(model=model, config=self._config, metrics=self._metrics), None, stored=False)

    async def _rows(self, model: str, version: str) -> int | None:
        """Rows of the reference named ``version``: ``reference_events`` for a warm-up, the stored reference's for
        an upload; ``None`` when that reference is no longer stored (a newer one replaced it meanwhile)."""
        if version.startswith(WARMUP_VERSION):
            return self._config.reference_events  # a warm-up collects exactly that many
        stored = await self.references.size(model)
        return stored[1] if stored is not None and stored[0] == version else None

    def _resolved(self, rows: int | None) -> DriftConfig | None:
        """Our settings as a calibration on a reference of ``rows`` rows resolves them; ``None`` when its size is
        not known (the reference is no longer stored)."""
        if self._config.steady_steps_per_ert is not None:
            return self._config  # nothing depends on the reference
        return None if rows is None else self._config.resolved(rows)
