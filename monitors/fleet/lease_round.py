"""The leases of a monitor process: their renewal, and the lease round that shares the models out.

The leases held are renewed by a task of their own (:meth:`LeaseRound.keep_renewing`, every ``ttl / 3``), which
nothing else holds up: neither a model being taken nor anything else of the round. Its renewal alone decides what is
lost: a model whose lease it could not renew is dropped (once taken, when it was being taken). The leases of models
being taken are renewed with the others.

The round, every ``ttl / 3`` from :class:`~monitors.fleet.process.MonitorProcess`, renews the process's membership and
publishes its drift settings, gives one model back when it owns more than its share (so a newly started monitor gets
work), and tries to take unowned models up to its share. A full Redis refuses the membership's and the settings'
writes (logged once, the round goes on) but renews leases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from common.redis import REDIS_FAILED, cancelling
from monitors.fleet.baselines import Baselines
from monitors.fleet.drift_state import DriftStates, differences
from monitors.fleet.lease import Leases, fair_share, parse_configs, strictest
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.owned_models import MAX_MODELS, OwnedModels
from monitors.fleet.settings import MonitorSettings

log = logging.getLogger(__name__)
RETRY_S = 0.2
"""How soon a renewal that failed is tried again (at most a third of the TTL)."""


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
        """When (``time.monotonic``, any thread) the leases last renewed were sent: past their TTL without a renewal,
        they are gone."""
        self._taking: set[str] = set()
        """Models being taken: their leases are renewed with those of the models owned."""
        self._lost: set[str] = set()
        """Models whose lease a renewal found lost while they were being taken: dropped once taken."""
        self._drops: set[asyncio.Task[None]] = set()
        """Drops of lost leases under way, each in a task of its own (:meth:`_drop_apart`)."""
        self._dropping: set[str] = set()
        """Models being dropped: not taken again before they are (two of one model would forget each other's
        windows)."""
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

    async def keep_renewing(self) -> None:
        """Renew the leases every third of their TTL until cancelled: the task ``monitor-renewals``. A renewal that
        fails is tried again soon (:data:`RETRY_S`), so that a restart shorter than the leases' remaining life costs
        none of them; one Redis is slow to answer is waited for (cut short, it may have been applied all the same,
        and a busy monitor would give up leases it holds). A failure never ends the task; Redis out of reach past the
        TTL gives up every model (:meth:`give_up_lapsed`), and ``/metrics`` leaves their series out from the TTL on
        (:meth:`leases_fresh`)."""
        period = self._settings.monitor_lease_ttl_s / 3
        loop = asyncio.get_running_loop()
        failing = False
        while not cancelling():  # a cancel that redis-py swallowed still stops the loop
            started = loop.time()
            try:
                sent = await self.renew()
            except REDIS_FAILED as error:
                if cancelling():
                    raise
                if not failing:
                    log.warning("monitor %s: renewing its leases failed (%s); retrying", self.owner, error)
                failing = True
                await self.give_up_lapsed(time.monotonic())
            except Exception:  # the renewals must outlive any one failure
                log.exception("monitor %s: renewing its leases failed", self.owner)
            else:
                if failing and sent:  # with no lease held nothing was sent: Redis may still be out of reach
                    log.info("monitor %s: its leases are renewed again", self.owner)
                failing = failing and not sent
            pause = min(RETRY_S, period) if failing and self._models.owned else period
            await asyncio.sleep(max(pause - (loop.time() - started), 0.0))  # a period apart, not after

    def exported(self, model: str) -> bool:
        """Whether ``/metrics`` shows ``model``'s series (any thread): not while it is being dropped (its lease lost
        or handed back: another monitor may own it already), nor once the leases may have lapsed."""
        return model not in self._dropping and self.leases_fresh()

    def leases_fresh(self) -> bool:
        """Whether the leases held were renewed within their TTL (any thread). Past it, another monitor may own
        their models already: ``/metrics`` leaves their series out (:mod:`monitors.fleet.served_metrics`), so that
        no model is exported by two monitors at once, even by a process paused (SIGSTOP) mid-scrape."""
        return time.monotonic() < self._renewed_at + self._settings.monitor_lease_ttl_s

    async def renew(self) -> bool:
        """Renew the leases of the models owned and being taken, in one round trip; drop the models whose lease was
        lost (one being taken, once it is). False when no lease is held (nothing sent)."""
        held = list(dict.fromkeys([*self._models.owned, *sorted(self._taking)]))
        sent_at = time.monotonic()
        renewals = await self._leases.renew_all(held)  # Redis starts the TTL when it applies it: after sent_at
        self._renewed_at = sent_at
        for model, renewed in zip(held, renewals, strict=True):
            if renewed:
                continue
            if model in self._taking:
                self._lost.add(model)
            elif model in self._models.owned and model not in self._dropping:
                log.warning("monitor %s lost the lease of %s", self.owner, model)
                self._drop_apart(model)
        return bool(held)

    def _drop_apart(self, model: str) -> None:
        """Drop ``model``, whose lease was lost, in a task of its own: stopping a model takes up to seconds, and the
        other leases' renewals must not wait for it. Its series leave ``/metrics`` at once (:meth:`exported`)."""
        self._dropping.add(model)
        task = asyncio.create_task(self._drop_marked(model, release=False), name=f"monitor-drop-{model}")
        self._drops.add(task)
        task.add_done_callback(self._dropped)

    def _dropped(self, task: asyncio.Task[None]) -> None:
        self._drops.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("monitor %s: %s failed", self.owner, task.get_name(), exc_info=error)

    async def drops_done(self, *, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) for the drops of lost leases still under way (before the process stops)."""
        if self._drops:
            await asyncio.wait(set(self._drops), timeout=timeout_s)

    async def tick(self) -> None:
        """One round of membership, drift settings, hand-back and taking (the leases are renewed by
        :meth:`keep_renewing`)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self._settings.monitor_lease_ttl_s / 3  # the next round's membership heartbeat is due
        # The leases as they stand now, and the lost ones dropped (their calibrations kept), before the baselines'
        # round: a Redis that lost its data has lost the leases too, and what it gets back is what was kept.
        await self.renew()
        await self.drops_done(timeout_s=self._settings.monitor_lease_ttl_s)
        owned = self._models.owned
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
            await self._drop(model, release=True, keep=False)
        await self._tolerated("the drift baselines", partial(self._baselines.round, models))  # before taking any
        share = min(fair_share(len(models), alive), MAX_MODELS)
        self._say_if_over(len(models), alive)
        if len(owned) > share:
            await self._drop(sorted(owned)[-1], release=True)
            return
        # Taking a model takes a few round trips (its labelled window is rebuilt afterwards, in a task of its own);
        # a round stops taking a third of the lease's life after it started, so that the next round's membership
        # heartbeat is on time (the rest wait for the next round).
        took = 0
        for model in models:
            if len(owned) >= share or (took and loop.time() > until):  # one a round at least, however slow
                break
            if model not in owned and model not in self._dropping and await self._leases.acquire(model):
                await self._take(model)
                took += 1

    async def _take(self, model: str) -> None:
        """Take ``model``, whose lease this process has just acquired: its lease is renewed with the others while it
        is taken, and it is dropped at once if a renewal found it lost meanwhile."""
        self._taking.add(model)
        try:
            await self._models.take(model)
        finally:
            self._taking.discard(model)
            lost = model in self._lost
            self._lost.discard(model)
        if lost and model in self._models.owned:
            log.warning("monitor %s lost the lease of %s while taking it", self.owner, model)
            await self._drop(model, release=False)

    async def _drop(self, model: str, *, release: bool, keep: bool = True) -> None:
        """Drop ``model`` unless it is no longer owned (the renewals and the round drop models each in their task)."""
        if model not in self._models.owned or model in self._dropping:
            return
        self._dropping.add(model)
        await self._drop_marked(model, release=release, keep=keep)

    async def _drop_marked(self, model: str, *, release: bool, keep: bool = True) -> None:
        """Drop ``model``, marked as being dropped (out of ``/metrics``, not taken again), unless no longer owned."""
        try:
            if model in self._models.owned:
                await self._models.drop(model, release=release, keep=keep)
        finally:
            self._dropping.discard(model)

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
                await self._drop(model, release=False)
