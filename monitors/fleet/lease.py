"""Exactly one active owner per model: leases in Redis, renewed while the owner lives.

A lease is ``SET vai:lease:{model} <owner> NX PX ttl``; the owner renews it every third of the
TTL and every write it makes for the model checks, in the same Lua call, that it still holds the
lease (a paused owner that lost its lease cannot overwrite its successor's results). Monitor
processes register in a sorted set scored by when their membership expires, by Redis's clock
(the hosts' clocks may disagree by more than the TTL), so each knows how many are alive and
takes no more than its fair share of the models. Each member also publishes its drift settings
(``vai:drift-configs``, a field per member), which count while its membership does. Every script
runs as ``EVAL`` (Redis caches it by its SHA1), so a pipeline of them stays one round trip.

A full Redis (``maxmemory`` under ``noeviction``) refuses the heartbeat's ``ZADD`` and the settings'
``HSET`` but not a renewal (``PEXPIRE`` takes no memory): the owner renews first and goes on without
the rest, so its models stay where they are.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from common import keys
from common.redis import execute, queue_script, text
from monitors.drift.config import DriftConfig

WIDE = 1 << 20
"""An embedding width above any ``pca_components``: what :func:`strictest` compares settings at when the width of
the embeddings is not known."""

_HEARTBEAT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return redis.call('ZCARD', KEYS[1])
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_LIVE_CONFIGS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local live = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now_ms, '+inf')) do live[member] = true end
local found = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if live[all[i]] then
    found[#found + 1] = all[i]
    found[#found + 1] = all[i + 1]
  elseif ARGV[1] == '1' then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return found
"""
"""The drift settings of the live members (field, value, ...), by Redis's clock; with ``ARGV[1]`` 1, the fields of
members no longer alive are deleted (``HDEL`` frees memory: a full Redis allows it)."""
_EPOCH = """
local epoch = redis.call('GET', KEYS[1])
if epoch then return epoch end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_SET_IF_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i]) end
return 1
"""


class Leases:
    """The lease operations of one monitor process (``owner``)."""

    def __init__(self, redis: Redis, *, owner: str, ttl_ms: int) -> None:
        if ttl_ms < 100:
            raise ValueError(f"lease ttl_ms must be at least 100, got {ttl_ms}")
        self._redis = redis
        self.owner = owner
        self.ttl_ms = ttl_ms

    async def heartbeat(self) -> int:
        """Renew this process's membership and return how many monitor processes are alive."""
        alive = await self._eval(_HEARTBEAT, [keys.MONITOR_MEMBERS], [self.owner, self.ttl_ms])
        return max(1, int(alive))

    async def leave(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrem(keys.MONITOR_MEMBERS, self.owner)
        pipe.hdel(keys.DRIFT_CONFIGS, self.owner)
        await execute(pipe)

    async def publish_config(self, config_json: str) -> None:
        """Say which drift settings this process calibrates with (they count while its membership does)."""
        await self._redis.hset(keys.DRIFT_CONFIGS, self.owner, config_json)

    async def live_configs(self) -> dict[str, str]:
        """Monitor id -> drift settings (JSON) of every live member, this one included once its heartbeat counts;
        the settings of members gone are deleted on the way."""
        return await live_drift_configs(self._redis, prune=True)

    async def epoch(self) -> str:
        """Redis's epoch (``keys.EPOCH``): the one stored, or a new one stored now when there is none."""
        epoch: bytes = await self._eval(_EPOCH, [keys.EPOCH], [uuid.uuid4().hex])
        return text(epoch)

    async def acquire(self, model: str) -> bool:
        return bool(await self._redis.set(keys.monitor_lease(model), self.owner, nx=True, px=self.ttl_ms))

    async def renew_all(self, models: list[str]) -> list[bool]:
        """Renew the lease of each of ``models`` still held, in one round trip (a monitor owning a hundred models
        would otherwise spend a round trip on each, every third of the lease's life)."""
        if not models:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            queue_script(pipe, _RENEW, [keys.monitor_lease(model)], [self.owner, self.ttl_ms])
        return [bool(renewed) for renewed in await execute(pipe)]

    async def release(self, model: str) -> None:
        await self._eval(_RELEASE, [keys.monitor_lease(model)], [self.owner])

    async def set_if_owner(self, model: str, values: dict[str, bytes | str]) -> bool:
        """Write ``values`` (key -> value) only while this process holds ``model``'s lease."""
        names = list(values)
        return bool(
            await self._eval(
                _SET_IF_OWNER, [keys.monitor_lease(model), *names], [self.owner, *(values[n] for n in names)]
            )
        )

    async def _eval(self, script: str, names: Sequence[str], args: Sequence[bytes | str | int]) -> Any:
        """One script as ``EVAL``, as :func:`queue_script` queues them on a pipeline."""
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, script, names, args)
        (answer,) = await execute(pipe)
        return answer


async def live_drift_configs(redis: Redis, *, prune: bool = False) -> dict[str, str]:
    """Monitor id -> drift settings (``DriftConfig`` JSON) of the live monitors (``keys.DRIFT_CONFIGS``); a sidecar
    reads it without ``prune``, writing nothing."""
    pipe = redis.pipeline(transaction=False)
    queue_script(pipe, _LIVE_CONFIGS, [keys.DRIFT_CONFIGS, keys.MONITOR_MEMBERS], [int(prune)])
    (flat,) = await execute(pipe)
    return {text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)}


async def live_drift_settings(redis: Redis) -> list[DriftConfig]:
    """The distinct drift settings of the live monitors that this release can read."""
    return parse_configs((await live_drift_configs(redis)).values())


def parse_configs(bodies: Iterable[str]) -> list[DriftConfig]:
    """The distinct settings of ``bodies`` (``DriftConfig`` JSON), leaving out what this release cannot read."""
    found = []
    for body in sorted(set(bodies)):
        try:
            found.append(DriftConfig.model_validate_json(body))
        except ValidationError:  # a monitor of another release: its settings are its own to check
            continue
    return found


def strictest(configs: Iterable[DriftConfig], width: int = WIDE) -> DriftConfig | None:
    """The settings of ``configs`` that need the most distinct reference rows for ``width``-d embeddings (the same
    one for every caller of the same settings)."""
    return max(configs, key=lambda c: (c.least_rows(width), c.least_rows(0), c.model_dump_json()), default=None)


def fair_share(models: int, monitors: int) -> int:
    """Most models one of ``monitors`` processes should own."""
    return math.ceil(models / max(1, monitors))
