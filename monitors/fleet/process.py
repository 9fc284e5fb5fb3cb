"""The monitor process: take a fair share of the models' leases, run what each owned model needs.

Here the process is wired (its Redis clients, stores, metrics and workers), started and stopped. A task of its own
renews the leases every ``ttl / 3``; every ``ttl / 3`` as well, another runs a lease round
(:mod:`monitors.fleet.lease_round`: membership, drift settings, hand-back and taking), which takes and drops models
through :mod:`monitors.fleet.owned_models`. Detection runs in one background thread (:class:`DriftRunner`) for every
owned model; Redis I/O stays on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from common.names import process_id
from common.redis import REDIS_FAILED, cancelling, connect
from monitors.cohort_admission import CohortAdmission
from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector
from monitors.drift.runner import DriftRunner
from monitors.fleet.baselines import Baselines
from monitors.fleet.carried import FleetDriftMetrics
from monitors.fleet.context import OwnerContext
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases
from monitors.fleet.lease_round import LeaseRound
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.owned import OwnedModel
from monitors.fleet.owned_models import READER_CONNECTIONS, OwnedModels
from monitors.fleet.persistence import warn_if_unpersisted
from monitors.fleet.projection import ProjectionPool, UmapSettings
from monitors.fleet.redis_memory import RedisMemory
from monitors.fleet.settings import MonitorSettings
from monitors.prediction_window import PredictionWindow
from monitors.window import WindowStore

log = logging.getLogger(__name__)


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
        self.redis_memory = RedisMemory(self.redis, self.registry)
        self._memory_task: asyncio.Task[None] | None = None
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
        self.baselines = Baselines(self.redis, self.states, self.leases)
        """Calibrations of models this process gave up or lost, stored back should Redis lose its data."""
        self.projections = ProjectionPool(
            threads=settings.drift_threads, umap=UmapSettings(seed=settings.projection_seed)
        )
        """The UMAP worker process, started when a UMAP projection is first wanted."""
        self.models = OwnedModels(
            self.context, cohorts=self.cohorts, baselines=self.baselines, projections=self.projections
        )
        self.lease_round = LeaseRound(
            self.models,
            redis=self.redis,
            leases=self.leases,
            states=self.states,
            baselines=self.baselines,
            metrics=self.metrics,
            settings=settings,
        )
        self._task: asyncio.Task[None] | None = None
        self._renewals: asyncio.Task[None] | None = None
        self._failing = False
        self.stopped = False

    @property
    def owner(self) -> str:
        return self.leases.owner

    @property
    def owned(self) -> dict[str, OwnedModel]:
        """The models this process owns."""
        return self.models.owned

    async def start(self) -> None:
        self.runner.start()
        self._renewals = asyncio.create_task(self.lease_round.keep_renewing(), name="monitor-renewals")
        self._task = asyncio.create_task(self._loop(), name="monitor-leases")
        self._memory_task = asyncio.create_task(self.redis_memory.run(), name="redis-memory")
        if self.settings.cohort_keys:
            self._cohort_task = asyncio.create_task(self.cohorts.run(), name="cohort-admission")

    async def run(self, stop: asyncio.Event) -> None:
        """Start, work until ``stop`` is set, then stop: the whole life of a monitor role."""
        await self.start()
        log.info("monitor %s started", self.owner)
        with contextlib.suppress(TimeoutError, *REDIS_FAILED):  # Redis away at start: the lease loop says so
            async with asyncio.timeout(5.0):
                await warn_if_unpersisted(self.redis)
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
        tasks = [
            task for task in (self._task, self._renewals, self._cohort_task, self._memory_task) if task is not None
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        await self.lease_round.drops_done(timeout_s=5.0)
        for model in list(self.owned):
            await self.models.drop(model, release=True)
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
                await self.lease_round.give_up_lapsed(time.monotonic())
            except Exception:  # the lease loop must outlive any one failure, or every model would go unwatched
                log.exception("monitor %s: lease round failed", self.owner)
            else:
                if self._failing:
                    log.info("monitor %s: redis is back", self.owner)
                self._failing = False
            await asyncio.sleep(max(period - (loop.time() - started), 0.0))  # rounds a period apart, not after

    async def tick(self) -> None:
        """One lease round: membership, drift settings, hand-back and taking (the leases are renewed apart)."""
        await self.lease_round.tick()
