"""Which drift monitor an owner starts a model with, and how its calibrated state is shared.

The calibrated state (PCA, reference, thresholds; JSON, no pickle) is stored under
``vai:drift:{model}`` with ``vai:drift-version:{model}`` naming what it was calibrated on: the
id of an uploaded reference, or ``warmup-…`` for a reference gathered from traffic. A new owner
adopts a stored state that matches the newest reference without recalibrating, when its settings
resolved on that reference (``DriftConfig.resolved``: the automatic ``steady_steps_per_ert``) are the
stored ones. The stored settings are always resolved (an ``int`` there, as the previous release wrote
and reads it), so a state of the previous release's default is adopted where the build is the same.

Settings changed since the calibration are normally a deliberate change, and the owner recalibrates
under its own. Two cases keep the stored state, under the settings stored with it (calibrated and
valid), logged: another live monitor still runs those settings (monitors of different settings side
by side, or a rolling restart half done: recalibrating at every hand-over would have them fight), or
the uploaded reference is too small for the owner's settings (recalibrating would only fail). The
owner looks again as the live monitors change (:meth:`DriftStates.keeps_stored`) and recalibrates
under its own settings once neither holds.

Without a state or an uploaded reference, the owner resumes the warm-up its predecessor stored
(:mod:`monitors.fleet.warmup_store`), or its own from before it lost the model, whichever is further.

Redis may lose everything (restarted without persistence, flushed). Each monitor keeps in memory the
calibrated monitor, and its uploaded reference, of the models it gave up or lost (``monitors.fleet.baselines``,
as many as it has owned at once), and notices the loss by ``vai:epoch`` changing. It then stores back
what it kept (only where Redis holds neither a state nor a reference, so nothing newer is replaced),
and marks the baselines nobody kept as lost (``vai:drift-lost:{model}``): an owner then waits for an
uploaded reference again instead of warming up on today's traffic (``reference_lost`` on ``/drift``),
or, for a warm-up reference, collects a new one saying so.

What a start answers, and what is kept or marked lost, is in :mod:`monitors.fleet.drift_started`; the writes
(state, restore, lost mark) are in :mod:`monitors.fleet.drift_store`.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
from redis.asyncio import Redis

from common import keys
from common.redis import execute, text
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.states import MonitorState
from monitors.fleet.drift_started import WARMUP_VERSION, Kept, LostBaseline, Started
from monitors.fleet.drift_store import DriftStore
from monitors.fleet.lease import Leases
from monitors.fleet.references import ReferenceStore
from monitors.fleet.warmup_store import WarmupStore

log = logging.getLogger(__name__)


class DriftStates:
    def __init__(self, redis: Redis, leases: Leases, *, config: DriftConfig, metrics: DriftMetrics) -> None:
        self._redis = redis
        self._config = config
        self._metrics = metrics
        self.references = ReferenceStore(redis)
        self._store = DriftStore(redis, leases)
        self.warmups = WarmupStore(redis, leases)
        self.fleet: tuple[DriftConfig, ...] = ()
        """The drift settings of the live monitors, as the last lease round read them."""

    async def start(self, model: str, *, warm: DriftMonitor | None = None, kept: Kept | None = None) -> Started:
        """The monitor a new owner runs: adopted, calibrating on the newest reference, this process's ``kept``
        calibration stored back when Redis has neither a state nor a reference, waiting for a lost upload, or
        warming up (resuming the warm-up stored in Redis, or ``warm``, this process's warm-up of the model from
        before it lost it, when its settings are ours: whichever holds more rows)."""
        pipe = self._redis.pipeline(transaction=False)
        for key in (keys.drift_version(model), keys.drift_state(model), keys.drift_lost(model)):
            pipe.get(key)
        pipe.hget(keys.drift_reference(model), "id")
        version, body, lost_body, reference_id = (text(v) for v in await execute(pipe))
        started: Started | None = None
        if body is not None and version is not None and (reference_id is None or version == reference_id):
            started = await self._adopt(model, version, body)
        if started is None and reference_id is not None:
            started = await self.from_reference(model)
        if started is not None:
            if lost_body is not None:
                await self._redis.delete(keys.drift_lost(model))
            return started
        if body is None and version is None and kept is not None and await self.restore(model, kept):
            log.warning("Redis had lost the drift reference and state of %s: stored back from memory", model)
            return self._resumed(kept)
        lost = _lost(lost_body)
        if lost is not None and lost.uploaded:
            log.warning("drift monitor of %s not started: %s", model, lost.note(model))
            return Started(self._fresh(model), None, stored=False, lost=lost)
        started = await self._warm_up(model, warm)
        started.lost = lost
        return started

    async def from_reference(self, model: str) -> Started:
        stored = await self.references.get(model)
        if stored is None:
            return Started(self._fresh(model), None, stored=False)
        monitor = DriftMonitor(model=model, config=self._config, metrics=self._metrics, reference=stored.reference)
        return Started(monitor, stored.id, stored=False, reference=stored)

    async def recalibrate(self, model: str) -> Started:
        """Calibrate under this process's settings: on the uploaded reference, or a fresh warm-up."""
        if await self.references.latest_id(model) is not None:
            return await self.from_reference(model)
        return Started(self._fresh(model), None, stored=False)

    async def store(self, model: str, started: Started) -> bool:
        """Share a calibrated state, if this process still owns the model (:meth:`DriftStore.store
        <monitors.fleet.drift_store.DriftStore.store>`)."""
        return await self._store.store(model, started)

    async def restore(self, model: str, kept: Kept) -> bool:
        """Store ``kept`` back (state, version and reference) if Redis holds none of them; whether it did."""
        return await self._store.restore(model, kept)

    async def mark_lost(self, model: str, lost: LostBaseline) -> bool:
        """Say that ``model``'s baseline is lost, unless Redis holds a state or a reference of it (or says so)."""
        return await self._store.mark_lost(model, lost)

    def keeps_stored(self, config: DriftConfig, rows: int | None, dims: int | None) -> str | None:
        """Why a state calibrated with ``config`` (not ours) on a reference of ``rows`` (``dims``-d for an upload)
        is better run as it is than recalibrated under our settings; ``None`` when it is not."""
        if rows is None:
            return None
        if any(live.resolved(rows) == config for live in self.fleet):
            return "a live monitor runs those settings (monitors of different settings would recalibrate in turn)"
        least = None if dims is None else self._config.least_rows(dims)
        if least is not None and rows < least:
            return f"its reference has {rows} rows, fewer than the {least} this monitor's settings need"
        return None

    async def _adopt(self, model: str, version: str, body: str) -> Started | None:
        try:
            state = MonitorState.model_validate_json(body)
        except ValueError as error:
            log.error("ignoring unreadable drift state of %s: %s", model, error)
            return None
        rows, dims = await self._size(model, version, state.config)
        foreign, resolved = None, self._resolved(rows)
        if state.config != resolved:
            foreign = self.keeps_stored(state.config, rows, dims)
            if foreign is None:
                log.warning("drift settings of %s changed since its calibration: calibrating afresh", model)
                return None
            log.warning(
                "drift monitor of %s adopted from Redis (%s) with the settings stored with it, not this monitor's "
                "(%s): %s",
                model,
                version,
                differences(state.config, resolved or self._config),
                foreign,
            )
        else:
            log.info("drift monitor of %s adopted from Redis (%s), no recalibration", model, version)
        # Rebuilding the detectors is CPU work (~0.1 s for a 5,000-row reference's state): off the loop that renews
        # the leases, as a take-over adopts every model it takes.
        monitor = await asyncio.to_thread(DriftMonitor.from_state, state, metrics=self._metrics, reference_rows=rows)
        return Started(monitor, version, stored=True, foreign=foreign, rows=rows, dims=dims)

    def _resumed(self, kept: Kept) -> Started:
        """``kept`` running again; under settings not ours, as long as :meth:`keeps_stored` says so."""
        reference, config = kept.reference, kept.monitor.config
        rows = config.reference_events if reference is None else len(reference.reference)
        embeddings = None if reference is None else reference.reference.embeddings
        dims = None if embeddings is None else int(embeddings.shape[1])
        foreign = None
        if config != self._resolved(rows):
            foreign = self.keeps_stored(config, rows, dims) or "as it ran before Redis lost it"
        return Started(
            kept.monitor, kept.version, stored=True, reference=reference, foreign=foreign, rows=rows, dims=dims
        )

    def _fresh(self, model: str) -> DriftMonitor:
        return DriftMonitor(model=model, config=self._config, metrics=self._metrics)

    async def _warm_up(self, model: str, warm: DriftMonitor | None) -> Started:
        own = warm.warmup_progress if warm is not None and warm.config == self._config else None
        stored = await self.warmups.load(model, max_rows=self._config.reference_events)
        wanted = self._config.reference_events
        if stored is not None and (own is None or len(stored) >= own[0]):
            monitor = self._fresh(model)
            resumed = monitor.resume_warmup(stored)
            log.info(
                "drift monitor of %s resumes the warm-up stored in Redis (%d of %d events)", model, len(stored), wanted
            )
            return Started(monitor, None, stored=False, resumed=resumed)
        if warm is not None and own is not None:
            log.info("drift monitor of %s resumes its warm-up (%d of %d events)", model, own[0], wanted)
            return Started(warm, None, stored=False)
        return Started(self._fresh(model), None, stored=False)

    async def _size(self, model: str, version: str, stored: DriftConfig) -> tuple[int | None, int | None]:
        """Rows and width of the reference named ``version``: ``reference_events`` of the ``stored`` settings for a
        warm-up (it collects exactly that many; width not needed), the stored reference's for an upload; ``None``
        when that reference is no longer stored (a newer one replaced it meanwhile)."""
        if version.startswith(WARMUP_VERSION):
            return stored.reference_events, None
        size = await self.references.size(model)
        return (size[1], size[2]) if size is not None and size[0] == version else (None, None)

    def _resolved(self, rows: int | None) -> DriftConfig | None:
        """Our settings as a calibration on a reference of ``rows`` rows resolves them; ``None`` when its size is
        not known (the reference is no longer stored)."""
        if self._config.steady_steps_per_ert is not None:
            return self._config  # nothing depends on the reference
        return None if rows is None else self._config.resolved(rows)


def _lost(body: str | None) -> LostBaseline | None:
    if body is None:
        return None
    try:
        return LostBaseline.model_validate_json(body)
    except ValidationError:
        return None


def differences(stored: DriftConfig, ours: DriftConfig) -> str:
    """The settings where ``stored`` differs from ``ours``, as ``name=stored (ours: value)``."""
    a, b = stored.model_dump(), ours.model_dump()
    return ", ".join(f"{k}={a.get(k)} (ours: {b.get(k)})" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k))
