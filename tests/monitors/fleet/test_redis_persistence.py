"""A monitor says at start-up when Redis keeps nothing across a restart (the drift baselines and labelled windows
would then be lost for good, should Redis restart while no monitor runs), and stays quiet when it persists its data
or does not say (``CONFIG`` refused, as by managed services). Real redis-servers."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
from redis.asyncio import Redis

from common.embedded_redis import EmbeddedRedis
from monitors.fleet.persistence import unpersisted, warn_if_unpersisted


def _ask(url: str) -> tuple[str | None, bool]:
    async def ask() -> tuple[str | None, bool]:
        client = Redis.from_url(url)
        try:
            return await unpersisted(client), await warn_if_unpersisted(client)
        finally:
            await client.aclose()

    return asyncio.run(ask())


def test_a_redis_without_persistence_is_warned_of(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="monitors.fleet.persistence"):
        assert _ask(redis_url) == ("appendonly no, and no save points", True)  # the suite's Redis: no persistence
    assert "keeps nothing across a restart" in caplog.text and "appendonly yes" in caplog.text


def test_snapshots_or_an_append_only_file_are_persistence(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="monitors.fleet.persistence"):
        assert _ask(own_redis.url) == (None, False)  # appendonly yes
        with redis.Redis.from_url(own_redis.url) as client:
            client.config_set("appendonly", "no")
            client.config_set("save", "3600 1")
        assert _ask(own_redis.url) == (None, False)  # RDB snapshots
    assert not caplog.records


def test_a_redis_that_refuses_config_is_not_warned_of(
    redis_client: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-config"])
    try:
        with caplog.at_level(logging.WARNING, logger="monitors.fleet.persistence"):
            assert _ask(redis_url.replace("redis://", "redis://limited:pw@")) == (None, False)
        assert not caplog.records
    finally:
        redis_client.acl_deluser("limited")
