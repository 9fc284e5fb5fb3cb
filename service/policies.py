"""Run-time sampling-policy overrides kept in step across replicas: an admin's change is stored in Redis for every
replica, each replica adopts what Redis holds at every refresh, and overrides that Redis lost with its data are
written back from the replicas' copies. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from common import keys
from common.errors import InvalidInput, RedisUnavailable, TooManyModels
from common.redis import REDIS_FAILED
from sampler.policy import SamplingPolicy, SamplingPolicyPatch
from sampler.policy_store import PolicyStore
from sampler.policy_store import TooManyModels as StoreFull
from sampler.sampler import Sampler
from service.events.errors import first_problem
from service.metrics import PolicyMetrics

log = logging.getLogger(__name__)
MARK_TTL_S = 3600
"""The time to live of a replica's mark (``keys.sidecar_mark``), set again at every policy refresh. A replica
that has not reached Redis for half of it cannot tell its overrides lost from reset, and adopts what Redis holds."""
POLICY_FULL_READ_S = 60.0
"""Longest a replica goes without reading every stored policy, even when their version counter has not moved (a
writer of an earlier release changes them without bumping it)."""
_REFRESH_FAILED: tuple[type[BaseException], ...] = (RedisUnavailable, *REDIS_FAILED)
"""A policy refresh that fails so (Redis down, or refusing to take back lost overrides) waits for the next."""


class PolicySync:
    """This replica's side of the stored sampling policies: :meth:`update` and :meth:`reset` for the routes,
    :meth:`refresh` now and then."""

    def __init__(
        self,
        redis: Redis,
        sampler: Sampler,
        metrics: PolicyMetrics,
        *,
        max_models: int,
        known_models: Callable[[], set[str]],
    ) -> None:
        self._redis = redis
        self._sampler = sampler
        self._metrics = metrics
        self._max_models = max_models
        self._known_models = known_models
        """The models this replica knows (has had events or a reference of)."""
        self.store = PolicyStore(redis)
        self.replica_id = uuid.uuid4().hex
        """This process's id in Redis (its mark, ``keys.sidecar_mark``)."""
        self._overrides_held: dict[str, dict[str, Any]] = {}
        """The run-time overrides Redis held at the last refresh, with this replica's own changes since."""
        self._marked_at: float | None = None
        """When (monotonic) this replica last saw its mark in Redis, or set it."""
        self._version: int | None = None
        """The version of the stored overrides (``PolicyStore.load_changed``) ``_overrides_held`` was read at."""
        self._read_at = 0.0
        """When (monotonic) this replica last read every stored policy."""
        self._lock = asyncio.Lock()
        """Held by each policy change and refresh of this replica, so that each installs what Redis held after it,
        in the order they reached Redis (one lock, not one per model: changes are rare, admin-only and quick)."""

    @property
    def held(self) -> dict[str, dict[str, Any]]:
        """A copy of the overrides this replica holds, per model."""
        return {model: dict(fields) for model, fields in self._overrides_held.items()}

    async def update(self, model: str, patch: SamplingPolicyPatch) -> SamplingPolicy:
        """Apply a partial policy change, persist it for every replica, and return the result: the model's policy
        with every change stored so far, this one and any other replica's.

        A model that neither has stored overrides nor is known to this replica is refused (``TooManyModels``) once
        the models with stored overrides and those this replica knows are ``VAI_MAX_MODELS``: overrides may be set
        before a model's first event, but a name that no replica serves must not make state without bound."""
        changes = patch.changes()
        try:
            self._sampler.preview(model, changes)
        except ValidationError as error:
            field, message = first_problem(error)
            raise InvalidInput(message, field=field) from None
        known = self._known_models()
        cap = 0 if model in known else self._max_models
        async with self._lock:
            try:  # RedisUnavailable (503) when Redis fails
                stored = await self.store.save(model, changes, max_models=cap, known=sorted(known))
            except StoreFull:
                raise TooManyModels(
                    f"model: unknown model and already {cap} models with a sampling policy or events "
                    "(raise VAI_MAX_MODELS)",
                    detail={"reason": "too_many_models"},
                ) from None
            return self._install(model, stored, fallback=self._sampler.preview(model, changes)[1])

    def _install(self, model: str, stored: dict[str, Any], *, fallback: dict[str, Any]) -> SamplingPolicy:
        """Adopt ``stored``, what Redis holds for ``model`` after a change; ``fallback`` (this replica's view with
        the change) when what Redis holds is invalid, as the refresh would leave it too."""
        try:
            policy = self._sampler.set_overrides(model, stored)
        except ValidationError:
            log.error("ignoring invalid sampling policy of %r in Redis", model)
            stored, policy = fallback, self._sampler.set_overrides(model, fallback)
        if stored:
            self._overrides_held[model] = dict(stored)
        else:
            self._overrides_held.pop(model, None)
        return policy

    async def reset(self, model: str) -> SamplingPolicy:
        """Drop the run-time overrides of ``model``."""
        async with self._lock:
            await self.store.clear(model)  # RedisUnavailable (503) when Redis fails
            self._overrides_held.pop(model, None)
            return self._sampler.set_overrides(model, {})

    async def refresh(self) -> bool:
        """Adopt what Redis holds; ``False`` when Redis failed (the next refresh tries again)."""
        async with self._lock:
            try:
                stored = await self._stored_overrides()
            except _REFRESH_FAILED as error:
                log.debug("policy refresh skipped: %s", type(error).__name__)
                return False
            if stored is not None:
                self._sampler.sync_overrides(stored)
        return True

    async def _stored_overrides(self) -> dict[str, dict[str, Any]] | None:
        """The run-time overrides to adopt from Redis; ``None`` when Redis lost its data while they were read (the
        next refresh sees it). Overrides that vanished while this replica's mark stayed were reset (``DELETE`` on
        any replica); those that vanished with it were lost with Redis's data: written back, as last seen here.
        Redis is where an admin's change lives, but when Redis lost it the replicas' copies are the only ones."""
        mark = keys.sidecar_mark(self.replica_id)
        marked = bool(await self._redis.exists(mark))
        now = time.monotonic()
        fresh = marked and now - self._read_at < POLICY_FULL_READ_S  # a lost mark: Redis may have lost all
        since = self._version if fresh else None
        version, read = await self.store.load_changed(since)
        if read is None:  # unchanged since the last read (a change of this replica's moves the version too)
            stored = self.held
        else:
            stored, self._read_at = read, now
        if marked:
            if not await self._redis.expire(mark, MARK_TTL_S):  # EXPIRE: Redis out of memory still takes it
                return None  # lost between the two calls: the next refresh writes back what vanished
            self._marked_at = now
        else:
            if self._marked_at is not None and now - self._marked_at < MARK_TTL_S / 2:  # not expired: lost
                stored = await self._write_back(stored)
            try:
                await self._redis.set(mark, 1, ex=MARK_TTL_S)
                self._marked_at = now
            except REDIS_FAILED as error:  # out of memory, say: what Redis holds is adopted all the same
                log.debug("sidecar mark not set: %s", type(error).__name__)
        self._overrides_held = {model: dict(fields) for model, fields in stored.items()}
        self._version = version
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
            await self.store.save(model, fields)  # RedisUnavailable: the next refresh tries again
        self._metrics.restored.inc(len(lost))
        log.warning(
            "run-time sampling overrides of %s vanished from Redis (it restarted empty or was flushed): "
            "written back as this replica last saw them",
            ", ".join(sorted(lost)),
        )
        return {**stored, **{model: {**stored.get(model, {}), **fields} for model, fields in lost.items()}}
