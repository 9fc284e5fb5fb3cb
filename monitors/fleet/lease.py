"""Exactly one active owner per model: leases in Redis, renewed while the owner lives.

A lease is ``SET vai:lease:{model} <owner> NX PX ttl``; the owner renews it every third of the
TTL and every write it makes for the model checks, in the same Lua call, that it still holds the
lease (a paused owner that lost its lease cannot overwrite its successor's results). Monitor
processes register in a sorted set scored by when their membership expires, so each knows how
many are alive and takes no more than its fair share of the models.
"""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis

from common import keys
from common.redis import execute, queue_script

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
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._set_if_owner = redis.register_script(_SET_IF_OWNER)

    async def heartbeat(self) -> int:
        """Renew this process's membership and return how many monitor processes are alive."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(keys.MONITOR_MEMBERS, {self.owner: now_ms + self.ttl_ms})
        pipe.zremrangebyscore(keys.MONITOR_MEMBERS, "-inf", now_ms)
        pipe.zcard(keys.MONITOR_MEMBERS)
        *_, alive = await execute(pipe)
        return max(1, int(alive))

    async def leave(self) -> None:
        await self._redis.zrem(keys.MONITOR_MEMBERS, self.owner)

    async def acquire(self, model: str) -> bool:
        return bool(await self._redis.set(keys.monitor_lease(model), self.owner, nx=True, px=self.ttl_ms))

    async def renew(self, model: str) -> bool:
        return bool(await self._renew(keys=[keys.monitor_lease(model)], args=[self.owner, self.ttl_ms]))

    async def renew_all(self, models: list[str]) -> list[bool]:
        """:meth:`renew` for each of ``models`` in one round trip (a monitor owning a hundred models would
        otherwise spend a round trip on each, every third of the lease's life)."""
        if not models:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for model in models:
            queue_script(pipe, _RENEW, [keys.monitor_lease(model)], [self.owner, self.ttl_ms])
        return [bool(renewed) for renewed in await execute(pipe)]

    async def release(self, model: str) -> None:
        await self._release(keys=[keys.monitor_lease(model)], args=[self.owner])

    async def holder(self, model: str) -> str | None:
        value = await self._redis.get(keys.monitor_lease(model))
        return value.decode() if isinstance(value, bytes) else value

    async def set_if_owner(self, model: str, values: dict[str, bytes | str]) -> bool:
        """Write ``values`` (key -> value) only while this process holds ``model``'s lease."""
        names = list(values)
        return bool(
            await self._set_if_owner(
                keys=[keys.monitor_lease(model), *names], args=[self.owner, *(values[n] for n in names)]
            )
        )


def fair_share(models: int, monitors: int) -> int:
    """Most models one of ``monitors`` processes should own."""
    return math.ceil(models / max(1, monitors))
