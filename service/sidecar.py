"""Everything one sidecar process holds, built from settings and torn down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from common import keys
from common.errors import InvalidInput, RedisUnavailable
from common.redis import REDIS_FAILED, connect, every
from monitors.cohort_admission import CohortAdmission
from monitors.cohorts import CohortGuard
from sampler.explanations import ExplanationStore
from sampler.metrics import SamplerMetrics
from sampler.policy import SamplingPolicy, SamplingPolicyPatch
from sampler.policy_store import PolicyStore, TooManyModels
from sampler.queue import QueueWriter
from sampler.sampler import Sampler
from service.events.errors import first_problem
from service.feed.writer import FeedWriter
from service.http.auth import TokenAuth
from service.http.body import BodyDeadlines
from service.ingest.cohorts import CohortCounts
from service.ingest.handler import IngestHandler
from service.kserve.logger import KServeLogger
from service.metrics import FeedMetrics, IngestMetrics, PolicyMetrics
from service.monitoring.handler import Monitoring
from service.monitoring.projection_limits import ProjectionLimits
from service.settings import SidecarSettings

log = logging.getLogger(__name__)
KSERVE_SWEEP_S = 5.0
"""How often orphaned KServe requests are looked for (at most every join TTL)."""
DRAIN_S = 5.0
"""How long a stopping sidecar has, in all, to stop its tasks and write what it holds to Redis."""
CLOSE_S = 1.0
"""Longest a stopping sidecar waits for its Redis connections to close, after ``DRAIN_S``."""
MARK_TTL_S = 3600
"""The time to live of a replica's mark (``keys.sidecar_mark``), set again at every policy refresh. A replica
that has not reached Redis for half of it cannot tell its overrides lost from reset, and adopts what Redis holds."""
POLICY_FULL_READ_S = 60.0
"""Longest a replica goes without reading every stored policy, even when their version counter has not moved (a
writer of an earlier release changes them without bumping it)."""
_REFRESH_FAILED: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_FAILED)
"""A policy refresh that fails so (Redis down, or refusing to take back lost overrides) waits for the next."""


@dataclass(frozen=True, slots=True)
class SidecarStatus:
    """What ``GET /status`` answers."""

    redis_up: bool
    buffered_events: int
    buffered_bytes: int
    buffer_max_events: int
    queue_lengths: dict[str, int]
    accepted: dict[str, int]
    auth_enabled: bool


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
        self.auth = TokenAuth(settings)
        self.sampler = Sampler(settings.model_policy)
        self.policies = PolicyStore(self.redis)
        self.policy_metrics = PolicyMetrics(self.registry)
        self.replica_id = uuid.uuid4().hex
        """This process's id in Redis (its mark, ``keys.sidecar_mark``)."""
        self._overrides_held: dict[str, dict[str, Any]] = {}
        """The run-time overrides Redis held at the last refresh, with this replica's own changes since."""
        self._marked_at: float | None = None
        """When (monotonic) this replica last saw its mark in Redis, or set it."""
        self._policy_version: int | None = None
        """The version of the stored overrides (``PolicyStore.load_changed``) ``_overrides_held`` was read at."""
        self._policy_read_at = 0.0
        """When (monotonic) this replica last read every stored policy."""
        self._policy_lock = asyncio.Lock()
        """Held by each policy change and refresh of this replica, so that each installs what Redis held after it,
        in the order they reached Redis (one lock, not one per model: changes are rare, admin-only and quick)."""
        self.sampler_metrics = SamplerMetrics(self.registry)
        self.explanations = ExplanationStore(self.redis, ttl_s=settings.explanation_ttl_s)
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
        self.kserve = KServeLogger(settings, redis=self.redis, ingest=self.ingest, registry=self.registry)
        self.projection_limits = ProjectionLimits()
        self.body_deadlines = BodyDeadlines(settings.body_timeout_s)
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

    def status(self) -> SidecarStatus:
        return SidecarStatus(
            redis_up=self.writer.redis_up,
            buffered_events=self.writer.buffered,
            buffered_bytes=self.writer.buffered_bytes,
            buffer_max_events=self.settings.buffer_max_events,
            queue_lengths=self.writer.queue_lengths(),
            accepted=dict(self.ingest.counts),
            auth_enabled=self.auth.enabled,
        )

    async def update_policy(self, model: str, patch: SamplingPolicyPatch) -> SamplingPolicy:
        """Apply a partial policy change, persist it for every replica, and return the result: the model's policy
        with every change stored so far, this one and any other replica's.

        A model that neither has stored overrides nor is known to this replica is refused once the models with
        stored overrides and those this replica knows are ``VAI_MAX_MODELS``: overrides may be set before a
        model's first event, but a name that no replica serves must not make state without bound."""
        changes = patch.changes()
        try:
            self.sampler.preview(model, changes)
        except ValidationError as error:
            field, message = first_problem(error)
            raise InvalidInput(message, field=field) from None
        known = self.ingest.known_models
        cap = 0 if model in known else self.settings.max_models
        async with self._policy_lock:
            try:  # RedisUnavailable (503) when Redis fails
                stored = await self.policies.save(model, changes, max_models=cap, known=sorted(known))
            except TooManyModels:
                raise InvalidInput(
                    f"model: unknown model and already {cap} models with a sampling policy or events "
                    "(raise VAI_MAX_MODELS)",
                    field="model",
                    detail={"reason": "too_many_models"},
                ) from None
            return self._install_overrides(model, stored, fallback=self.sampler.preview(model, changes)[1])

    def _install_overrides(self, model: str, stored: dict[str, Any], *, fallback: dict[str, Any]) -> SamplingPolicy:
        """Adopt ``stored``, what Redis holds for ``model`` after a change; ``fallback`` (this replica's view with
        the change) when what Redis holds is invalid, as the refresh would leave it too."""
        try:
            policy = self.sampler.set_overrides(model, stored)
        except ValidationError:
            log.error("ignoring invalid sampling policy of %r in Redis", model)
            stored, policy = fallback, self.sampler.set_overrides(model, fallback)
        if stored:
            self._overrides_held[model] = dict(stored)
        else:
            self._overrides_held.pop(model, None)
        return policy

    async def reset_policy(self, model: str) -> SamplingPolicy:
        """Drop the run-time overrides of ``model``."""
        async with self._policy_lock:
            await self.policies.clear(model)  # RedisUnavailable (503) when Redis fails
            self._overrides_held.pop(model, None)
            return self.sampler.set_overrides(model, {})

    async def _refresh_policies(self) -> None:
        async with self._policy_lock:
            try:
                stored = await self._stored_overrides()
            except _REFRESH_FAILED as error:
                log.debug("policy refresh skipped: %s", type(error).__name__)
                return
            if stored is not None:
                self.sampler.sync_overrides(stored)
        if self.feed is not None:
            try:
                labelled: set[bytes] = await self.redis.smembers(keys.LABELLED_MODELS)  # type: ignore[assignment]
            except REDIS_FAILED:
                return
            self.feed.sync_labelled({model.decode() for model in labelled})

    async def _stored_overrides(self) -> dict[str, dict[str, Any]] | None:
        """The run-time overrides to adopt from Redis; ``None`` when Redis lost its data while they were read (the
        next refresh sees it). Overrides that vanished while this replica's mark stayed were reset (``DELETE`` on
        any replica); those that vanished with it were lost with Redis's data: written back, as last seen here.
        Redis is where an admin's change lives, but when Redis lost it the replicas' copies are the only ones."""
        mark = keys.sidecar_mark(self.replica_id)
        marked = bool(await self.redis.exists(mark))
        now = time.monotonic()
        fresh = marked and now - self._policy_read_at < POLICY_FULL_READ_S  # a lost mark: Redis may have lost all
        since = self._policy_version if fresh else None
        version, read = await self.policies.load_changed(since)
        if read is None:  # unchanged since the last read (a change of this replica's moves the version too)
            stored = {model: dict(fields) for model, fields in self._overrides_held.items()}
        else:
            stored, self._policy_read_at = read, now
        if marked:
            if not await self.redis.expire(mark, MARK_TTL_S):  # EXPIRE: Redis out of memory still takes it
                return None  # lost between the two calls: the next refresh writes back what vanished
            self._marked_at = now
        else:
            if self._marked_at is not None and now - self._marked_at < MARK_TTL_S / 2:  # not expired: lost
                stored = await self._write_back(stored)
            try:
                await self.redis.set(mark, 1, ex=MARK_TTL_S)
                self._marked_at = now
            except REDIS_FAILED as error:  # out of memory, say: what Redis holds is adopted all the same
                log.debug("sidecar mark not set: %s", type(error).__name__)
        self._overrides_held = {model: dict(fields) for model, fields in stored.items()}
        self._policy_version = version
        return stored

    async def _write_back(self, stored: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Write back the overrides this replica held that ``stored`` lacks; returns ``stored`` with them."""
        lost: dict[str, dict[str, Any]] = {}
        for model, fields in self._overrides_held.items():
            missing = {name: value for name, value in fields.items() if name not in stored.get(model, {})}
            if missing:
                lost[model] = missing
        if not lost:
            return stored
        for model, fields in lost.items():
            await self.policies.save(model, fields)  # RedisUnavailable: the next refresh tries again
        self.policy_metrics.restored.inc(len(lost))
        log.warning(
            "run-time sampling overrides of %s vanished from Redis (it restarted empty or was flushed): "
            "written back as this replica last saw them",
            ", ".join(sorted(lost)),
        )
        return {**stored, **{model: {**stored.get(model, {}), **fields} for model, fields in lost.items()}}

    async def _poll_queues(self) -> None:
        await self.writer.poll_lengths(self.ingest.models)
