"""The worker's claim of what a dead worker left pending, when some of it was trimmed from the stream meanwhile
(real Redis 6.2, whose ``XAUTOCLAIM`` answers nil, without the id, for each entry deleted while pending)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from attribution_workers.consumer import Delivery, GroupConsumer
from common import keys
from common.redis import connect

STREAM = keys.sample_stream("digits")


def test_a_trimmed_entry_behind_the_claimer_s_own_is_named_acknowledged_and_not_claimed_again(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The claiming worker holds more fresh entries of its own than the old lookup of its pending entries
    (four batches from the head of its list) read, ahead of the trimmed one: that lookup missed it, so it was
    neither handed on as trimmed nor acknowledged, and every later claim took it again."""
    redis_client.xgroup_create(STREAM, keys.CONSUMER_GROUP, id="0", mkstream=True)
    for i in range(60):
        redis_client.xadd(STREAM, {"m": str(i).encode()})
    redis_client.xreadgroup(keys.CONSUMER_GROUP, "me", {STREAM: ">"}, count=60)  # in hand, fresh
    left: list[Any] = [redis_client.xadd(STREAM, {"m": b"left"}) for _ in range(3)]
    redis_client.xreadgroup(keys.CONSUMER_GROUP, "gone", {STREAM: ">"}, count=3)
    redis_client.xclaim(STREAM, keys.CONSUMER_GROUP, "gone", 0, left, idle=3_600_000, retrycount=1)
    redis_client.xdel(STREAM, left[1])

    async def claims() -> list[list[Delivery]]:
        client = connect(redis_url, timeout_s=2.0)
        consumer = GroupConsumer(
            client, [STREAM], consumer="me", batch_size=10, block_ms=10, retry_after_ms=60_000, max_deliveries=10
        )
        try:
            first = await consumer.claim_idle(STREAM)
            redis_client.xclaim(STREAM, keys.CONSUMER_GROUP, "gone", 0, [left[0], left[2]], idle=3_600_000)
            return [first, await consumer.claim_idle(STREAM)]
        finally:
            await client.aclose()

    first, second = asyncio.run(claims())
    assert first == [
        Delivery(left[1], None, 0),
        Delivery(left[0], {b"m": b"left"}, 2),
        Delivery(left[2], {b"m": b"left"}, 2),
    ]
    assert [(d.entry_id, d.fields is None) for d in second] == [(left[0], False), (left[2], False)]
    pending = redis_client.xpending_range(STREAM, keys.CONSUMER_GROUP, "-", "+", 100, consumername="me")
    assert left[1] not in [item["message_id"] for item in pending] and len(pending) == 62
