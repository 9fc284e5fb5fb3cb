"""Run-time sampling-policy overrides, persisted in Redis and shared by every replica.

Each model's overrides are a hash of field -> JSON value, so two replicas that
change different fields at once both keep their change (``HSET`` merges).
A write that Redis fails (down, hung, out of memory) raises ``RedisUnavailable``;
``load_all`` leaves Redis's own errors to its caller, the periodic refresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from redis.asyncio import Redis

from common import keys
from common.errors import RedisUnavailable
from common.redis import REDIS_FAILED, execute, text

log = logging.getLogger(__name__)


class PolicyStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def load_all(self) -> dict[str, dict[str, Any]]:
        """Every model's stored overrides."""
        members = await self._redis.smembers(keys.POLICY_MODELS)
        models = sorted(map(text, members))
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(keys.policy(model))
        overrides: dict[str, dict[str, Any]] = {}
        for model, stored in zip(models, await execute(pipe), strict=True):
            try:
                overrides[model] = {name.decode(): json.loads(value) for name, value in stored.items()}
            except ValueError:
                log.error("ignoring unreadable sampling policy of %r in Redis", model)
        return overrides

    async def save(self, model: str, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the model's stored overrides."""
        if not changes:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(keys.policy(model), mapping={name: json.dumps(value) for name, value in changes.items()})
        pipe.sadd(keys.POLICY_MODELS, model)
        with _writing("sampling policy not stored"):
            await execute(pipe)

    async def clear(self, model: str) -> None:
        """Forget the model's overrides: the config file's policy applies again."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.policy(model))
        pipe.srem(keys.POLICY_MODELS, model)
        with _writing("sampling policy not reset"):
            await execute(pipe)


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    try:
        yield
    except REDIS_FAILED as error:
        log.warning("%s: %s", what, error)
        raise RedisUnavailable(what) from None
