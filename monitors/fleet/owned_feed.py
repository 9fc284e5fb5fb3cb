"""The prediction feed of an owned model: read into the drift buffer, with what a previous owner left pending claimed,
and measured for the backlog the status reports.

An entry is acknowledged and deleted only once the detectors have examined its record (or it was passed over on
purpose: it did not decode, the buffer dropped it, its model's detectors do not watch): until then it stays pending
in the group, so that an owner killed with records in its buffer leaves them to the next owner's claim. Records
collected into a warm-up reference count as examined: the warm-up has its own copy in Redis
(:mod:`monitors.fleet.warmup_store`).

Each record read is counted at once in the window of recent predictions, with its entry's id until the entry is
acknowledged (:meth:`~monitors.prediction_window.PredictionWindow.settle`): the window stored for the next owner
names the entries it counted and left pending, and the next owner, having restored it before its first claim,
examines those again without counting them again (:mod:`monitors.fleet.recent_store`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from common import keys
from common.cardinality import ReleasableLabel
from common.redis import execute, stream_entry_time_s
from common.streams import SCAN_ROUND, claim_pending, forget_gone_consumers
from monitors.drift.base import DriftEvent
from monitors.drift.buffer import IngestBuffer
from monitors.feed import FeedFormatError, MonitoringRecord
from monitors.fleet.context import OwnerContext
from monitors.fleet.labelled import Entries
from monitors.fleet.projection_views import ModelViews

log = logging.getLogger(__name__)
RECLAIM_EVERY_TTLS = 5
"""After the take-over, entries another consumer left pending (idle past the lease's TTL) are claimed once every
this many lease TTLs."""
GONE_AFTER_S = 600
"""A consumer of a feed's group that has not read for this long and holds nothing pending is forgotten when a
monitor takes the model: its monitor is gone, or owns the model no more (one that reads again is back at once)."""
GONE_AFTER_MS = GONE_AFTER_S * 1000


@dataclass(frozen=True, slots=True)
class Backlog:
    """The feed as Redis holds it. Examined entries are deleted (those examined so far just before it is measured),
    so its length is what waits, read or not, and its head the oldest."""

    length: int
    """Entries in the feed, not yet examined (the drift buffer's included)."""
    head_s: float | None
    """When the oldest of them entered the feed (Redis's clock); ``None`` when it is empty."""
    now_s: float
    """Redis's clock as it answered: every wait is measured against it, as the hosts' clocks may disagree."""


class OwnedFeed:
    """Reads ``vai:feed:{model}`` in the monitors' group into the drift buffer, the model's views and its window of
    recent predictions; acknowledges and deletes what the detectors have examined."""

    def __init__(
        self,
        model: str,
        context: OwnerContext,
        *,
        buffer: IngestBuffer,
        versions: ReleasableLabel,
        views: ModelViews | None,
    ) -> None:
        self.model = model
        self._context = context
        self._buffer = buffer
        self._versions = versions
        self._views = views
        self._feed = keys.prediction_feed(model)
        self._claim_from: str | None = "0-0"
        """Where the pass claiming pending entries goes on (``None`` between passes): the take-over starts one."""
        self._claim_idle_ms = 0
        """Idle time of the entries the pass claims: any at the take-over, then those idle past the lease's TTL."""
        self._next_claim_s = 0.0
        self._unsettled: deque[bytes] = deque()
        """Ids of the entries whose events are in the buffer (or being examined), in the order they were appended."""
        self._unsettled_from = buffer.appended_total
        """The buffer's number of the event of the first of them."""
        self._settled: list[bytes] = []
        """Ids to acknowledge and delete: examined, or passed over on purpose."""
        self._held: set[bytes] = set()
        """The ids of both, not to be claimed again while this owner holds them."""

    async def ensure_group(self) -> None:
        """Create the feed's group if need be, and forget the consumers of monitors gone (one more per monitor
        restart or rollout otherwise: a soak left two dead ones in every feed's group after two restarts)."""
        redis = self._context.redis
        try:
            await redis.xgroup_create(self._feed, keys.MONITOR_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        owner = self._context.leases.owner
        gone = await forget_gone_consumers(redis, self._feed, keys.MONITOR_GROUP, keep=owner, idle_ms=GONE_AFTER_MS)
        if gone:
            log.info("forgot %d consumers of the feed of %s gone for over %d s", len(gone), self.model, GONE_AFTER_S)

    async def read(self) -> None:
        """One read (or claim) of at most what the buffer has room for, taken; what is examined so far (and what
        was passed over) acknowledged and deleted."""
        settings = self._context.settings
        if len(self._buffer) > settings.drift_buffer_events // 2:
            await asyncio.sleep(0.05)  # the detectors are behind: leave the records in Redis, where lag shows
        else:
            count = min(settings.monitor_read_batch, self._buffer.room)  # never more than fits: the rest waits
            claiming = self._claim_due()
            try:
                self._take(await (self._claim(count) if claiming else self._read_new(count)))
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                await self.ensure_group()  # Redis came back empty
                return
            if claiming and self._claim_from is None:  # its last page taken: what was not delivered never will be
                self._context.recent.claimed(self.model)
        await self.settle()

    async def settle(self) -> None:
        """Acknowledge and delete what was examined so far (at a stop: the rest stays pending for the next owner)."""
        pipe = self._context.redis.pipeline(transaction=False)
        acked = self._ack(pipe)
        if acked:
            await execute(pipe)
            self._acked(acked)

    async def backlog(self) -> Backlog:
        """The feed's length and head, and Redis's clock, in one round trip (deleting first what was examined)."""
        pipe = self._context.redis.pipeline(transaction=False)
        acked = self._ack(pipe)
        pipe.xlen(self._feed)
        pipe.xrange(self._feed, count=1)
        pipe.time()
        *_, length, head, (seconds, microseconds) = await execute(pipe)
        self._acked(acked)
        return Backlog(
            length=int(length),
            head_s=stream_entry_time_s(head[0][0]) if head else None,
            now_s=seconds + microseconds / 1e6,
        )

    @property
    def unsettled(self) -> int:
        """Entries read into the buffer and not yet examined (pending in the group, under this owner)."""
        self._collect_settled()
        return len(self._unsettled)

    def _collect_settled(self) -> None:
        """Move the ids of the events the buffer has settled since to those to acknowledge."""
        count = self._buffer.settled_total - self._unsettled_from
        for _ in range(min(count, len(self._unsettled))):
            self._settled.append(self._unsettled.popleft())
        self._unsettled_from += max(count, 0)

    def _ack(self, pipe: Any) -> list[bytes]:
        """Queue on ``pipe`` the acknowledgement and deletion of what is settled; returns their ids."""
        self._collect_settled()
        ids = list(self._settled)
        if ids:
            pipe.xack(self._feed, keys.MONITOR_GROUP, *ids)
            pipe.xdel(self._feed, *ids)  # so the stream's length is what waits (as with the sample streams)
        return ids

    def _acked(self, ids: list[bytes]) -> None:
        done = set(ids)
        self._settled = [entry_id for entry_id in self._settled if entry_id not in done]
        self._held -= done
        self._context.recent.settle(self.model, done)

    def _claim_due(self) -> bool:
        """Whether to claim pending entries now: a pass is going on, or the next one is due."""
        if self._claim_from is None and time.monotonic() >= self._next_claim_s:
            self._claim_from, self._claim_idle_ms = "0-0", self._context.leases.ttl_ms
        return self._claim_from is not None

    async def _claim(self, count: int) -> Entries:
        """One page of the pending entries of the group (what a previous owner read and never acknowledged).

        An entry the sidecars' ``MAXLEN`` trimmed while it was pending is acknowledged by the claim and not examined:
        the sidecars counted it in ``vai_feed_records_trimmed_total`` as they trimmed it, so it is counted nowhere
        else (one held in this owner's buffer is examined all the same)."""
        leases = self._context.leases
        claimed = await claim_pending(
            self._context.redis,
            self._feed,
            keys.MONITOR_GROUP,
            leases.owner,
            min_idle_ms=self._claim_idle_ms,
            start=self._claim_from or SCAN_ROUND,
            count=count,
        )
        self._claim_from = None if claimed.went_round else claimed.cursor
        if self._claim_from is None:
            self._next_claim_s = time.monotonic() + RECLAIM_EVERY_TTLS * leases.ttl_ms / 1000
        if claimed.vanished:
            self._context.recent.settle(self.model, claimed.vanished)  # acknowledged: never delivered again
            unexamined = [entry_id for entry_id in claimed.vanished if entry_id not in self._held]
            if unexamined:
                log.info("%d pending entries of the feed of %s were trimmed unexamined", len(unexamined), self.model)
        # Idle past the TTL, what this owner holds in its buffer (the detectors behind) is claimed again: not retaken.
        return [entry for entry in claimed.entries if entry[0] not in self._held]

    async def _read_new(self, count: int) -> Entries:
        answer: Any = await self._context.readers.xreadgroup(
            keys.MONITOR_GROUP, self._context.leases.owner, {self._feed: ">"}, count=count, block=500
        )
        entries: Entries = answer[0][1] if answer else []
        return entries

    def _take(self, entries: Entries) -> None:
        for raw_id, fields in entries:
            entry_id = _entry_id(raw_id)
            self._held.add(entry_id)
            if not fields:
                self._settled.append(entry_id)  # trimmed while pending
                continue
            try:
                record = MonitoringRecord.from_entry(self.model, fields)
            except FeedFormatError as error:
                self._context.metrics.invalid.labels(self.model).inc()
                log.debug("skipping a feed entry of %s: %s", self.model, error)
                self._settled.append(entry_id)
                continue
            self._unsettled.append(entry_id)
            self._buffer.append(DriftEvent(record.predicted, record.confidence, record.embedding, record.time_s))
            if self._views is not None:
                self._views.observe(record)
            self._context.recent.append(  # unless a previous owner counted it in the window this one restored
                self.model,
                self._versions(record.version),
                record.cohort,
                min(max(record.confidence, 0.0), 1.0),
                entry=entry_id,
            )


def _entry_id(entry_id: bytes | str) -> bytes:
    return entry_id if isinstance(entry_id, bytes) else entry_id.encode()
