"""Exactly one active owner per model: leases in Redis, renewed while the owner lives.

A lease is ``SET vai:lease:{model} <owner> NX PX ttl``; the owner renews it every third of the
TTL and every write it makes for the model checks, in the same Lua call, that it still holds the
lease (a paused owner that lost its lease cannot overwrite its successor's results). Monitor
processes register in a sorted set scored by when their membership expires, by Redis's clock
(the hosts' clocks may disagree by more than the TTL), so each knows how many are alive and
takes no more than its fair share of the models. Every script runs as ``EVAL`` (Redis caches it
by its SHA1), so a pipeline of them stays one round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from common import keys
from common.redis import execute, queue_script

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
        await self._redis.zrem(keys.MONITOR_MEMBERS, self.owner)

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


def fair_share(models: int, monitors: int) -> int:
    """Most models one of ``monitors`` processes should own."""
    return math.ceil(models / max(1, monitors))
