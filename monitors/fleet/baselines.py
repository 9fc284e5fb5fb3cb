"""What a monitor knows of the models' drift baselines beyond Redis, to give them back should Redis lose its data.

Each monitor keeps in memory the calibrated monitor, and its uploaded reference, of the models it gave up or lost
(as many as it has owned at once), and notices the loss by ``vai:epoch`` changing. It then stores back what it kept
(``DriftStates.restore``: only where Redis holds neither a state nor a reference, so nothing newer is replaced), and
marks the baselines nobody kept as lost (``DriftStates.mark_lost``; see :mod:`monitors.fleet.drift_state`).
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

from common import keys
from common.redis import execute, text
from monitors.fleet.drift_started import UPLOAD, WARMUP, WARMUP_VERSION, Kept, LostBaseline
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases

log = logging.getLogger(__name__)

LOOK_EVERY_S = 5.0
"""How often a monitor notes which models have a baseline (two reads per monitored model): a baseline that came in
the last few seconds before Redis lost its data may go unnoticed (its model then warms up as a new one)."""


class Baselines:
    """What this process knows of the models' drift baselines beyond Redis, to give them back should Redis lose
    its data: the calibrated monitors (with their references) of models it gave up or lost, at most ``limit`` (the
    most models it has owned at once), and which models had one, as last seen."""

    def __init__(self, redis: Redis, states: DriftStates, leases: Leases) -> None:
        self._redis = redis
        self._states = states
        self._leases = leases
        self._kept: dict[str, Kept] = {}
        self.limit = 1
        self._seen: dict[str, str] = {}
        """Model -> ``upload:<id>`` or ``warmup``: its baseline as the last round saw it in Redis."""
        self._epoch: str | None = None
        self._look_at = 0.0
        """When (monotonic) to look at the models' baselines next."""

    @property
    def seen(self) -> dict[str, str]:
        """Model -> its baseline (``upload:<id>`` or ``warmup``) as the last round saw it in Redis."""
        return dict(self._seen)

    def keep(self, model: str, kept: Kept) -> None:
        self._kept.pop(model, None)
        self._kept[model] = kept
        while len(self._kept) > self.limit:  # the longest kept go first
            del self._kept[next(iter(self._kept))]

    def take(self, model: str) -> Kept | None:
        return self._kept.pop(model, None)

    async def round(self, models: list[str]) -> None:
        """Once per lease round, before taking models: store back what Redis lost, then look at it again."""
        epoch = await self._leases.epoch()
        if self._epoch is not None and epoch != self._epoch:
            await self._recover(self._epoch, epoch)  # should it fail, the next round tries again
            self._epoch = epoch
            return  # ``models`` was read before the models were stored back: look next round
        self._epoch = epoch
        if time.monotonic() >= self._look_at:
            self._look_at = time.monotonic() + LOOK_EVERY_S
            await self._look(models)

    async def _recover(self, previous: str, epoch: str) -> None:
        log.warning(
            "Redis lost its data (%s was %s, now %s: restarted empty, or flushed): storing back the drift "
            "calibrations and references of %d models this monitor kept",
            keys.EPOCH,
            previous,
            epoch,
            len(self._kept),
        )
        restored = [model for model, kept in list(self._kept.items()) if await self._states.restore(model, kept)]
        at = time.time()
        lost = [
            model
            for model, source in sorted(self._seen.items())
            if model not in restored and await self._states.mark_lost(model, LostBaseline(source=source, at=at))
        ]
        log.warning("drift baselines stored back: %s; lost (no monitor kept them): %s", restored, lost)
        self._seen = {}

    async def _look(self, models: list[str]) -> None:
        """Note which models have a baseline, and forget the kept calibrations Redis has a newer one of (or that
        are no longer monitored)."""
        names = sorted(set(models) | set(self._kept))
        pipe = self._redis.pipeline(transaction=False)
        for model in names:
            pipe.get(keys.drift_version(model))
            pipe.hget(keys.drift_reference(model), "id")
        answers = [text(a) for a in await execute(pipe)] if names else []
        monitored, seen = set(models), {}
        for model, version, reference_id in zip(names, answers[::2], answers[1::2], strict=True):
            if reference_id is not None:
                seen[model] = f"{UPLOAD}{reference_id}"
            elif version is not None:
                seen[model] = WARMUP if version.startswith(WARMUP_VERSION) else f"{UPLOAD}{version}"
            kept = self._kept.get(model)
            newer = any(v is not None and v != kept.version for v in (version, reference_id)) if kept else False
            if kept is not None and (newer or model not in monitored):
                del self._kept[model]
        self._seen = {model: source for model, source in seen.items() if model in monitored}
