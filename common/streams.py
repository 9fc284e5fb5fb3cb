"""Consumer-group mechanics shared by the stream readers (the attribution workers on the sample streams, the
monitors on the prediction feeds): claiming what another consumer left pending, alike on every Redis version, and
forgetting the consumers of processes that are gone.

An entry deleted from the stream while pending (trimmed by the writers' ``MAXLEN ~``, or ``XDEL``) stays in the
group's list of pending entries. ``XAUTOCLAIM`` on Redis 7 drops it from that list and names it in a third element
of its reply; Redis 6.2 (the embedded Redis's version) claims it, answers nil in its place (no id), and never drops
it: unless it is acknowledged, every later claim takes it again. :func:`claim_pending` finds such ids and
acknowledges them, so a caller sees only live entries and the ids that vanished."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from common.redis import execute, text

Entry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as redis-py reads it: its id and its fields."""
SCAN_ROUND = "0-0"
"""The cursor of a claim that went round the group's pending entries: the next one starts at the head again."""
_PENDING_PAGE = 100
"""Pending entries looked up per ``XPENDING`` while looking for the ids Redis 6.2 left out."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """One page of ``XAUTOCLAIM``, the same whichever Redis answered."""

    entries: list[Entry]
    """The live entries claimed, now pending on the claiming consumer, in id order."""
    vanished: list[bytes]
    """Ids claimed whose entries were no longer in the stream: out of the pending entries now (acknowledged), so
    no claim takes them again. Nothing is left of them to read."""
    cursor: str
    """Where the next page starts; :data:`SCAN_ROUND` once the claim went round every pending entry."""

    @property
    def went_round(self) -> bool:
        """This page was the last of the pending entries."""
        return self.cursor == SCAN_ROUND


async def claim_pending(
    redis: Redis, stream: str, group: str, consumer: str, *, min_idle_ms: int, start: bytes | str, count: int
) -> Claimed:
    """``XAUTOCLAIM`` of at most ``count`` entries of ``group`` idle for ``min_idle_ms``, from ``start``, for
    ``consumer``; the entries that vanished while pending are acknowledged (Redis 7 has done it itself)."""
    reply: Any = await redis.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, start_id=start, count=count)
    raw_cursor, entries, *deleted = reply
    cursor = text(raw_cursor)
    reported = [_as_bytes(entry_id) for entry_id in deleted[0]] if deleted else []  # Redis 7: out of the group
    live: list[Entry] = []
    unacked: list[bytes] = []
    unnamed = 0
    for entry_id, fields in entries:
        if entry_id is None:  # Redis 6.2: deleted, and pending on ``consumer`` now
            unnamed += 1
        elif fields:
            live.append((_as_bytes(entry_id), fields))
        else:
            unacked.append(_as_bytes(entry_id))
    if unnamed:
        named = await _vanished_on(redis, stream, group, consumer, start=text(start), cursor=cursor, live=live)
        unacked += [entry_id for entry_id in named if entry_id not in unacked]
    if unacked:
        await redis.xack(stream, group, *unacked)
    return Claimed(entries=live, vanished=reported + unacked, cursor=cursor)


async def _vanished_on(
    redis: Redis, stream: str, group: str, consumer: str, *, start: str, cursor: str, live: list[Entry]
) -> list[bytes]:
    """The ids pending on ``consumer`` in the page just claimed (from ``start`` up to ``cursor``) whose entries are
    no longer in the stream. Those of the page's live entries are known to be there; the rest of the consumer's
    pending entries in the range (its own, not idle enough to be claimed) are looked up, one round trip a page."""
    known = {entry_id for entry_id, _ in live}
    low, high = start, "+" if cursor == SCAN_ROUND else f"({cursor}"
    found: list[bytes] = []
    while True:
        pending: list[dict[str, Any]] = await redis.xpending_range(
            stream, group, min=low, max=high, count=_PENDING_PAGE, consumername=consumer
        )
        ids = [_as_bytes(item["message_id"]) for item in pending]
        unknown = [entry_id for entry_id in ids if entry_id not in known]
        if unknown:
            pipe = redis.pipeline(transaction=False)
            for entry_id in unknown:
                pipe.xrange(stream, entry_id, entry_id, count=1)
            found += [entry_id for entry_id, there in zip(unknown, await execute(pipe), strict=True) if not there]
        if len(ids) < _PENDING_PAGE:
            return found
        low = f"({text(ids[-1])}"


def _as_bytes(entry_id: bytes | str) -> bytes:
    return entry_id if isinstance(entry_id, bytes) else entry_id.encode()


async def forget_gone_consumers(redis: Redis, stream: str, group: str, *, keep: str, idle_ms: int) -> list[str]:
    """Delete the consumers of ``group`` on ``stream`` other than ``keep`` that hold no pending entry and have not
    read for ``idle_ms``: every process that ever read (a pod name with a pid) stays in the group otherwise, one
    more with each restart or rollout. One with pending entries is left until they are claimed. Returns the names
    deleted."""
    gone = []
    consumers: list[dict[str, Any]] = await redis.xinfo_consumers(stream, group)
    for consumer in consumers:
        name = text(consumer["name"])
        if name != keep and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
            await redis.xgroup_delconsumer(stream, group, name)
            gone.append(name)
    return gone
