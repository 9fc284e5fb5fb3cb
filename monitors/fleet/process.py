"""The monitor process: take a fair share of the models' leases, run what each owned model needs.

Every ``ttl / 3`` the process renews its membership and its leases, drops the models whose lease
it lost, gives one back when it owns more than its share (so a newly started monitor gets work),
and tries to take unowned models up to its share. Detection runs in one background thread
(:class:`DriftRunner`) for every owned model; Redis I/O stays on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from common import keys
from common.redis import REDIS_FAILED, cancelling, connect
from monitors.cohort_admission import CohortAdmission
from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.runner import DriftRunner
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases, fair_share
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.owned import OwnedModel
from monitors.fleet.projection import ProjectionPool, UmapSettings
from monitors.fleet.projection_views import ModelViews
from monitors.fleet.settings import MonitorSettings
from monitors.window import PredictionWindow, WindowStore

log = logging.getLogger(__name__)
READER_CONNECTIONS = 512
"""Most connections of the blocking reads: two per owned model, so up to 256 models per monitor process (and
within a container's usual limit of 1,024 open files)."""
MAX_MODELS = READER_CONNECTIONS // 2
"""Models one monitor process owns at most: each holds two blocking reads (its feed and its labelled feed)."""


def default_monitor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


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
            owner=settings.monitor_id or default_monitor_id(),
            ttl_ms=int(settings.monitor_lease_ttl_s * 1000),
        )
        self.metrics = MonitorMetrics(self.registry)
        self.drift_metrics = DriftMetrics(registry=self.registry)
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
        self.owned: dict[str, OwnedModel] = {}
        self._warm: dict[str, DriftMonitor] = {}
        """Warm-ups of models whose lease this process lost (a Redis outage past the TTL): resumed if it takes the
        model again before anyone stored a calibrated state, instead of collecting ``reference_events`` anew."""
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
        """Published every round (``keys.DRIFT_CONFIG``): sidecars check an uploaded reference against it."""

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
        """One round of membership, lease renewal, hand-back and taking."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.settings.monitor_lease_ttl_s / 3  # a third of the lease's life from renewal
        alive = await self.leases.heartbeat()
        self.metrics.members.set(alive)
        held = list(self.owned)
        renewals = await self.leases.renew_all(held)
        self._renewed_at = loop.time()
        await self.redis.set(keys.DRIFT_CONFIG, self._drift_config)  # after the renewals: never delays them
        for model, renewed in zip(held, renewals, strict=True):
            if not renewed:
                log.warning("monitor %s lost the lease of %s", self.owner, model)
                await self._drop(model, release=False)
        members: set[bytes] = await self.redis.smembers(keys.MONITORED_MODELS)  # type: ignore[assignment]
        models = sorted(m.decode() for m in members)
        for model in set(self._warm) - set(models):
            del self._warm[model]
        for model in sorted(set(self.owned) - set(models)):  # no longer monitored: its series go too
            log.info("monitor %s gives up %s: no longer in %s", self.owner, model, keys.MONITORED_MODELS)
            await self._drop(model, release=True)
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
            redis=self.redis,
            readers=self.readers,
            leases=self.leases,
            states=self.states,
            runner=self.runner,
            windows=self.windows,
            recent=self.recent,
            collector=self.quality,
            metrics=self.metrics,
            settings=self.settings,
            skipped=self.drift_metrics.skipped(model),
            views=self._views(model),
            warm=self._warm.pop(model, None),
        )
        try:
            await self.cohorts.load(model)  # the values its slices were decided with, before its labels replay
            await owned.start()
        except BaseException:
            await owned.stop()
            await self.leases.release(model)
            raise
        self.owned[model] = owned
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

    async def _drop(self, model: str, *, release: bool) -> None:
        owned = self.owned.pop(model)
        await owned.stop()
        warm = owned.warming_up
        if not release and warm is not None:  # lost, not handed on: kept for this process's next take
            self._warm[model] = warm
        self.drift_metrics.forget(model)
        self.metrics.forget(model)
        self.quality.forget(model)
        if release:
            with contextlib.suppress(*REDIS_FAILED):
                await self.leases.release(model)
        log.info("monitor %s no longer owns %s", self.owner, model)
