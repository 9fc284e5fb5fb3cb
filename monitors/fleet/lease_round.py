"""One round of a monitor process's leases, run every ``ttl / 3`` by :class:`~monitors.fleet.process.MonitorProcess`.

The round renews the leases held, drops the models whose lease it lost, renews the process's membership and
publishes its drift settings, gives one model back when it owns more than its share (so a newly started monitor
gets work), and tries to take unowned models up to its share. The renewal comes first and alone decides what is
lost: a full Redis refuses the membership's and the settings' writes (logged once, the round goes on) but renews
leases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from monitors.fleet.baselines import Baselines
from monitors.fleet.drift_state import DriftStates, differences
from monitors.fleet.lease import Leases, fair_share, parse_configs, strictest
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.owned_models import MAX_MODELS, OwnedModels
from monitors.fleet.settings import MonitorSettings

log = logging.getLogger(__name__)


class LeaseRound:
    """What a lease round reads and remembers from one round to the next, and the round itself (:meth:`tick`)."""

    def __init__(
        self,
        models: OwnedModels,
        *,
        redis: Redis,
        leases: Leases,
        states: DriftStates,
        baselines: Baselines,
        metrics: MonitorMetrics,
        settings: MonitorSettings,
    ) -> None:
        self._models = models
        self._redis = redis
        self._leases = leases
        self._states = states
        self._baselines = baselines
        self._metrics = metrics
        self._settings = settings
        self._renewed_at = 0.0
        """When (event-loop time) the leases were last renewed: past their TTL without one, they are gone."""
        self._unowned = 0
        """Models the live monitors could not own at the last round (warned about once)."""
        self._drift_config = settings.drift.model_dump_json()
        """Published every round (``keys.DRIFT_CONFIGS``): sidecars check an uploaded reference against the
        strictest of the live monitors'."""
        self._alive = 1
        """Monitor processes alive at the last heartbeat Redis accepted."""
        self._refused: set[str] = set()
        """What of a round Redis refuses (full), warned about once until it accepts it again."""
        self._configs_said: list[str] = []
        """The live monitors' distinct drift settings last warned about."""

    @property
    def owner(self) -> str:
        return self._leases.owner

    async def tick(self) -> None:
        """One round of lease renewal, membership, hand-back and taking."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._settings.monitor_lease_ttl_s / 3  # a third of the lease's life from renewal
        owned = self._models.owned
        held = list(owned)
        sent_at = loop.time()  # Redis starts the leases' TTL when it applies them, after this, never before
        renewals = await self._leases.renew_all(held)  # first, and nothing but its failure gives a model up
        self._renewed_at = sent_at
        for model, renewed in zip(held, renewals, strict=True):
            if not renewed:
                log.warning("monitor %s lost the lease of %s", self.owner, model)
                await self._models.drop(model, release=False)
        await self._tolerated("its membership heartbeat", self._heartbeat)
        alive = self._alive
        self._metrics.members.set(alive)
        await self._drift_settings()
        members: set[bytes] = await self._redis.smembers(keys.MONITORED_MODELS)  # type: ignore[assignment]
        models = sorted(m.decode() for m in members)
        for model in set(self._models.warm) - set(models):
            del self._models.warm[model]
        for model in sorted(set(owned) - set(models)):  # no longer monitored: its series go too
            log.info("monitor %s gives up %s: no longer in %s", self.owner, model, keys.MONITORED_MODELS)
            await self._models.drop(model, release=True, keep=False)
        await self._tolerated("the drift baselines", partial(self._baselines.round, models))  # before taking any
        share = min(fair_share(len(models), alive), MAX_MODELS)
        self._say_if_over(len(models), alive)
        if len(owned) > share:
            await self._models.drop(sorted(owned)[-1], release=True)
            return
        # Taking a model takes a few round trips; the leases held are renewed only at the next round, so a
        # round stops taking a third of the lease's life after it renewed them (the rest wait for the next round).
        took = 0
        for model in models:
            if len(owned) >= share or (took and loop.time() > until):  # one a round at least, however slow
                break
            if model not in owned and await self._leases.acquire(model):
                await self._models.take(model)
                took += 1

    async def _heartbeat(self) -> None:
        self._alive = await self._leases.heartbeat()

    async def _drift_settings(self) -> None:
        """Publish this process's drift settings, and see the live monitors': how many differ (logged, exported),
        and the strictest, written where sidecars of the previous release read one (``keys.DRIFT_CONFIG``)."""
        await self._tolerated("its drift settings", partial(self._leases.publish_config, self._drift_config))
        configs = await self._leases.live_configs()
        if self.owner not in configs:  # its own membership lapsed (Redis refuses the heartbeat): not a view to act on
            return
        distinct = sorted(set(configs.values()))
        self._metrics.drift_configs.set(len(distinct))
        self._states.fleet = tuple(parse_configs(distinct))
        if len(distinct) > 1 and distinct != self._configs_said:
            ours = self._settings.drift
            others = {o: c for o, c in configs.items() if c != self._drift_config}
            log.warning(
                "the live monitors run %d different drift settings (vai_monitor_drift_configs): %s; uploads are "
                "checked against the strictest, and a model changing hands keeps the settings it was calibrated "
                "with while a live monitor runs them",
                len(distinct),
                "; ".join(
                    f"{owner}: {differences(config, ours)}"
                    for owner, body in sorted(others.items())
                    for config in parse_configs([body])
                ),
            )
        self._configs_said = distinct
        legacy = strictest(self._states.fleet)
        if legacy is not None:
            await self._tolerated(
                "its drift settings", partial(self._redis.set, keys.DRIFT_CONFIG, legacy.model_dump_json())
            )

    async def _tolerated(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        """Run a step the round can do without: Redis refusing it (full: ``OOM command not allowed``; read-only,
        loading, or a key of another type) is logged once, with Redis's words, until it is accepted again, and the
        round goes on. Redis out of reach still ends the round."""
        try:
            await step()
        except ResponseError as error:
            if what not in self._refused:
                log.warning("monitor %s: Redis refused %s (%s); going on without it", self.owner, what, error)
                self._refused.add(what)
            return
        if what in self._refused:
            log.info("monitor %s: Redis accepts %s again", self.owner, what)
            self._refused.discard(what)

    def _say_if_over(self, models: int, alive: int) -> None:
        """Warn once (until it changes) when the live monitors together cannot own every model."""
        over = max(models - alive * MAX_MODELS, 0)
        if over and over != self._unowned:
            log.warning(
                "%d models are more than %d monitor(s) can own (%d each): %d go unwatched; run more monitors",
                models,
                alive,
                MAX_MODELS,
                over,
            )
        self._unowned = over

    async def give_up_lapsed(self, now: float) -> None:
        """Redis out of reach for longer than a lease: the leases have run out, and another monitor may own these
        models by now. Stop acting and exporting figures as their owner (frozen figures would read as current);
        once Redis answers, models are taken again and adopt their stored state."""
        owned = self._models.owned
        if owned and now - self._renewed_at > self._settings.monitor_lease_ttl_s:
            log.warning("monitor %s: leases not renewed within their TTL; giving up %d models", self.owner, len(owned))
            for model in list(owned):
                await self._models.drop(model, release=False)
