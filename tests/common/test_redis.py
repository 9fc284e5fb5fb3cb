"""Helpers for Redis calls, against a real Redis."""

from __future__ import annotations

import pytest
import redis

from common.redis import connect, execute, queue_script


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
