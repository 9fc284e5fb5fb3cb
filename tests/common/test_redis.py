"""Helpers for Redis calls, against a real Redis."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from common.redis import connect, execute, queue_script, rounds, stream_entry_time_s


@pytest.mark.anyio
async def test_a_script_in_a_pipeline_costs_no_round_trip_of_its_own(redis_url: str, redis_client: redis.Redis) -> None:
    """redis-py's ``Script`` on a pipeline sends ``SCRIPT EXISTS`` (and ``SCRIPT LOAD``) before it; ``EVAL``
    carries the script, so the writers' batches stay one round trip, even on a Redis that restarted empty."""
    redis_client.script_flush()  # as after a restart: no script cached
    redis_client.config_resetstat()
    client = connect(redis_url, timeout_s=5.0)
    try:
        pipe = client.pipeline(transaction=False)
        queue_script(pipe, "return redis.call('INCRBY', KEYS[1], ARGV[1])", ["n"], [5])
        pipe.get("n")
        assert await execute(pipe) == [5, b"5"]
    finally:
        await client.aclose()
    commands = set(redis_client.info("commandstats"))
    assert "cmdstat_eval" in commands and "cmdstat_script" not in commands, commands


@pytest.mark.parametrize(
    "entry_id", [pytest.param(b"1700000000123-7", id="bytes"), pytest.param("1700000000123-7", id="text")]
)
def test_a_stream_entry_s_time_is_the_milliseconds_of_its_id(entry_id: bytes | str) -> None:
    assert stream_entry_time_s(entry_id) == pytest.approx(1_700_000_000.123)


@pytest.mark.anyio
async def test_rounds_run_at_once_and_log_a_redis_outage_once_until_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    """The first round runs before any wait; failing rounds are retried, logged once, and the recovery said."""
    outcomes: list[BaseException | None] = [RedisConnectionError("down"), RedisConnectionError("down"), None, None]
    ran: list[int] = []

    async def step() -> None:
        ran.append(len(ran))
        outcome = outcomes[len(ran) - 1]
        if outcome is not None:
            raise outcome

    with caplog.at_level(logging.INFO, logger="common.redis"), pytest.raises(asyncio.CancelledError):
        await rounds(step, period_s=0.01, what="monitor of m", stopping=lambda: len(ran) >= len(outcomes))
    assert ran == [0, 1, 2, 3]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["monitor of m: redis failed (ConnectionError: down); retrying", "monitor of m: redis is back"]


@pytest.mark.anyio
async def test_rounds_end_at_once_when_stopping_before_the_first() -> None:
    async def step() -> None:
        raise AssertionError("never run")

    await rounds(step, what="monitor of m", stopping=lambda: True)
