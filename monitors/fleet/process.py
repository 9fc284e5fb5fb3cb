"""The monitor process: take a fair share of the models' leases, run what each owned model needs.

Every ``ttl / 3`` the process renews its leases, drops the models whose lease it lost, renews its
membership and publishes its drift settings, gives one back when it owns more than its share (so a
newly started monitor gets work), and tries to take unowned models up to its share. The renewal
comes first and alone decides what is lost: a full Redis refuses the membership's and the settings'
writes (logged once, the round goes on) but renews leases. Detection runs in one background thread
(:class:`DriftRunner`) for every owned model; Redis I/O stays on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from common.names import process_id
from common.redis import REDIS_FAILED, cancelling, connect
from monitors.cohort_admission import CohortAdmission
from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector
from monitors.drift.monitor import DriftMonitor
from monitors.drift.runner import DriftRunner
from monitors.fleet.baselines import Baselines
from monitors.fleet.carried import FleetDriftMetrics
from monitors.fleet.context import OwnerContext
from monitors.fleet.drift_state import DriftStates, differences
from monitors.fleet.lease import Leases, fair_share, parse_configs, strictest
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.owned import OwnedModel
from monitors.fleet.projection import ProjectionPool, UmapSettings
from monitors.fleet.projection_views import ModelViews
from monitors.fleet.settings import MonitorSettings
from monitors.prediction_window import PredictionWindow
from monitors.window import WindowStore

log = logging.getLogger(__name__)
READER_CONNECTIONS = 512
"""Most connections of the blocking reads: two per owned model, so up to 256 models per monitor process (and
within a container's usual limit of 1,024 open files)."""
MAX_MODELS = READER_CONNECTIONS // 2
"""Models one monitor process owns at most: each holds two blocking reads (its feed and its labelled feed)."""


class MonitorProcess:
    def __init__(self, settings: MonitorSettings, *, registry: CollectorRegistry | None = None) -> None:
        if settings.redis_url is None:
            raise ValueError("the monitor needs VAI_REDIS_URL (the Redis its sidecars publish to)")
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        # Blocking reads wait up to 0.5 s; on a busy host a short socket timeout would cut them off.
        timeout_s = max(settings.redis_timeout_s, 5.0)
        self.redis: Redis = connect(settings.redis_url, timeout_s=timeout_s)
        self.readers: Redis = connect(settings.redis_url, timeout_s=timeout_s, max_connections=READER_CONNECTIONS)
        """The blocking reads' own client: each owned model keeps two of them waiting (its feed and its labelled
        feed), which in the shared pool of 32 left no connection for lease renewals beyond ~15 models."""
        self.leases = Leases(
            self.redis,
            owner=settings.monitor_id or process_id(),
            ttl_ms=int(settings.monitor_lease_ttl_s * 1000),
        )
        self.metrics = MonitorMetrics(self.registry)
        self.drift_metrics = FleetDriftMetrics(registry=self.registry)
        guard = CohortGuard(keys=settings.cohort_keys, max_values_per_key=settings.max_cohort_values, fleet=True)
        self.windows = WindowStore(
            guard=guard, horizon_s=settings.calibration_window_s, max_items=settings.calibration_window_max
        )
        # Every examined prediction's confidence, sliced by the same guard (accuracy estimates).
        self.recent = PredictionWindow(
            guard=guard, horizon_s=settings.estimate_window_s, max_items=settings.estimate_window_max
        )
        self.cohorts = CohortAdmission(self.redis, guard, [self.windows, self.recent])
        """Decides the cohort values the sidecars count by, in Redis; what carries an undecided one waits in the
        windows until then."""
        self._cohort_task: asyncio.Task[None] | None = None
        self.quality = QualityCollector(store=self.windows, registry=self.registry)
        """Exports the figures each owned model's report was last computed with (a scrape computes nothing)."""
        self.states = DriftStates(self.redis, self.leases, config=settings.drift, metrics=self.drift_metrics)
        self.runner = DriftRunner(
            max_batch_events=500, math_threads=settings.drift_threads, max_calibrations=settings.drift_calibrations
        )
        self.context = OwnerContext(
            redis=self.redis,
            readers=self.readers,
            leases=self.leases,
            states=self.states,
            runner=self.runner,
            windows=self.windows,
            recent=self.recent,
            collector=self.quality,
            metrics=self.metrics,
            drift_metrics=self.drift_metrics,
            settings=settings,
        )
        """What every owned model shares."""
        self.owned: dict[str, OwnedModel] = {}
        self._warm: dict[str, DriftMonitor] = {}
        """Warm-ups of models whose lease this process lost (a Redis outage past the TTL): resumed if it takes the
        model again before anyone stored a calibrated state, instead of collecting ``reference_events`` anew."""
        self.baselines = Baselines(self.redis, self.states, self.leases)
        """Calibrations of models this process gave up or lost, stored back should Redis lose its data."""
        self.projections = ProjectionPool(
            threads=settings.drift_threads, umap=UmapSettings(seed=settings.projection_seed)
        )
        """The UMAP worker process, started when a UMAP projection is first wanted."""
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._renewed_at = 0.0
        """When (event-loop time) the leases were last renewed: past their TTL without one, they are gone."""
        self._unowned = 0
        """Models the live monitors could not own at the last round (warned about once)."""
        self.stopped = False
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
        return self.leases.owner

    async def start(self) -> None:
        self.runner.start()
        self._task = asyncio.create_task(self._loop(), name="monitor-leases")
        if self.settings.cohort_keys:
            self._cohort_task = asyncio.create_task(self.cohorts.run(), name="cohort-admission")

    async def run(self, stop: asyncio.Event) -> None:
        """Start, work until ``stop`` is set, then stop: the whole life of a monitor role."""
        await self.start()
        log.info("monitor %s started", self.owner)
        try:
            await stop.wait()
        finally:
            await self.stop()
            log.info("monitor %s stopped", self.owner)

    async def stop(self) -> None:
        """Give every model back at once (another monitor takes it without waiting for the TTL)."""
        if self.stopped:
            return
        self.stopped = True
        tasks = [task for task in (self._task, self._cohort_task) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for model in list(self.owned):
            await self._drop(model, release=True)
        with contextlib.suppress(TimeoutError, *REDIS_FAILED):
            async with asyncio.timeout(2.0):
                await self.leases.leave()
        self.runner.stop()
        self.projections.close()
        await self.redis.aclose()
        await self.readers.aclose()

    async def _loop(self) -> None:
        period = self.settings.monitor_lease_ttl_s / 3
        loop = asyncio.get_running_loop()
        while not self.stopped:
            started = loop.time()
            try:
                await self.tick()
            except REDIS_FAILED as error:
                if cancelling():
                    raise
                if not self._failing:
                    log.warning("monitor %s: redis failed (%s); retrying", self.owner, type(error).__name__)
                self._failing = True
                await self._give_up_lapsed(loop.time())
            except Exception:  # the lease loop must outlive any one failure, or every model would go unwatched
                log.exception("monitor %s: lease round failed", self.owner)
            else:
                if self._failing:
                    log.info("monitor %s: redis is back", self.owner)
                self._failing = False
            await asyncio.sleep(max(period - (loop.time() - started), 0.0))  # renewals a period apart, not after

    async def tick(self) -> None:
        """One round of lease renewal, membership, hand-back and taking."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.monitor_lease_ttl_s / 3  # a third of the lease's life from renewal
        held = list(self.owned)
        sent_at = loop.time()  # Redis starts the leases' TTL when it applies them, after this, never before
        renewals = await self.leases.renew_all(held)  # first, and nothing but its failure gives a model up
        self._renewed_at = sent_at
        for model, renewed in zip(held, renewals, strict=True):
            if not renewed:
                log.warning("monitor %s lost the lease of %s", self.owner, model)
                await self._drop(model, release=False)
        await self._tolerated("its membership heartbeat", self._heartbeat)
        alive = self._alive
        self.metrics.members.set(alive)
        await self._drift_settings()
        members: set[bytes] = await self.redis.smembers(keys.MONITORED_MODELS)  # type: ignore[assignment]
        models = sorted(m.decode() for m in members)
        for model in set(self._warm) - set(models):
            del self._warm[model]
        for model in sorted(set(self.owned) - set(models)):  # no longer monitored: its series go too
            log.info("monitor %s gives up %s: no longer in %s", self.owner, model, keys.MONITORED_MODELS)
            await self._drop(model, release=True, keep=False)
        await self._tolerated("the drift baselines", partial(self.baselines.round, models))  # before taking any
        share = min(fair_share(len(models), alive), MAX_MODELS)
        self._say_if_over(len(models), alive)
        if len(self.owned) > share:
            await self._drop(sorted(self.owned)[-1], release=True)
            return
        # Taking a model takes a few round trips; the leases held are renewed only at the next round, so a
        # round stops taking a third of the lease's life after it renewed them (the rest wait for the next round).
        took = 0
        for model in models:
            if len(self.owned) >= share or (took and loop.time() > until):  # one a round at least, however slow
                break
            if model not in self.owned and await self.leases.acquire(model):
                await self._take(model)
                took += 1

    async def _heartbeat(self) -> None:
        self._alive = await self.leases.heartbeat()

    async def _drift_settings(self) -> None:
        """Publish this process's drift settings, and see the live monitors': how many differ (logged, exported),
        and the strictest, written where sidecars of the previous release read one (``keys.DRIFT_CONFIG``)."""
        await self._tolerated("its drift settings", partial(self.leases.publish_config, self._drift_config))
        configs = await self.leases.live_configs()
        if self.owner not in configs:  # its own membership lapsed (Redis refuses the heartbeat): not a view to act on
            return
        distinct = sorted(set(configs.values()))
        self.metrics.drift_configs.set(len(distinct))
        self.states.fleet = tuple(parse_configs(distinct))
        if len(distinct) > 1 and distinct != self._configs_said:
            ours = self.settings.drift
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
        legacy = strictest(self.states.fleet)
        if legacy is not None:
            await self._tolerated(
                "its drift settings", partial(self.redis.set, keys.DRIFT_CONFIG, legacy.model_dump_json())
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

    async def _take(self, model: str) -> None:
        owned = OwnedModel(
            model,
            self.context,
            views=self._views(model),
            warm=self._warm.pop(model, None),
            kept=self.baselines.take(model),
        )
        try:
            await self.cohorts.load(model)  # the values its slices were decided with, before its labels replay
            await owned.start()
        except BaseException:
            await owned.stop()
            await self.leases.release(model)
            raise
        self.owned[model] = owned
        self.baselines.limit = max(self.baselines.limit, len(self.owned))
        log.info("monitor %s owns %s", self.owner, model)

    def _views(self, model: str) -> ModelViews:
        return ModelViews(
            model,
            redis=self.redis,
            leases=self.leases,
            references=self.states.references,
            pool=self.projections,
            settings=self.settings,
            metrics=self.metrics,
        )

    async def _give_up_lapsed(self, now: float) -> None:
        """Redis out of reach for longer than a lease: the leases have run out, and another monitor may own these
        models by now. Stop acting and exporting figures as their owner (frozen figures would read as current);
        once Redis answers, models are taken again and adopt their stored state."""
        if self.owned and now - self._renewed_at > self.settings.monitor_lease_ttl_s:
            log.warning(
                "monitor %s: leases not renewed within their TTL; giving up %d models", self.owner, len(self.owned)
            )
            for model in list(self.owned):
                await self._drop(model, release=False)

    async def _drop(self, model: str, *, release: bool, keep: bool = True) -> None:
        owned = self.owned.pop(model)
        await owned.stop()
        warm = owned.warming_up
        if not release and warm is not None:  # lost, not handed on: kept for this process's next take
            self._warm[model] = warm
        calibrated = owned.calibrated
        if keep and calibrated is not None:
            self.baselines.keep(model, calibrated)
        self.drift_metrics.forget(model)
        self.metrics.forget(model)
        self.quality.forget(model)
        if release:
            with contextlib.suppress(*REDIS_FAILED):
                await self.leases.release(model)
        log.info("monitor %s no longer owns %s", self.owner, model)
