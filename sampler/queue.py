"""The producer side of the sample streams: a bounded buffer flushed to Redis in the background.

Requests never wait on Redis. They hand sampled events to :meth:`QueueWriter.offer`,
which either buffers them or says why not. A background task writes the buffer
with pipelined ``XADD ... MAXLEN ~`` calls; while Redis is unreachable the
events wait (up to the buffer bounds) and are written when it returns.

What waits in Redis is bounded per model stream: in entries (``queue_max_length``), in approximate bytes
(``queue_max_bytes``: the polled length times the recent mean size of the model's entries), and per entry
(``max_input_bytes`` of input). Every stream holds its backlog until a worker explains it, and a model with no
worker never drains; an entry's input could otherwise be as large as a request body (40 sampled events of
3.8 MiB grew Redis by 198 MB in 3.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice

from redis.asyncio import Redis

from common import keys
from common.redis import REDIS_DOWN, cancelling, execute
from sampler.contract import MESSAGE_FIELD, SampledEvent
from sampler.explanations import ExplanationStore
from sampler.metrics import SamplerMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    event: SampledEvent
    fields: dict[bytes, bytes]
    size: int

    @property
    def model(self) -> str:
        return self.event.model


class QueueWriter:
    def __init__(
        self,
        redis: Redis,
        metrics: SamplerMetrics,
        store: ExplanationStore,
        *,
        max_events: int,
        max_bytes: int,
        batch_size: int,
        stream_maxlen: int,
        queue_max_length: int,
        retry_s: float,
        max_input_bytes: int | None = None,
        queue_max_bytes: int | None = None,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._store = store
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._batch_size = batch_size
        self._stream_maxlen = stream_maxlen
        self._queue_max_length = queue_max_length
        self._retry_s = retry_s
        self._max_input_bytes = sys.maxsize if max_input_bytes is None else max_input_bytes
        self._queue_max_bytes = sys.maxsize if queue_max_bytes is None else queue_max_bytes
        self._entry_bytes: dict[str, float] = {}
        """Per model, the recent mean size of its entries offered and kept (each new one weighs 1/8)."""
        self._buffer: deque[_Entry] = deque()
        self._bytes = 0
        self._buffered: Counter[str] = Counter()
        self._lengths: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self.redis_up = True
        metrics.redis_up.set(1)
        metrics.queue_max_length.set(queue_max_length)
        metrics.buffer_max_events.set(max_events)
        metrics.buffered.set_function(lambda: len(self._buffer))
        metrics.buffered_bytes.set_function(lambda: self._bytes)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def queue_lengths(self) -> dict[str, int]:
        """Last polled stream length per model."""
        return dict(self._lengths)

    def offer(self, event: SampledEvent) -> str | None:
        """Buffer ``event`` for writing; returns the drop reason when it cannot be kept (counted).

        An input over ``max_input_bytes`` is refused before the event is encoded (``input_too_large``): queued
        without it, the event could not be explained. The event itself was accepted and is monitored.
        """
        model = event.model
        reason: str | None = None
        if event.input is not None and len(event.input.data) > self._max_input_bytes:
            reason = "input_too_large"
        else:
            fields = event.encode()
            size = len(fields[MESSAGE_FIELD])
            backlog = self._lengths.get(model, 0) + self._buffered[model]
            mean = self._entry_bytes.get(model, size)
            if backlog >= self._queue_max_length:
                reason = "queue_full"
            elif backlog * mean + size > self._queue_max_bytes:
                reason = "queue_bytes_full"
            elif len(self._buffer) >= self._max_events or self._bytes + size > self._max_bytes:
                reason = "buffer_full" if self.redis_up else "redis_unavailable"
        if reason is not None:
            self._metrics.dropped.labels(model, reason).inc()
            return reason
        self._entry_bytes[model] = mean + (size - mean) / 8
        self._buffer.append(_Entry(event, fields, size))
        self._bytes += size
        self._buffered[model] += 1
        self._wake.set()
        return None

    async def run(self) -> None:
        """Flush forever (until cancelled), backing off while Redis is unreachable."""
        while not cancelling():  # a cancel that redis-py swallowed still stops the loop
            await self._wake.wait()
            if not await self.flush_once():
                await asyncio.sleep(self._retry_s)
            elif not self._buffer:
                self._wake.clear()

    def _drop_batch(self, reason: str) -> None:
        for _ in range(min(self._batch_size, len(self._buffer))):
            self._forget(self._buffer.popleft(), reason)

    def _forget(self, entry: _Entry, reason: str | None = None) -> None:
        """``entry`` left the buffer: written, or dropped for ``reason`` (counted)."""
        self._bytes -= entry.size
        self._buffered[entry.model] -= 1
        if reason is not None:
            self._metrics.dropped.labels(entry.model, reason).inc()

    async def flush_once(self) -> bool:
        """Write up to one batch; ``False`` when Redis could not be reached. One at a time: the final drain may
        run while a writer task that did not stop is still flushing, and two would write a batch twice."""
        async with self._flushing:
            try:
                return await self._flush_once()
            except Exception:  # costs the batch it hit (counted), never the writer task: one that ended would
                log.exception("writing sampled events failed: the batch is dropped (counted)")  # leave every
                self._drop_batch("error")  # later sample in the buffer while /status still looked healthy
                return False

    async def _flush_once(self) -> bool:
        batch = list(islice(self._buffer, self._batch_size))
        if not batch:
            return True
        pipe = self._redis.pipeline(transaction=False)
        for entry in batch:
            pipe.xadd(
                keys.sample_stream(entry.model),
                entry.fields,  # type: ignore[arg-type]
                maxlen=self._stream_maxlen,
                approximate=True,
            )
            self._store.mark_queued(pipe, entry.event)
        try:
            results = await execute(pipe, raise_on_error=False)
        except REDIS_DOWN as error:
            self._mark_up(False, error)
            return False
        self._mark_up(True)
        refused: list[tuple[_Entry, Exception]] = []
        for entry, result, saved in zip(batch, results[::2], results[1::2], strict=True):  # settled with no await:
            self._buffer.popleft()  # a cancel cannot leave written entries in the buffer to be written again
            self._store.saved(entry.model, saved)  # counts and logs what the cap on stored explanations removed
            if isinstance(result, Exception):
                self._forget(entry, "redis_error")
                refused.append((entry, result))
            else:
                self._forget(entry)
                self._metrics.queued.labels(entry.model).inc()
        if refused:  # one line a batch, not one an entry: Redis out of memory refuses every one
            entry, first = refused[0]
            log.error(
                "Redis refused %d of %d sampled events (counted as redis_error), e.g. XADD to %s: %s",
                len(refused),
                len(batch),
                keys.sample_stream(entry.model),
                first,
            )
        for entry, refusal in refused:
            try:
                await self._store.mark_failed(entry.event, f"not queued: Redis refused the entry: {refusal}")
            except Exception:  # its record stays 'queued' until it expires; the batch is settled
                log.exception("recording sampled event %s as failed failed", entry.event.request_id)
        return True

    async def drain(self, *, timeout_s: float) -> None:
        """Try to write everything buffered before shutting down, for about ``timeout_s`` (each flush is bounded
        by the writer's Redis timeout; the deadline is checked between them, as a cancel can be swallowed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with contextlib.suppress(TimeoutError):
            while self._buffer and loop.time() < deadline and not cancelling():
                async with asyncio.timeout_at(deadline):  # a batch cut short stays buffered
                    if not await self.flush_once():
                        await asyncio.sleep(self._retry_s)
        if self._buffer and not self._flushing.locked():  # none leaves without a counter
            log.warning(
                "shutting down with %d sampled events not written to Redis (counted as dropped)", len(self._buffer)
            )
            for entry in self._buffer:
                self._metrics.dropped.labels(entry.model, "redis_unavailable").inc()
            self._buffer.clear()
            self._buffered.clear()
            self._bytes = 0
        elif self._buffer:  # a flush still under way (a writer task that did not stop) owns them
            log.warning("shutting down with %d sampled events not written to Redis", len(self._buffer))

    async def ping(self, *, timeout_s: float) -> bool:
        """Check Redis now (at start-up, within ``timeout_s``) and record whether it answered."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._redis.ping()
        except REDIS_DOWN as error:  # the built-in TimeoutError is an OSError
            self._mark_up(False, error)
            return False
        self._mark_up(True)
        return True

    async def poll_lengths(self, models: Iterable[str]) -> None:
        """Read each model's stream length (its backlog: workers delete what they finish)."""
        names = sorted(set(models) | set(self._buffered))
        if not names:
            return
        pipe = self._redis.pipeline(transaction=False)
        for model in names:
            pipe.xlen(keys.sample_stream(model))
        try:
            lengths = await execute(pipe, raise_on_error=False)
        except REDIS_DOWN as error:
            self._mark_up(False, error)
            return
        self._mark_up(True)
        for model, length in zip(names, lengths, strict=True):
            if isinstance(length, Exception):
                log.error("XLEN %s failed: %s", keys.sample_stream(model), length)
                continue
            self._lengths[model] = int(length)
            self._metrics.queue_length.labels(model).set(length)

    def _mark_up(self, up: bool, error: BaseException | None = None) -> None:
        if up != self.redis_up:
            if up:
                log.info("Redis reachable again; flushing %d buffered samples", len(self._buffer))
            else:
                log.warning("Redis unreachable (%s); buffering samples", error)
        self.redis_up = up
        self._metrics.redis_up.set(1 if up else 0)
