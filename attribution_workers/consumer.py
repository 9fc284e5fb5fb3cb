"""One consumer of the ``attribution`` group on the sample streams: reading, reclaiming, settling entries.

The dead-letter stream of a model is bounded: ``XTRIM MAXLEN ~`` after each add keeps about
``dead_letter_max_entries`` of the newest, and the key has the explanations' retention as its TTL, refreshed
on each add. A message over ``dead_letter_max_input_bytes`` is kept without its ``input`` (an operator needs
the error and the event, not the tensor, which may be personal data), and ``m_bytes`` notes its size as sent.

Redis counts a delivery at each ``XREADGROUP`` and ``XAUTOCLAIM``, whether or not the worker then got to try the
entry; :meth:`GroupConsumer.uncount` takes back the deliveries that Redis itself failed (see
:mod:`attribution_workers.worker`). ``XPENDING`` and ``XCLAIM`` are not refused when Redis is out of memory, so
this works while ``OOM`` refuses every result.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from common.redis import execute, queue_script, text
from common.streams import SCAN_ROUND, claim_pending, forget_gone_consumers
from sampler.contract import MESSAGE_FIELD

log = logging.getLogger(__name__)
GONE_AFTER_MS = 3_600_000
"""A consumer that has not read for this long (a live worker reads every ``block_ms``) and holds nothing pending
belongs to a worker that is gone."""
Fields = dict[bytes, bytes]

_UNCOUNT = """
local taken = 0
for i = 3, #ARGV, 2 do
  local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #held == 1 and tonumber(held[1][4]) == tonumber(ARGV[i + 1]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', tonumber(ARGV[i + 1]) - 1, 'JUSTID')
    taken = taken + 1
  end
end
return taken
"""
"""Set back by one the delivery count of each (id, count) still pending on this consumer at that count: an entry
another worker has claimed since (or that was acked) is left alone. ``JUSTID`` does not count a delivery."""

_REFRESH = """
local kept = 0
for i = 3, #ARGV do
  local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #held == 1 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""
"""Restart the idle time of each id still pending on this consumer (``XCLAIM`` to itself), so that no
``XAUTOCLAIM`` takes it while it is being worked on; one acked, or claimed by another worker meanwhile, is left
alone. ``JUSTID`` counts no delivery."""


@dataclass(frozen=True, slots=True)
class Delivery:
    entry_id: bytes
    fields: Fields | None
    """None when the entry was trimmed from the stream while pending."""
    deliveries: int


class GroupConsumer:
    """Stream mechanics of one consumer; what an entry means is the worker's business."""

    def __init__(
        self,
        redis: Redis,
        streams: Iterable[str],
        *,
        consumer: str,
        batch_size: int,
        block_ms: int,
        retry_after_ms: int,
        max_deliveries: int,
        dead_letter_max_entries: int = 10_000,
        dead_letter_ttl_s: int = 7 * 24 * 3600,
        dead_letter_max_input_bytes: int = 64 * 1024,
    ) -> None:
        self._redis = redis
        self._streams = list(streams)
        self.consumer = consumer
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._retry_after_ms = retry_after_ms
        self._claim_from: dict[str, str] = {}
        """Where the next ``XAUTOCLAIM`` of each stream goes on from (:meth:`claim_idle`)."""
        self._max_deliveries = max_deliveries
        self._dead_max_entries = dead_letter_max_entries
        self._dead_ttl_s = dead_letter_ttl_s
        self._dead_max_input_bytes = dead_letter_max_input_bytes

    async def ensure_groups(self) -> None:
        """Create the consumer group of every stream (at 0, so nothing already queued is missed), and forget the
        consumers of workers long gone."""
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
        await self.forget_gone_consumers()

    async def forget_gone_consumers(self, *, idle_ms: int = GONE_AFTER_MS) -> int:
        """Delete the group's consumers that hold no pending entry and have not read for ``idle_ms``: each
        worker that ever ran (a pod name with a pid) stays in the group otherwise. One with pending entries is
        left until they are reclaimed. Returns how many were deleted."""
        gone = 0
        for stream in self._streams:
            forgotten = await forget_gone_consumers(
                self._redis, stream, keys.CONSUMER_GROUP, keep=self.consumer, idle_ms=idle_ms
            )
            gone += len(forgotten)
        if gone:
            log.info("forgot %d consumers of workers gone for over %d s", gone, idle_ms // 1000)
        return gone

    async def read_new(self) -> dict[str, list[Delivery]]:
        """New entries of every stream (blocking up to ``block_ms``), by stream."""
        response: Any
        try:
            response = await self._redis.xreadgroup(
                keys.CONSUMER_GROUP,
                self.consumer,
                {s: ">" for s in self._streams},
                count=self._batch_size,
                block=self._block_ms,
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            log.warning("consumer group missing (Redis restarted empty?); recreating at 0")
            await self.ensure_groups()
            return {}
        found: dict[str, list[Delivery]] = {}
        for stream, entries in response or []:
            name = text(stream)
            found[name] = [Delivery(entry_id, fields or None, 1) for entry_id, fields in entries]
        return found

    async def claim_idle(self, stream: str) -> list[Delivery]:
        """Entries pending longer than ``retry_after_ms`` on any consumer, now ours, with their delivery counts.

        One ``XAUTOCLAIM`` looks at no more than ten times ``batch_size`` pending entries, so each call goes on
        from where the last one stopped (``0-0`` once the scan went round): always starting at the head, a head
        of entries live workers hold (a busy fleet, a small batch size) would hide the idle ones behind it."""
        try:
            claimed = await claim_pending(
                self._redis,
                stream,
                keys.CONSUMER_GROUP,
                self.consumer,
                min_idle_ms=self._retry_after_ms,
                start=self._claim_from.get(stream, SCAN_ROUND),
                count=self._batch_size,
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            self._claim_from.pop(stream, None)
            await self.ensure_groups()
            return []
        self._claim_from[stream] = claimed.cursor
        gone = [Delivery(entry_id, None, 0) for entry_id in claimed.vanished]  # acknowledged already
        if not claimed.entries:
            return gone
        counts = await self._delivery_counts(stream, [entry_id for entry_id, _ in claimed.entries])
        return gone + [
            Delivery(entry_id, fields, counts.get(entry_id, self._max_deliveries))
            for entry_id, fields in claimed.entries
        ]

    async def _delivery_counts(self, stream: str, entry_ids: list[bytes]) -> dict[bytes, int]:
        """The delivery count of each entry just claimed, asked for by its own id on this consumer (one round trip):
        a range over the claimed ids would also hold other workers' entries, and a count limit could cut off ours."""
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(
                stream, keys.CONSUMER_GROUP, min=entry_id, max=entry_id, count=1, consumername=self.consumer
            )
        answers: list[list[dict[str, Any]]] = await execute(pipe)
        return {item["message_id"]: int(item["times_delivered"]) for pending in answers for item in pending}

    async def uncount(self, stream: str, deliveries: Iterable[Delivery]) -> int:
        """Take back the last delivery of each of ``deliveries`` still pending on this consumer at the count it was
        delivered with (one round trip); returns how many were taken back."""
        args: list[bytes | str | int] = [keys.CONSUMER_GROUP, self.consumer]
        for delivery in deliveries:
            if delivery.fields is not None and delivery.deliveries > 0:
                args += [delivery.entry_id, delivery.deliveries]
        if len(args) == 2:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, _UNCOUNT, [stream], args)
        (taken,) = await execute(pipe)
        return int(taken)

    async def refresh(self, stream: str, entry_ids: Iterable[bytes]) -> int:
        """Restart the idle time of those of ``entry_ids`` still pending on this consumer, counting no delivery
        (one round trip; see :mod:`attribution_workers.holding`); returns how many were."""
        args: list[bytes | str | int] = [keys.CONSUMER_GROUP, self.consumer, *entry_ids]
        if len(args) == 2:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, _REFRESH, [stream], args)
        (kept,) = await execute(pipe)
        return int(kept)

    async def redis_time_s(self) -> float:
        """Redis's clock (``TIME``), the clock of the stream ids, in epoch seconds."""
        seconds, micros = await self._redis.time()
        return float(seconds) + micros / 1_000_000

    async def finish(self, stream: str, entry_id: bytes) -> None:
        """Acknowledge and delete an entry whose result is stored (or that has nothing left to do)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(stream, keys.CONSUMER_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await execute(pipe)

    async def dead_letter(self, model: str, stream: str, delivery: Delivery, error: str) -> int:
        """Move an entry to the model's dead-letter stream with its error (copied, then acked); returns how many
        of the oldest dead entries were trimmed to make room."""
        fields = _without_large_input(dict(delivery.fields or {}), self._dead_max_input_bytes)
        fields.update(
            {
                b"error": error.encode()[:4000],
                b"source_id": delivery.entry_id,
                b"deliveries": str(delivery.deliveries).encode(),
                b"consumer": self.consumer.encode(),
            }
        )
        dead = keys.dead_letter_stream(model)
        # Two round trips, not one MULTI: Redis runs the rest of a transaction when one command fails (say the
        # key holds another type), and the entry would be deleted with no copy. Acked only once copied; a crash
        # in between copies it again on its next delivery.
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(dead, fields)  # type: ignore[arg-type]
        pipe.xtrim(dead, maxlen=self._dead_max_entries, approximate=True)
        pipe.expire(dead, self._dead_ttl_s)
        _, trimmed, _ = await execute(pipe)
        await self.finish(stream, delivery.entry_id)
        return int(trimmed)


def _without_large_input(fields: Fields, max_bytes: int) -> Fields:
    """``fields`` with each value over ``max_bytes`` noted by its size (``NAME_bytes``) and dropped, except the
    message, which is kept without its ``input`` when that brings it under ``max_bytes``."""
    kept: Fields = {}
    for name, value in fields.items():
        if len(value) <= max_bytes:
            kept[name] = value
            continue
        kept[name + b"_bytes"] = str(len(value)).encode()
        smaller = _message_without_input(value) if name == MESSAGE_FIELD else None
        if smaller is not None and len(smaller) <= max_bytes:
            kept[name] = smaller
    return kept


def _message_without_input(body: bytes) -> bytes | None:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    message.pop("input", None)
    return orjson.dumps(message)
