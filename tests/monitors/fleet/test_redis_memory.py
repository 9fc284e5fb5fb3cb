"""Each monitor exports how full the shared Redis is (INFO memory), for the alert that it is about to refuse writes."""

from __future__ import annotations

import asyncio

import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis as AsyncRedis

from monitors.fleet.redis_memory import RedisMemory


def test_the_gauges_read_redis_s_own_figures(redis_url: str, redis_client: redis.Redis) -> None:
    registry = CollectorRegistry()
    redis_client.config_set("maxmemory", str(512 * 2**20))
    try:

        async def read() -> None:
            client = AsyncRedis.from_url(redis_url)
            try:
                await RedisMemory(client, registry).read()
            finally:
                await client.aclose()

        asyncio.run(read())
        used = registry.get_sample_value("vai_redis_used_memory_bytes")
        assert used is not None and 0 < used < 512 * 2**20
        assert registry.get_sample_value("vai_redis_maxmemory_bytes") == 512 * 2**20
    finally:
        redis_client.config_set("maxmemory", "0")
