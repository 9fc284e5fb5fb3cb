"""Run-time sampling-policy overrides, persisted in Redis and shared by every replica.

Each model's overrides are a hash of field -> JSON value, so two replicas that
change different fields at once both keep their change (``HSET`` merges), and a
change answers the whole hash as it stands after it. Every change bumps a version
counter, so a refresh that finds it where it was reads nothing more. How many
models may hold overrides is capped (``save``'s ``max_models``).
A write that Redis fails (down, hung, out of memory) raises ``RedisUnavailable``;
``load_all`` leaves Redis's own errors to its caller, the periodic refresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Collection, Iterator
from typing import Any

from redis.asyncio import Redis

from common import keys
from common.errors import RedisUnavailable
from common.redis import REDIS_FAILED, execute, queue_script, text

log = logging.getLogger(__name__)
# KEYS: the model's hash, POLICY_MODELS, POLICY_VERSION. ARGV: the model, the cap (0: none), the count n of the
# models the writer knows, those n models, then field, value, field, value, ...
# Answers the hash after the change, or -1 when the model would be one more than the cap allows.
_SAVE = """
local n = tonumber(ARGV[3])
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  local count = redis.call('SCARD', KEYS[2]) + 1
  for i = 4, 3 + n do
    if ARGV[i] ~= ARGV[1] and redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then count = count + 1 end
  end
  if count > cap then return -1 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4 + n))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return redis.call('HGETALL', KEYS[1])
"""


class TooManyModels(Exception):
    """Storing overrides for one more model would pass the cap."""


class PolicyStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def load_changed(self, since: int | None) -> tuple[int | None, dict[str, dict[str, Any]] | None]:
        """The version of the stored overrides and, unless it is ``since``, every model's overrides."""
        raw = await self._redis.get(keys.POLICY_VERSION)
        version = None if raw is None else int(raw)
        if version is not None and version == since:
            return version, None
        return version, await self.load_all()

    async def load_all(self) -> dict[str, dict[str, Any]]:
        """Every model's stored overrides."""
        members = await self._redis.smembers(keys.POLICY_MODELS)
        models = sorted(map(text, members))
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(keys.policy(model))
        overrides: dict[str, dict[str, Any]] = {}
        for model, stored in zip(models, await execute(pipe), strict=True):
            if (fields := _decoded(model, stored)) is not None:
                overrides[model] = fields
        return overrides

    async def save(
        self, model: str, changes: dict[str, Any], *, max_models: int = 0, known: Collection[str] = ()
    ) -> dict[str, Any]:
        """Merge ``changes`` into the model's stored overrides, and return them all as they stand after it.

        With ``max_models``, a model without stored overrides is refused (``TooManyModels``) when it would make the
        models with stored overrides, together with ``known`` (the writer's own), more than ``max_models``.
        """
        fields = [item for name, value in changes.items() for item in (name, json.dumps(value))]
        if not fields:
            return await self.load(model)
        pipe = self._redis.pipeline(transaction=False)
        queue_script(
            pipe,
            _SAVE,
            [keys.policy(model), keys.POLICY_MODELS, keys.POLICY_VERSION],
            [model, max_models, len(known), *known, *fields],
        )
        with _writing("sampling policy not stored"):
            (stored,) = await execute(pipe)
        if stored == -1:
            raise TooManyModels(model)
        return _decoded(model, dict(zip(stored[::2], stored[1::2], strict=True))) or {}

    async def load(self, model: str) -> dict[str, Any]:
        """The model's stored overrides."""
        with _writing("sampling policy not read"):
            stored: dict[bytes, bytes] = await self._redis.hgetall(keys.policy(model))  # type: ignore[assignment]
        return _decoded(model, stored) or {}

    async def clear(self, model: str) -> None:
        """Forget the model's overrides: the config file's policy applies again."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.policy(model))
        pipe.srem(keys.POLICY_MODELS, model)
        pipe.incr(keys.POLICY_VERSION)
        with _writing("sampling policy not reset"):
            await execute(pipe)


def _decoded(model: str, stored: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        return {name.decode(): json.loads(value) for name, value in stored.items()}
    except ValueError:
        log.error("ignoring unreadable sampling policy of %r in Redis", model)
        return None


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    try:
        yield
    except REDIS_FAILED as error:
        log.warning("%s: %s", what, error)
        raise RedisUnavailable(what) from None
