"""What the sidecar publishes for the fleet monitor, written to Redis off the request path.

Per accepted event the request path only appends to bounded buffers (O(1), no I/O):

* the prediction feed (``vai:feed:{model}``), for drift — within a per-replica budget
  (``VAI_MONITOR_MAX_PER_SECOND``) beyond which events are sampled uniformly at random;
* the prediction record that waits in Redis (with a TTL) for a delayed label;
* the labelled feed (``vai:labelled:{model}``) when the event carries its label, or when a
  delayed label joins its record.

A background task writes them continuously, one pipelined round trip per batch (an ``XADD …
MAXLEN ~`` per feed record, one Lua call for all records waiting for labels); once it has
caught up it waits ``linger_s`` (50 ms) for records to gather, so a thinned feed costs ~20
round trips a second instead of one per request (each costs ~0.2 ms of the sidecar's CPU).
Every record not kept is counted in ``vai_feed_records_dropped_total{model, feed, reason}``:
``budget``, ``joined`` (a label-join record its label took before it reached Redis: needed no more),
``buffer_full`` (Redis slow), ``redis_unavailable`` (Redis down; the oldest waiting are dropped) or
``redis_error`` (Redis refused the write, e.g. out of memory) or ``error`` (an unexpected error cost the
batch; logged with its traceback, and the writer goes on). A labelled record Redis refuses for lack of memory is
not dropped: it waits, within the bound, to be written again (``vai_feed_records_refused_total``), as it would
while Redis is down; a delayed label taken from Redis never comes through here (``service.feed.labels`` publishes it
in the call that takes its record).

The models published (``keys.MONITORED_MODELS``) and those that get labels (``keys.LABELLED_MODELS``) are
announced with the batches, again every ``announce_s`` (10 s): a Redis that restarted empty learns them back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from common import keys
from common.redis import REDIS_DOWN, cancelling, execute, queue_script
from monitors.feed import MonitoringRecord
from service.events.accepted import Prediction
from service.feed.buffer import RECORDS, FeedBuffer, Pending
from service.feed.records import UniformBudget, monitoring_record
from service.metrics import CounterChildren, FeedMetrics

log = logging.getLogger(__name__)

ANNOUNCE_S = 10.0
"""How often the models this writer knows are announced again, in case Redis restarted empty."""
PREDICTIONS, LABELLED = "predictions", "labelled"
"""The ``feed`` label: the drift feed, the labelled feed, and (``RECORDS``) records waiting for a delayed label."""

_WRITE = """
local maxlen, ttl = ARGV[1], ARGV[2]
local trimmed = {}
for i = 1, #KEYS do
  local blob = ARGV[2 + i]
  trimmed[i] = 0
  if string.sub(KEYS[i], 1, #ARGV[3 + #KEYS]) == ARGV[3 + #KEYS] then
    redis.call('SET', KEYS[i], blob, 'EX', ttl)
  else
    local before = redis.call('XLEN', KEYS[i])
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', 'r', blob)
    trimmed[i] = before + 1 - redis.call('XLEN', KEYS[i])
  end
end
return trimmed
"""
"""A whole batch in one command: an entry for each stream key, a ``SET … EX`` for each prediction-record key
(recognised by the prefix passed last). One command packs and parses in a few microseconds per record;
a pipeline of ``XADD`` s cost redis-py ~17 µs each. It returns, per key, how many older entries ``MAXLEN``
trimmed: records the monitor never read (it deletes what it examined, so only a backlog is trimmed)."""


class FeedWriter:
    def __init__(
        self,
        redis: Redis,
        metrics: FeedMetrics,
        *,
        max_per_second: int,
        max_records: int,
        stream_maxlen: int,
        prediction_ttl_s: int,
        brier_max_classes: int,
        label_records: str = "auto",
        labelled_models: frozenset[str] = frozenset(),
        batch: int = 1000,
        linger_s: float = 0.05,
        retry_s: float = 0.5,
        announce_s: float = ANNOUNCE_S,
    ) -> None:
        self._redis = redis
        self._budget = UniformBudget(max_per_second)
        self._buffer = FeedBuffer(max_records)
        self._stream_maxlen = stream_maxlen
        self._ttl_s = prediction_ttl_s
        self._brier_max_classes = brier_max_classes
        self._label_records = label_records
        self._labelled_models = set(labelled_models)
        self._batch = batch
        self._linger_s = linger_s
        self._retry_s = retry_s
        self._announce_s = announce_s
        self._announced: set[str] = set()
        self._labelled_announced: set[str] = set()
        self._announced_at = time.monotonic()
        self.redis_up = True
        self._memory_full = False
        """Whether Redis's last answer refused labelled records for lack of memory (they wait here)."""
        self._writing = asyncio.Lock()
        """Held while a batch is out of the buffer and on its way to Redis."""
        self._metrics = metrics
        self._child = CounterChildren()

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def stream_maxlen(self) -> int:
        """The ``MAXLEN ~`` of every feed stream (``VAI_MONITOR_STREAM_MAXLEN``)."""
        return self._stream_maxlen

    # --- request path ------------------------------------------------------------------------

    def admit(self, received_at: float, count: int) -> list[bool]:
        """Whether each of ``count`` accepted events received now goes on the drift feed (within the budget, drawn
        once per event). An event needs :meth:`take` when admitted, labelled, or of a model that
        :meth:`keeps_records`; the others need nothing."""
        return self._budget.admit_many(received_at, count)

    def take(self, prediction: Prediction, version: str, *, admitted: bool) -> None:
        """Write what :meth:`admit` said is wanted of ``prediction``: the drift feed when ``admitted``, the
        labelled feed for an event with its label, a label-join record for a model that gets labels."""
        model = prediction.model
        labelled = prediction.label is not None
        record = monitoring_record(prediction, version, brier_max_classes=self._brier_max_classes)
        if labelled:
            self.offer(LABELLED, record.labelled(prediction.label))  # type: ignore[arg-type]
            self._metrics.labels.labels(model, "true").inc()
            self.mark_labelled(model)
        elif self.keeps_records(model):
            self.offer(RECORDS, record)
        if admitted:
            self._append(PREDICTIONS, model, record.request_id, record.blob(embedding=True))

    def keeps_records(self, model: str) -> bool:
        """Whether accepted events of ``model`` wait in Redis for a delayed label (``VAI_LABEL_RECORDS``)."""
        if self._label_records == "all":
            return True
        return self._label_records == "auto" and model in self._labelled_models

    def mark_labelled(self, model: str) -> None:
        """``model`` gets labels: keep its records from now on, and tell the other replicas (with the next batch,
        and again every ``announce_s``)."""
        self._labelled_models.add(model)

    def sync_labelled(self, models: set[str]) -> None:
        """Models any replica has seen labels for (read from Redis)."""
        self._labelled_models |= models

    def count_budget_drops(self, model: str, count: int) -> None:
        if count:
            self._child(self._metrics.dropped, model, PREDICTIONS, "budget").inc(count)

    def offer(self, feed: str, record: MonitoringRecord) -> None:
        """Queue ``record`` for ``feed`` (the label-join record never carries the embedding)."""
        self._append(feed, record.model, record.request_id, record.blob(embedding=feed == PREDICTIONS))

    def _append(self, feed: str, model: str, request_id: str, blob: bytes) -> None:
        lost = self._buffer.append(Pending(feed, model, request_id, blob))
        if lost is not None:
            self._count_lost(lost)

    def _count_lost(self, item: Pending) -> None:
        reason = "buffer_full" if self.redis_up else "redis_unavailable"
        self._metrics.dropped.labels(item.model, item.feed, reason).inc()

    def waits_here(self, model: str, request_id: str) -> bool:
        """Whether the prediction record of ``request_id`` is still here (its label came before it reached Redis)."""
        return self._buffer.waits_here(model, request_id)

    def take_local(self, model: str, request_id: str) -> MonitoringRecord | None:
        """The prediction record of ``request_id`` if it is still here; it will not be written (unless given back)."""
        blob = self._buffer.take(model, request_id)
        return None if blob is None else MonitoringRecord.from_blob(model, blob)

    def give_back(self) -> None:
        """Undo every :meth:`take_local` since the last :meth:`keep_taken` (their labels were not joined after all):
        the records wait again, and one the full buffer dropped meanwhile is counted as dropped now."""
        for item in self._buffer.give_back():
            self._count_lost(item)

    def give_back_one(self, model: str, request_id: str) -> None:
        """Undo the :meth:`take_local` of one record whose label was refused: it waits again for a valid one."""
        lost = self._buffer.give_back_one(model, request_id)
        if lost is not None:
            self._count_lost(lost)

    def keep_taken(self) -> None:
        """The records taken since the last call were joined: they will not be written (counted as dropped, reason
        ``joined``: their label came before they reached Redis, and needed them no more)."""
        for item in self._buffer.keep_taken():
            self._metrics.dropped.labels(item.model, item.feed, "joined").inc()

    # --- background --------------------------------------------------------------------------

    async def run(self) -> None:
        while not cancelling():  # a cancel that redis-py swallowed still stops the loop
            written = await self.flush()
            if written < self._batch:  # caught up: let records gather, one round trip per linger
                await asyncio.sleep(self._linger_s if self.redis_up else self._retry_s)

    @asynccontextmanager
    async def held(self, timeout_s: float) -> AsyncIterator[None]:
        """While this is held no batch is half-way to Redis and none leaves: every record is either here or
        in Redis, and stays where it is. ``TimeoutError`` when a batch in flight does not land in time."""
        async with asyncio.timeout(timeout_s):
            await self._writing.acquire()
        try:
            yield
        finally:
            self._writing.release()

    async def flush(self) -> int:
        """Write up to one batch; returns how many records were written (or dropped as refused), 0 when labelled
        records Redis refused for lack of memory wait again (the caller waits before trying again)."""
        if not self._buffer.stored:
            return 0
        async with self._writing:
            return await self._flush()

    async def _flush(self) -> int:
        batch, popped = self._buffer.next_batch(self._batch)
        if not batch:
            return popped
        try:
            refusal = await self._write(batch)
        except asyncio.CancelledError:  # stopping mid-write: the batch waits for the final flush (or its count)
            self._buffer.put_back(batch)
            raise
        except REDIS_DOWN as error:
            self._buffer.put_back(batch)  # they wait, oldest first, within the bound
            if self.redis_up:
                log.warning("monitoring records wait in memory: redis unavailable (%s)", type(error).__name__)
            self.redis_up = False
            return 0
        except Exception:  # costs this batch (counted), never the writer: a task that ended would drop the rest
            log.exception("writing monitoring records failed: the batch is dropped (counted)")
            for item in batch:
                self._buffer.forget(item)
                self._metrics.dropped.labels(item.model, item.feed, "error").inc()
            return popped
        if not self.redis_up:
            log.info("redis is back: writing the monitoring records that waited")
        self.redis_up = True
        if refusal is not None:
            return 0 if self._refused(batch, refusal) else popped
        if self._memory_full:
            log.info("redis takes monitoring records again: writing the labelled records that waited")
        self._memory_full = False
        self._count_written(batch)
        return popped

    def _count_written(self, batch: list[Pending]) -> None:
        written: dict[tuple[str, str], int] = {}
        for item in batch:
            self._buffer.forget(item)
            labels = (item.model, item.feed)
            written[labels] = written.get(labels, 0) + 1
        for labels, count in written.items():
            self._metrics.written.labels(*labels).inc(count)

    def _refused(self, batch: list[Pending], error: Exception) -> bool:
        """Redis refused the whole batch. For lack of memory, its labelled records wait to be written again (the
        other feeds' records can be done without; a label cannot be sent again once joined), each counted once
        in ``refused``; every other record is dropped (``redis_error``). Returns whether any waits."""
        keep = _out_of_memory(error)
        kept: list[Pending] = []
        for item in batch:
            if not (keep and item.feed == LABELLED):
                self._buffer.forget(item)
                self._metrics.dropped.labels(item.model, item.feed, "redis_error").inc()
                continue
            kept.append(item)
            if not item.refused:
                item.refused = True
                self._metrics.refused.labels(item.model, item.feed).inc()
        if kept and not self._memory_full:
            log.warning("redis is out of memory: %d labelled records wait in memory to be written again", len(kept))
        self._memory_full = self._memory_full or bool(kept)
        self._buffer.put_back(kept)
        return bool(kept)

    def abandon(self) -> int:
        """Count every record still waiting as dropped (``redis_unavailable``): called at shutdown, once the
        final flush has given up (Redis down or too slow), so no record leaves without a counter."""
        abandoned = self._buffer.clear()
        for item in abandoned:
            self._metrics.dropped.labels(item.model, item.feed, "redis_unavailable").inc()
        return len(abandoned)

    async def _write(self, batch: list[Pending]) -> Exception | None:
        """One round trip for the whole batch; returns Redis's error when it refused the batch (e.g. out of
        memory; one command, it is refused as a whole)."""
        targets = [
            keys.prediction(item.model, item.request_id)
            if item.feed == RECORDS
            else keys.prediction_feed(item.model)
            if item.feed == PREDICTIONS
            else keys.labelled_feed(item.model)
            for item in batch
        ]
        pipe = self._redis.pipeline(transaction=False)
        args: list[bytes | str | int] = [
            self._stream_maxlen,
            self._ttl_s,
            *(item.blob for item in batch),
            keys.prediction_prefix(),
        ]
        queue_script(pipe, _WRITE, targets, args)  # one round trip with the SADDs
        if time.monotonic() - self._announced_at > self._announce_s:  # Redis may have restarted empty: say it again
            self._announced, self._labelled_announced = set(), set()
            self._announced_at = time.monotonic()
        new_models = {item.model for item in batch} - self._announced
        if new_models:
            pipe.sadd(keys.MONITORED_MODELS, *new_models)
        labelled = self._labelled_models - self._labelled_announced
        if labelled:
            pipe.sadd(keys.LABELLED_MODELS, *labelled)
        results = await execute(pipe, raise_on_error=False)
        for result in results:
            if isinstance(result, REDIS_DOWN):
                raise result
        announced = iter(results[1:])  # an announcement Redis refused is made again with the next batch
        if new_models and not isinstance(next(announced), Exception):
            self._announced |= new_models
        if labelled and not isinstance(next(announced), Exception):
            self._labelled_announced |= labelled
        if isinstance(results[0], Exception):  # refused as a whole (out of memory under noeviction)
            log.debug("redis refused %d monitoring records: %s", len(batch), results[0])
            return results[0]
        for item, count in zip(batch, results[0], strict=False):
            if count:
                self._metrics.trimmed.labels(item.model, item.feed).inc(int(count))
        return None


def _out_of_memory(error: Exception) -> bool:
    """Whether Redis refused for lack of memory (``maxmemory`` under ``noeviction``): a command's refusal reads
    ``OOM …``; a script's, on Redis 6, ``ERR Error running script … -OOM command not allowed …``."""
    return isinstance(error, OutOfMemoryError) or "OOM command not allowed" in str(error)
