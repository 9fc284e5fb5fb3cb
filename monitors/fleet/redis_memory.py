"""How full the fleet's Redis is, exported by every monitor: the one figure that says a fleet is about to stop.

Every sidecar, monitor and worker writes to one Redis, and the shipped configurations run it with a ``maxmemory``
and ``noeviction``: once full, it refuses every write (samples, monitoring records, prediction records, results),
and each role counts its losses under its own name. Its retention is set by time (``VAI_EXPLANATION_TTL_S``,
``VAI_PREDICTION_TTL_S``), so what it settles at depends on traffic: a soak at ~225 events/s grew it 6.6 MB a
minute. ``INFO memory`` is read every :data:`POLL_S`; alert VaiRedisMemoryHigh reads the ratio of the gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry, Gauge
from redis.asyncio import Redis

from common.redis import REDIS_FAILED

log = logging.getLogger(__name__)
POLL_S = 15.0
"""How often ``INFO memory`` is read."""


class RedisMemory:
    """``vai_redis_used_memory_bytes`` and ``vai_redis_maxmemory_bytes`` from the Redis this monitor uses."""

    def __init__(self, redis: Redis, registry: CollectorRegistry) -> None:
        self._redis = redis
        self.used = Gauge(
            "vai_redis_used_memory_bytes",
            "Memory the shared Redis holds (INFO memory used_memory), read every 15 s by each monitor.",
            registry=registry,
        )
        self.limit = Gauge(
            "vai_redis_maxmemory_bytes",
            "The shared Redis's maxmemory (0: none; writes are refused once used memory reaches it under "
            "noeviction, as the shipped configurations run it).",
            registry=registry,
        )

    async def read(self) -> None:
        """One reading; Redis errors are the caller's."""
        info = await self._redis.info("memory")
        self.used.set(float(info.get("used_memory", 0)))
        self.limit.set(float(info.get("maxmemory", 0)))

    async def run(self) -> None:
        """Read every :data:`POLL_S` until cancelled; an unanswered reading leaves the last figures (the lease loop
        says when Redis is away)."""
        while True:
            with contextlib.suppress(*REDIS_FAILED):
                await self.read()
            await asyncio.sleep(POLL_S)
