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
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from common import keys
from common.redis import execute, queue_script, text
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor, Phase
from monitors.drift.states import MonitorState
from monitors.drift.warmup import WarmupMark
from monitors.fleet.carried import StoredVerdicts
from monitors.fleet.lease import Leases
from monitors.fleet.references import ReferenceStore, StoredReference, reference_fields
from monitors.fleet.warmup_store import WarmupStore

log = logging.getLogger(__name__)

WARMUP_VERSION = "warmup-"
"""Prefix of the version of a state calibrated on a warm-up (``reference_events`` events of traffic)."""
WARMUP = "warmup"
"""The ``reference_source`` of a monitor whose reference is (or will be) a warm-up."""
UPLOAD = "upload:"
"""Prefix of the ``reference_source`` of a monitor calibrated (or calibrating) on an uploaded reference."""

_NEITHER = """
for i = 1, 3 do if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end end
"""
_RESTORE = (
    _NEITHER
    + """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
if #ARGV > 3 then redis.call('HSET', KEYS[3], unpack(ARGV, 4)) end
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('DEL', KEYS[5])
return 1
"""
)
"""Store back a state, its version and its reference (``ARGV[4..]``: field, value, ...), only where Redis holds none
of the three: what an owner stored meanwhile is newer."""
_MARK_LOST = (
    _NEITHER
    + """
return redis.call('SET', KEYS[4], ARGV[1], 'NX') and 1 or 0
"""
)


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
    """Rows of the reference, when known (for :meth:`DriftStates.keeps_stored`)."""
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


class DriftStates:
    def __init__(self, redis: Redis, leases: Leases, *, config: DriftConfig, metrics: DriftMetrics) -> None:
        self._redis = redis
        self._leases = leases
        self._config = config
        self._metrics = metrics
        self.references = ReferenceStore(redis)
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
        """Share a calibrated state, if this process still owns the model; with it, in the same call, an empty record
        of its verdicts (``monitors.fleet.carried``): verdicts of the state it replaces are never carried over."""
        version = started.built_from or f"{WARMUP_VERSION}{uuid.uuid4().hex}"
        state = started.monitor.export_state().model_dump_json()
        verdicts = StoredVerdicts(calibration=version, owner=self._leases.owner, updated_at=time.time())
        written = await self._leases.set_if_owner(
            model,
            {
                keys.drift_state(model): state,
                keys.drift_version(model): version,
                keys.drift_verdicts(model): verdicts.model_dump_json(),
            },
        )
        if written:
            started.built_from, started.stored, started.foreign, started.lost = version, True, None, None
            await self._redis.delete(keys.drift_lost(model))
            log.info("drift monitor of %s calibrated; state stored (%s)", model, version)
        return written

    async def restore(self, model: str, kept: Kept) -> bool:
        """Store ``kept`` back (state, version and reference) if Redis holds none of them; whether it did."""
        state = await asyncio.to_thread(lambda: kept.monitor.export_state().model_dump_json())  # off the lease loop
        fields = [] if kept.reference is None else [p for f in reference_fields(kept.reference).items() for p in f]
        names = [keys.drift_state(model), keys.drift_version(model), keys.drift_reference(model)]
        written = await self._eval(
            _RESTORE, [*names, keys.MONITORED_MODELS, keys.drift_lost(model)], [state, kept.version, model, *fields]
        )
        return bool(written)

    async def mark_lost(self, model: str, lost: LostBaseline) -> bool:
        """Say that ``model``'s baseline is lost, unless Redis holds a state or a reference of it (or says so)."""
        names = [
            keys.drift_state(model),
            keys.drift_version(model),
            keys.drift_reference(model),
            keys.drift_lost(model),
        ]
        return bool(await self._eval(_MARK_LOST, names, [lost.model_dump_json()]))

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

    async def _eval(self, script: str, names: list[str], args: list[bytes | str | int]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, script, names, args)
        (answer,) = await execute(pipe)
        return int(answer)


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
