"""Everything one sidecar process holds, built from settings and torn down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from redis.asyncio import Redis

from common import keys
from common.redis import REDIS_FAILED, connect, every
from monitors.cohort_admission import CohortAdmission
from monitors.cohorts import CohortGuard
from sampler.explanations import ExplanationStore
from sampler.metrics import SamplerMetrics
from sampler.queue import QueueWriter
from sampler.sampler import Sampler
from service.feed.writer import FeedWriter
from service.http.auth import TokenAuth
from service.http.body import BodyDeadlines
from service.ingest.cohorts import CohortCounts
from service.ingest.handler import IngestHandler
from service.kserve.logger import KServeLogger
from service.metrics import FeedMetrics, IngestMetrics, PolicyMetrics
from service.monitoring.handler import Monitoring
from service.monitoring.projection_limits import ProjectionLimits
from service.policies import PolicySync
from service.settings import SidecarSettings

log = logging.getLogger(__name__)
KSERVE_SWEEP_S = 5.0
"""How often orphaned KServe requests are looked for (at most every join TTL)."""
DRAIN_S = 5.0
"""How long a stopping sidecar has, in all, to stop its tasks and write what it holds to Redis."""
CLOSE_S = 1.0
"""Longest a stopping sidecar waits for its Redis connections to close, after ``DRAIN_S``."""


class SidecarStatusPublic(BaseModel):
    """What ``GET /status`` answers."""

    redis_up: bool
    """Whether Redis answered a PING just now, within ``VAI_REDIS_TIMEOUT_S`` (the routes' request timeout): a Redis
    down or hung shows as false at once, true again as soon as it answers. It says Redis answers, not that it
    takes writes: a Redis refusing them (out of memory, ``maxmemory`` under ``noeviction``) still answers the PING
    and shows as up, while the routes that write to it in the request (labels, a reference upload) answer 503 and
    the queue writer counts the buffered records Redis refuses (``vai_feed_records_refused_total``, and
    the reason ``redis_error`` of ``vai_feed_records_dropped_total`` and ``vai_sample_dropped_total``)."""
    buffered_events: int
    buffered_bytes: int
    buffer_max_events: int
    queue_lengths: dict[str, int]
    accepted: dict[str, int]
    auth_enabled: bool


class RedisProbe:
    """Whether Redis answers a PING now, asked by ``GET /status``; not whether it takes writes (a Redis out of
    memory answers a PING and refuses writes: see ``SidecarStatusPublic.redis_up``). The queue writer's own view
    of Redis lags: it learns only when one of its writes or polls fails, on its longer timeout, and not at all
    while it has nothing to write. The PING goes on a connection of its own (a request pool busy with slow reads
    does not read as an outage), gives up after ``timeout_s`` (a hung Redis does not hang ``/status``), and the
    calls in flight share one PING (a burst of probes is one round trip, not a queue of timeouts)."""

    def __init__(self, redis: Redis, *, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._pending: asyncio.Future[bool] | None = None

    async def up(self) -> bool:
        if self._pending is None:
            pending = asyncio.ensure_future(self._ping())
            pending.add_done_callback(self._done)
            self._pending = pending
        return await asyncio.shield(self._pending)  # a caller that goes away leaves the PING to the others

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _done(self, pending: asyncio.Future[bool]) -> None:
        if self._pending is pending:
            self._pending = None

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._redis.ping()
        except REDIS_FAILED:  # the built-in TimeoutError is an OSError
            return False
        return True


class Sidecar:
    """The plain object behind the HTTP routes; ``start``/``stop`` run its background tasks."""

    def __init__(self, settings: SidecarSettings, *, registry: CollectorRegistry | None = None) -> None:
        if settings.redis_url is None:
            raise ValueError("SidecarSettings.redis_url must be set (the CLI starts an embedded Redis when it is not)")
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.redis = connect(settings.redis_url, timeout_s=settings.redis_timeout_s)
        self.writer_redis = connect(
            settings.redis_url, timeout_s=max(settings.redis_writer_timeout_s, settings.redis_timeout_s)
        )
        """The background writers' own client: a longer timeout than the requests' (see the setting)."""
        self.redis_probe = RedisProbe(
            connect(settings.redis_url, timeout_s=settings.redis_timeout_s, max_connections=1),
            timeout_s=settings.redis_timeout_s,
        )
        self.auth = TokenAuth(settings)
        self.sampler = Sampler(settings.model_policy)
        self.sampler_metrics = SamplerMetrics(self.registry)
        self.explanations = ExplanationStore(
            self.redis, ttl_s=settings.explanation_ttl_s, max_per_model=settings.explanations_max_per_model
        )
        self.writer = QueueWriter(
            self.writer_redis,
            self.sampler_metrics,
            self.explanations,
            max_events=settings.buffer_max_events,
            max_bytes=settings.buffer_max_bytes,
            batch_size=settings.flush_batch,
            stream_maxlen=settings.stream_maxlen,
            queue_max_length=settings.queue_max_length,
            retry_s=settings.flush_retry_s,
            max_input_bytes=settings.max_input_bytes,
            queue_max_bytes=settings.queue_max_bytes,
        )
        self.feed: FeedWriter | None = None
        self.monitoring: Monitoring | None = None
        if settings.monitors_enabled:
            feed_metrics = FeedMetrics(self.registry)
            self.feed = FeedWriter(
                self.writer_redis,
                feed_metrics,
                max_per_second=settings.monitor_max_per_second,
                max_records=settings.monitor_buffer_records,
                stream_maxlen=settings.monitor_stream_maxlen,
                prediction_ttl_s=settings.prediction_ttl_s,
                brier_max_classes=settings.brier_max_classes,
                label_records=settings.label_records,
                labelled_models=frozenset(name for name, section in settings.models.items() if section.delayed_labels),
            )
            self.monitoring = Monitoring(
                self.redis,
                self.feed,
                feed_metrics,
                timeout_s=settings.redis_timeout_s,
                label_retry_s=settings.label_join_retry_s,
                cohort_keys=settings.cohort_keys,
            )
        metrics = IngestMetrics(self.registry)
        self.cohorts = CohortCounts(
            metrics,
            CohortGuard(keys=settings.cohort_keys, max_values_per_key=settings.max_cohort_values, fleet=True),
        )
        self.cohort_admission = CohortAdmission(self.redis, self.cohorts.guard, [self.cohorts])
        """Decides the cohort values every replica and the monitor label by, in Redis, off the request path."""
        self.ingest = IngestHandler(
            settings,
            sampler=self.sampler,
            writer=self.writer,
            metrics=metrics,
            sampler_metrics=self.sampler_metrics,
            feed=self.feed,
            cohorts=self.cohorts,
        )
        self.policy_sync = PolicySync(
            self.redis,
            self.sampler,
            PolicyMetrics(self.registry),
            max_models=settings.max_models,
            known_models=lambda: self.ingest.known_models,
        )
        self.kserve = KServeLogger(settings, redis=self.redis, ingest=self.ingest, registry=self.registry)
        self.projection_limits = ProjectionLimits()
        self.body_deadlines = BodyDeadlines(settings.body_timeout_s, max_pending_bytes=settings.max_pending_body_bytes)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if await self.writer.ping(timeout_s=self.settings.redis_timeout_s):
            await self._refresh_policies()
        if self.feed is not None:
            self._tasks.append(asyncio.create_task(self.feed.run(), name="monitoring-feed"))
        self._tasks += [
            asyncio.create_task(self.writer.run(), name="queue-writer"),
            asyncio.create_task(
                every(self.settings.policy_refresh_s, self._refresh_policies, what="refreshing the sampling policies"),
                name="policy-refresh",
            ),
            asyncio.create_task(
                every(self.settings.queue_poll_s, self._poll_queues, what="polling the queue lengths"),
                name="queue-poll",
            ),
            asyncio.create_task(self.body_deadlines.run(), name="body-deadlines"),
        ]
        if self.kserve.enabled:
            sweep_s = min(KSERVE_SWEEP_S, self.settings.kserve_join_ttl_s)
            self._tasks.append(
                asyncio.create_task(
                    every(sweep_s, self.kserve.sweep, what="sweeping orphaned KServe requests"), name="kserve-sweep"
                )
            )
        if self.settings.cohort_keys:
            self._tasks.append(asyncio.create_task(self.cohort_admission.run(), name="cohort-admission"))

    async def stop(self, *, drain_timeout_s: float = DRAIN_S) -> None:
        """Stop the background tasks, then write what is buffered, all within ``drain_timeout_s`` together
        (closing the connections gets at most one second more): a shutdown that hangs on a dead Redis would
        keep the pod from terminating, and Kubernetes kills it after its grace period."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=max(deadline - loop.time(), 0.0))
            for task in stuck:
                log.error("background task %s did not stop within %.0f s", task.get_name(), drain_timeout_s)
        self._tasks = []
        with contextlib.suppress(TimeoutError):  # the last undecided values: decided, or __other__
            async with asyncio.timeout_at(deadline):
                await self.cohort_admission.settle()
        self.cohort_admission.close()
        if self.feed is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    while await self.feed.flush():
                        pass
            if abandoned := self.feed.abandon():
                log.warning("%d monitoring records not written before shutdown (counted as dropped)", abandoned)
        await self.writer.drain(timeout_s=max(deadline - loop.time(), 0.0))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_S):
                await self.redis.aclose()
                await self.writer_redis.aclose()
                await self.redis_probe.aclose()

    async def status(self) -> SidecarStatusPublic:
        return SidecarStatusPublic(
            redis_up=await self.redis_probe.up(),
            buffered_events=self.writer.buffered,
            buffered_bytes=self.writer.buffered_bytes,
            buffer_max_events=self.settings.buffer_max_events,
            queue_lengths=self.writer.queue_lengths(),
            accepted=dict(self.ingest.counts),
            auth_enabled=self.auth.enabled,
        )

    async def _refresh_policies(self) -> None:
        """Adopt the stored sampling policies, then the models with delayed labels (skipped while Redis fails)."""
        if not await self.policy_sync.refresh():
            return
        if self.feed is not None:
            try:
                labelled: set[bytes] = await self.redis.smembers(keys.LABELLED_MODELS)  # type: ignore[assignment]
            except REDIS_FAILED:
                return
            self.feed.sync_labelled({model.decode() for model in labelled})

    async def _poll_queues(self) -> None:
        await self.writer.poll_lengths(self.ingest.models)
