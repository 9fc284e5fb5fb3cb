"""Claiming what another consumer left pending (``common.streams.claim_pending``), against a real Redis: entries
deleted from the stream while pending are acknowledged, never handed on, and never claimed again."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from common.redis import connect
from common.streams import SCAN_ROUND, Claimed, claim_pending

STREAM = "s"
GROUP = "g"
IDLE_MS = 3_600_000
"""Idle time given to what the gone consumer left, far past ``MIN_IDLE_MS``."""
MIN_IDLE_MS = 60_000


def left_pending(client: redis.Redis, count: int, *, by: str = "gone") -> list[Any]:
    """``count`` new entries read by ``by`` and never acknowledged, idle for an hour (its process died)."""
    ids: list[Any] = [client.xadd(STREAM, {b"n": str(n).encode()}) for n in range(count)]
    client.xreadgroup(GROUP, by, {STREAM: ">"}, count=count)
    client.xclaim(STREAM, GROUP, by, 0, ids, idle=IDLE_MS)
    return ids


def pending_ids(client: redis.Redis, consumer: str | None = None) -> list[Any]:
    found = client.xpending_range(STREAM, GROUP, "-", "+", 10_000, consumername=consumer)
    return [item["message_id"] for item in found]


async def claim(url: str, *, count: int = 10, start: str = SCAN_ROUND) -> Claimed:
    client = connect(url, timeout_s=5.0)
    try:
        return await claim_pending(client, STREAM, GROUP, "me", min_idle_ms=MIN_IDLE_MS, start=start, count=count)
    finally:
        await client.aclose()


@pytest.fixture
def group(redis_client: redis.Redis) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)


@pytest.mark.usefixtures("group")
@pytest.mark.parametrize("how", [pytest.param("xdel", id="deleted"), pytest.param("xtrim", id="trimmed-by-maxlen")])
@pytest.mark.anyio
async def test_entries_deleted_while_pending_are_acknowledged_and_the_live_ones_claimed(
    redis_url: str, redis_client: redis.Redis, how: str
) -> None:
    """Redis 6.2 answers nil for each of them, without its id, and keeps it pending on the claimer: the claim
    names and acknowledges them, so a second claim from the head finds nothing left to take."""
    ids = left_pending(redis_client, 5)
    if how == "xdel":
        gone = [ids[1], ids[3]]
        redis_client.xdel(STREAM, *gone)
    else:
        gone = ids[:2]
        redis_client.xtrim(STREAM, maxlen=3, approximate=False)
    claimed = await claim(redis_url)
    assert [entry_id for entry_id, _ in claimed.entries] == [i for i in ids if i not in gone]
    assert all(fields for _, fields in claimed.entries)
    assert sorted(claimed.vanished) == sorted(gone)
    assert claimed.went_round
    assert pending_ids(redis_client) == [i for i in ids if i not in gone], "only the live ones, now on the claimer"
    assert pending_ids(redis_client, "me") == pending_ids(redis_client)
    redis_client.xclaim(STREAM, GROUP, "gone", 0, pending_ids(redis_client), idle=IDLE_MS)  # idle again
    again = await claim(redis_url)
    assert (len(again.entries), again.vanished) == (3, [])


@pytest.mark.usefixtures("group")
@pytest.mark.anyio
async def test_the_claimer_s_own_pending_entries_are_not_taken_for_vanished_ones(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """More of the claimer's own fresh entries (not idle enough to be claimed) than one lookup of its pending
    entries returns lie in the page around the nil: only the deleted one is named, and the others stay pending."""
    own = left_pending(redis_client, 150, by="me")
    redis_client.xclaim(STREAM, GROUP, "me", 0, own, idle=0)  # fresh: this consumer is working on them
    ids = left_pending(redis_client, 3)
    redis_client.xdel(STREAM, ids[1])
    claimed = await claim(redis_url, count=20)  # an XAUTOCLAIM looks at up to ten times its count
    assert claimed.went_round
    assert [entry_id for entry_id, _ in claimed.entries] == [ids[0], ids[2]]
    assert claimed.vanished == [ids[1]]
    assert pending_ids(redis_client, "me") == [*own, ids[0], ids[2]]


@pytest.mark.usefixtures("group")
@pytest.mark.anyio
async def test_a_page_s_cursor_leads_on_to_the_next_and_its_vanished_ids(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A claim that stops mid-way answers where to go on; each nil (counted in the page's ``count``) is looked for
    in its own page's range."""
    ids = left_pending(redis_client, 6)
    redis_client.xdel(STREAM, ids[1], ids[4])
    pages: list[tuple[list[bytes], list[bytes]]] = []
    cursor = SCAN_ROUND
    while True:
        page = await claim(redis_url, count=2, start=cursor)
        pages.append(([entry_id for entry_id, _ in page.entries], page.vanished))
        if page.went_round:
            break
        cursor = page.cursor
    assert pages == [([ids[0]], [ids[1]]), ([ids[2], ids[3]], []), ([ids[5]], [ids[4]])]
    assert pending_ids(redis_client) == [ids[0], ids[2], ids[3], ids[5]]


class _Redis7:
    """What ``XAUTOCLAIM`` answers on Redis 7 (the suite's Redis is 6.2): the deleted ids in a third element, out
    of the group already. Any other call (an ``XACK``, an ``XPENDING``) fails the test."""

    async def xautoclaim(self, *args: Any, **kwargs: Any) -> list[Any]:
        return [b"0-0", [(b"1-0", {b"n": b"0"})], [b"2-0", b"3-0"]]


@pytest.mark.anyio
async def test_redis_7_s_deleted_ids_are_reported_as_vanished_without_another_call() -> None:
    claimed = await claim_pending(
        _Redis7(),  # type: ignore[arg-type]
        STREAM,
        GROUP,
        "me",
        min_idle_ms=0,
        start=SCAN_ROUND,
        count=10,
    )
    assert claimed == Claimed(entries=[(b"1-0", {b"n": b"0"})], vanished=[b"2-0", b"3-0"], cursor=SCAN_ROUND)
