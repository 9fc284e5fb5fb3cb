"""The attribution worker: consumer groups on the sample streams, at-least-once, idempotent results.

Delivery: entries are read with ``XREADGROUP``; an entry is acknowledged (and
deleted) only after its result is stored; storing is idempotent by
(model, request_id). A failed entry stays pending and is reclaimed with
``XAUTOCLAIM`` once it has been idle ``retry_after_ms`` (also how the entries of a
dead consumer come back; while a worker works on entries it keeps them from
looking idle, until the work's deadline: :mod:`attribution_workers.holding`);
after ``max_deliveries`` it moves to the dead-letter stream with its error.
Entries that do not decode, or can never be explained, go there at once,
unexecuted, and so do entries delivered more than
``max_deliveries`` times (their worker died or timed out on each). A
dead-lettered event's explanation record is marked ``failed`` with the error
first (Redis failing that leaves the entry pending, to be settled again).

Deliveries count against an entry only when the entry's own work failed or
never ended: Redis counts one at each read and reclaim, so when Redis fails
before the entries in hand are settled (a result it refuses, a reclaim while it
is out of memory) the worker takes that delivery back (``XCLAIM … RETRYCOUNT``,
which Redis serves even when out of memory) before the outage pauses it, or
before its next claim when Redis did not answer. And a worker in an outage
writes its heartbeat before it takes entries again: while Redis refuses writes
it claims nothing. (Counting attempts in a key of our own was the alternative:
that count is a write Redis refuses in the very outage, and a second counter
beside Redis's own would disagree with ``XPENDING``.)

Failures: an error in the work of one entry or batch that is not a Redis outage (a bug, a stored record
that no longer parses, data Redis refuses) fails that entry or batch, which is retried or dead-lettered as
above, and is counted in ``vai_worker_errors_total``; the loop goes on with the next. An entry whose
``model`` is not its stream's goes to the dead-letter stream at once.

Redis outages: a failed Redis call pauses the loop with capped exponential
backoff (0.1 s doubling to 5 s, jittered), logged once per outage and once on
recovery (``vai_worker_redis_up``); the worker also starts while Redis is
unreachable, and recreates its consumer groups when Redis comes back empty.

Timeouts: a thread cannot be stopped, so a batch that overruns
``job_timeout_s`` ends the process. (The alternative, a long-lived child process
per model that the worker kills and restarts, would add a second process protocol
and copy every batch and result across it, for a rare event a supervisor already
handles.) On a timeout, entries that have had their ``max_deliveries`` are
dead-lettered, the others stay pending, the heartbeat is removed, and
:class:`~attribution_workers.bounded.WorkTimedOut` reaches ``vai-sidecar worker``,
which exits with
:data:`~attribution_workers.bounded.EXIT_TIMED_OUT` for its supervisor to restart
it. The restarted worker reclaims the entries with ``XAUTOCLAIM``, counting the
delivery, so a batch that always hangs ends in the dead-letter stream. The
randomisation sanity check has the same deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import NoReturn

import orjson
from redis.asyncio import Redis

from attribution_workers.batch_result import BatchResult
from attribution_workers.bounded import WorkTimedOut, run_bounded
from attribution_workers.consumer import Delivery, GroupConsumer
from attribution_workers.failures import is_outage
from attribution_workers.holding import EntryKeeper
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.reconnect import RedisOutage
from attribution_workers.runtime import ModelRuntime
from attribution_workers.settlement import Settlement
from attribution_workers.upkeep import BatchUpkeep
from common import keys
from common.redis import REDIS_FAILED
from sampler.contract import MessageError, SampledEvent
from sampler.explanation_records import SanityFigure
from sampler.explanations import ExplanationStore
from sampler.layers import LayerBaselineStore, LayerHealthStore

log = logging.getLogger(__name__)
__all__ = ["AttributionWorker", "Delivery"]


class AttributionWorker:
    def __init__(
        self,
        redis: Redis,
        store: ExplanationStore,
        runtimes: Mapping[str, ModelRuntime],
        metrics: WorkerMetrics,
        *,
        consumer: str,
        batch_size: int = 16,
        block_ms: int = 1000,
        job_timeout_s: float = 120.0,
        max_deliveries: int = 3,
        retry_after_ms: int = 30_000,
        heartbeat_ttl_s: int = 15,
        dead_letter_max_entries: int = 10_000,
        dead_letter_ttl_s: int = 7 * 24 * 3600,
        dead_letter_max_input_bytes: int = 64 * 1024,
    ) -> None:
        self._redis = redis
        self._store = store
        self._runtimes = dict(runtimes)
        self._metrics = metrics
        self.consumer = consumer
        self._job_timeout_s = job_timeout_s
        self._max_deliveries = max_deliveries
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._streams = {keys.sample_stream(model): model for model in self._runtimes}
        for model in self._runtimes:
            metrics.start_counting(model)
        self._consumer = GroupConsumer(
            redis,
            self._streams,
            consumer=consumer,
            batch_size=batch_size,
            block_ms=block_ms,
            retry_after_ms=retry_after_ms,
            max_deliveries=max_deliveries,
            dead_letter_max_entries=dead_letter_max_entries,
            dead_letter_ttl_s=dead_letter_ttl_s,
            dead_letter_max_input_bytes=dead_letter_max_input_bytes,
        )
        self._keeper = EntryKeeper(self._consumer, retry_after_ms=retry_after_ms, job_timeout_s=job_timeout_s)
        self._settlement = Settlement(self._consumer, store, metrics, max_deliveries=max_deliveries)
        self._outage = RedisOutage(metrics.redis_up)
        self._upkeep = BatchUpkeep(
            store,
            LayerHealthStore(redis),
            metrics,
            baselines=LayerBaselineStore(redis),
            worker=consumer,
            job_timeout_s=job_timeout_s,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; the batch in hand is always finished first.

        Redis outages are waited out; :class:`WorkTimedOut` ends the run (see the module docstring).
        """
        heartbeat = asyncio.create_task(self._heartbeat(stop), name="heartbeat")
        try:
            await self._work(stop)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            with contextlib.suppress(*REDIS_FAILED):
                await self._redis.delete(keys.worker_heartbeat(self.consumer))

    async def _work(self, stop: asyncio.Event) -> None:
        grouped = False
        while not stop.is_set():
            try:
                if self._outage.down:  # take no entry until Redis accepts a write: each claim would count
                    await self._write_heartbeat()
                if not grouped:
                    await self.ensure_groups()
                    grouped = True
                await self.step()
            except WorkTimedOut:
                raise
            except Exception as error:
                if is_outage(error):
                    await _pause(stop, self._outage.failed(error))
                    continue
                self._metrics.errors.labels("-").inc()  # the entries of the step stay pending for a retry
                log.exception("worker step failed; going on")
                await _pause(stop, _AFTER_ERROR_S)
            else:
                self._outage.succeeded()

    @property
    def processed(self) -> int:
        """Explanations this worker stored (or found already stored) since it started."""
        return self._settlement.processed

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def ensure_groups(self) -> None:
        """Create the consumer group of every stream (at 0, so nothing already queued is missed)."""
        await self._consumer.ensure_groups()

    async def step(self) -> int:
        """Reclaim idle entries, read new ones, and process them; returns how many were handled. The entries in
        hand, those waiting behind a batch included, are kept from looking idle meanwhile (:attr:`_keeper`)."""
        await self._settlement.uncount_owed()
        async with self._keeper.keeping():
            handled = 0
            for stream, model in self._streams.items():
                claimed = await self._consumer.claim_idle(stream)
                if claimed:
                    await self._process(model, stream, claimed)
                    handled += len(claimed)
            found = await self._consumer.read_new()
            for stream, deliveries in found.items():
                self._keeper.hold(stream, deliveries)
            for stream, deliveries in found.items():
                await self._process(self._streams[stream], stream, deliveries)
                handled += len(deliveries)
            return handled

    async def _process(self, model: str, stream: str, deliveries: list[Delivery]) -> None:
        self._keeper.hold(stream, deliveries)
        self._keeper.working()
        try:
            await self._settle_batch(model, stream, deliveries)
        finally:  # settled, or left pending for a retry: idle from now on
            self._keeper.release(stream, deliveries)

    async def _settle_batch(self, model: str, stream: str, deliveries: list[Delivery]) -> None:
        events: list[tuple[Delivery, SampledEvent]] = []
        for index, delivery in enumerate(deliveries):
            try:
                event = await self._admitted(model, stream, delivery)
            except Exception as error:
                in_hand = [d for d, _ in events] + deliveries[index + 1 :]
                await self._settlement.failed(model, stream, [delivery], error, in_hand=in_hand)
                continue
            if event is not None:
                events.append((delivery, event))
        if not events:
            return
        try:
            result = await self._explained(model, stream, events)
        except Exception as error:
            await self._settlement.failed(model, stream, [d for d, _ in events], error)
            return
        await self._settlement.settle(model, stream, events, result)
        self._keeper.working()  # a sanity check may run, as long as a batch, while other streams' entries wait
        try:
            await self._upkeep.after_batch(model, self._runtimes[model], result)
        except Exception as error:  # the entries are settled: nothing to retry
            if isinstance(error, WorkTimedOut) or is_outage(error):
                raise
            self._metrics.errors.labels(model).inc()
            log.exception("%s: layer health or sanity check failed after a batch", model)

    async def _admitted(self, model: str, stream: str, delivery: Delivery) -> SampledEvent | None:
        """The event of an entry to explain, or None when the entry is settled without it."""
        if delivery.fields is None:
            await self._settlement.trimmed(model, stream, delivery)
            return None
        if delivery.deliveries > self._max_deliveries:  # its worker died or timed out each time
            await self._settlement.dead_letter(
                model, stream, delivery, f"no result after {delivery.deliveries} deliveries"
            )
            return None
        try:
            event = SampledEvent.decode(delivery.fields)
        except MessageError as error:
            await self._settlement.dead_letter(model, stream, delivery, f"undecodable entry: {error}")
            return None
        if event.model != model:
            await self._settlement.dead_letter(
                model, stream, delivery, f"entry of model {event.model!r} in the stream of {model!r}"
            )
            return None
        return event

    async def _explained(self, model: str, stream: str, events: list[tuple[Delivery, SampledEvent]]) -> BatchResult:
        self._metrics.batch_size.observe(len(events))
        runtime = self._runtimes[model]
        batch = [e for _, e in events]
        sanity = await self._sanity_figures(model)
        baselines = await self._upkeep.stored_baselines(model, runtime, batch)
        self._keeper.working()
        try:
            return await run_bounded(
                lambda: runtime.explain(batch, sanity, baselines),
                timeout_s=self._job_timeout_s,
                name=f"explain-{model}",
            )
        except TimeoutError:
            await self._timed_out(model, stream, [d for d, _ in events])

    async def _sanity_figures(self, model: str) -> dict[str, SanityFigure]:
        """The latest sanity figure of each method of ``model`` (any worker's), for the verdicts.

        Unreadable (``RedisUnavailable``), it is a Redis outage like any other: the batch waits, its entries
        pending.
        """
        return await self._store.sanity(model)

    async def _timed_out(self, model: str, stream: str, deliveries: list[Delivery]) -> NoReturn:
        """Give up on the entries that had their last delivery, leave the others pending, end the run."""
        message = f"batch of {len(deliveries)} {model} events timed out after {self._job_timeout_s:g} s"
        log.error("%s; the worker must restart to free the model", message)
        try:
            await self._settlement.retry_or_give_up(model, stream, deliveries, "attribution timed out")
        except REDIS_FAILED:
            log.exception("could not record the timed-out batch; its entries stay pending")
        raise WorkTimedOut(message)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._write_heartbeat()
            except REDIS_FAILED as error:  # the work loop reports outages; the heartbeat just tries again
                log.debug("heartbeat not written: %s: %s", type(error).__name__, error)
            await _pause(stop, self._heartbeat_ttl_s / 3)

    async def _write_heartbeat(self) -> None:
        body = orjson.dumps(
            {"models": sorted(self._runtimes), "pid": os.getpid(), "processed": self.processed, "at": time.time()}
        )
        await self._redis.set(keys.worker_heartbeat(self.consumer), body, ex=self._heartbeat_ttl_s)


_AFTER_ERROR_S = 1.0
"""Pause after a step failed with an error other than a Redis outage, so a persistent bug cannot spin the loop."""


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
