"""The writes of a model's drift state: its calibrated state, shared by the owner under its lease, and, once Redis
lost its data, a calibration stored back or the baseline marked lost, each only where Redis holds neither a state
nor a reference (what an owner stored meanwhile is newer). The rules of which state an owner runs are
:mod:`monitors.fleet.drift_state`'s."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis

from common import keys
from common.redis import execute, queue_script
from monitors.fleet.carried import StoredVerdicts
from monitors.fleet.drift_started import WARMUP_VERSION, Kept, LostBaseline, Started
from monitors.fleet.lease import Leases
from monitors.fleet.references import reference_fields

log = logging.getLogger(__name__)

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


class DriftStore:
    """What a monitor process writes of the models' drift states (fenced by its lease, or by Redis holding none)."""

    def __init__(self, redis: Redis, leases: Leases) -> None:
        self._redis = redis
        self._leases = leases

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

    async def _eval(self, script: str, names: list[str], args: list[bytes | str | int]) -> int:
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, script, names, args)
        (answer,) = await execute(pipe)
        return int(answer)
