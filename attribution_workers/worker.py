"""The attribution worker: consumer groups on the sample streams, at-least-once, idempotent results.

Delivery: entries are read with ``XREADGROUP``; an entry is acknowledged (and
deleted) only after its result is stored; storing is idempotent by
(model, request_id). A failed entry stays pending and is reclaimed with
``XAUTOCLAIM`` once it has been idle ``retry_after_ms`` (also how the entries of a
dead consumer come back); after ``max_deliveries`` it moves to the dead-letter
stream with its error. Entries that do not decode, or can never be explained,
go there at once, unexecuted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import BatchResult, ModelRuntime, Outcome
from common import keys
from sampler.contract import MessageError, SampledEvent
from sampler.explanations import ExplanationStore, SanityFigure

log = logging.getLogger(__name__)
Fields = dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Delivery:
    entry_id: bytes
    fields: Fields | None
    """None when the entry was trimmed from the stream while pending."""
    deliveries: int


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


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
    ) -> None:
        self._redis = redis
        self._store = store
        self._runtimes = dict(runtimes)
        self._metrics = metrics
        self.consumer = consumer
        self._batch_size = batch_size
        self._block_ms = block_ms
        self._job_timeout_s = job_timeout_s
        self._max_deliveries = max_deliveries
        self._retry_after_ms = retry_after_ms
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._streams = {keys.sample_stream(model): model for model in self._runtimes}
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; the batch in hand is always finished first."""
        await self.ensure_groups()
        heartbeat = asyncio.create_task(self._heartbeat(stop), name="heartbeat")
        try:
            while not stop.is_set():
                await self.step()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._redis.delete(keys.worker_heartbeat(self.consumer))

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def ensure_groups(self) -> None:
        """Create the consumer group of every stream (at 0, so nothing already queued is missed)."""
        for stream in self._streams:
            try:
                await self._redis.xgroup_create(stream, keys.CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def step(self) -> int:
        """Reclaim idle entries, read new ones, and process them; returns how many were handled."""
        handled = 0
        for stream, model in self._streams.items():
            claimed = await self._claim_idle(stream)
            if claimed:
                await self._process(model, stream, claimed)
                handled += len(claimed)
        for stream, deliveries in (await self._read_new()).items():
            await self._process(self._streams[stream], stream, deliveries)
            handled += len(deliveries)
        return handled

    async def _read_new(self) -> dict[str, list[Delivery]]:
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
            name = stream.decode() if isinstance(stream, bytes) else stream
            found[name] = [Delivery(entry_id, fields or None, 1) for entry_id, fields in entries]
        return found

    async def _claim_idle(self, stream: str) -> list[Delivery]:
        try:
            _, entries, *deleted = await self._redis.xautoclaim(
                stream,
                keys.CONSUMER_GROUP,
                self.consumer,
                min_idle_time=self._retry_after_ms,
                start_id="0-0",
                count=self._batch_size,
            )
        except ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self.ensure_groups()
            return []
        gone_ids: list[bytes] = list(deleted[0]) if deleted else []
        live = [(entry_id, fields) for entry_id, fields in entries if entry_id is not None and fields]
        if len(live) < len(entries):  # Redis < 7 reports trimmed entries without their ids
            gone_ids += await self._vanished(stream)
        gone = [Delivery(entry_id, None, 0) for entry_id in gone_ids]
        if not live:
            return gone
        counts = await self._delivery_counts(stream, [entry_id for entry_id, _ in live])
        return gone + [
            Delivery(entry_id, fields, counts.get(entry_id, self._max_deliveries)) for entry_id, fields in live
        ]

    async def _vanished(self, stream: str) -> list[bytes]:
        """Ids pending on this consumer whose entries are no longer in the stream."""
        pending: list[dict[str, Any]] = await self._redis.xpending_range(
            stream, keys.CONSUMER_GROUP, min="-", max="+", count=self._batch_size * 4, consumername=self.consumer
        )
        ids = [item["message_id"] for item in pending]
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(stream, entry_id, entry_id, count=1)
        return [entry_id for entry_id, found in zip(ids, await pipe.execute(), strict=True) if not found]

    async def _delivery_counts(self, stream: str, entry_ids: list[bytes]) -> dict[bytes, int]:
        pending: list[dict[str, Any]] = await self._redis.xpending_range(
            stream, keys.CONSUMER_GROUP, min=entry_ids[0], max=entry_ids[-1], count=len(entry_ids) * 4 + 16
        )
        return {item["message_id"]: int(item["times_delivered"]) for item in pending}

    async def _process(self, model: str, stream: str, deliveries: list[Delivery]) -> None:
        events: list[tuple[Delivery, SampledEvent]] = []
        for delivery in deliveries:
            if delivery.fields is None:  # trimmed by MAXLEN while pending: nothing left to explain
                self._metrics.explanations.labels(model, "-", "trimmed").inc()
                await self._finish(stream, delivery.entry_id)
                continue
            try:
                events.append((delivery, SampledEvent.decode(delivery.fields)))
            except MessageError as error:
                await self._dead_letter(model, stream, delivery, f"undecodable entry: {error}")
        if not events:
            return
        self._metrics.batch_size.observe(len(events))
        runtime = self._runtimes[model]
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(runtime.explain, [e for _, e in events]), timeout=self._job_timeout_s
            )
        except TimeoutError:
            log.error("batch of %d %s events timed out after %.0f s", len(events), model, self._job_timeout_s)
            await self._retry_or_give_up(model, stream, [d for d, _ in events], "attribution timed out")
            return
        await self._settle(model, stream, events, result)
        if runtime.sanity_due():
            await self._sanity(model, runtime)

    async def _settle(
        self, model: str, stream: str, events: list[tuple[Delivery, SampledEvent]], result: BatchResult
    ) -> None:
        by_id = {event.request_id: delivery for delivery, event in events}
        for method, seconds in result.seconds.items():
            self._metrics.seconds.labels(model, method).observe(seconds)
        for method, gain in result.fidelity_gain.items():
            self._metrics.fidelity.labels(model, method).set(gain)
        if result.agreement is not None:
            self._metrics.agreement.labels(model).set(result.agreement)
        for outcome in result.outcomes:
            await self._settle_one(model, stream, by_id[outcome.record.summary.request_id], outcome)

    async def _settle_one(self, model: str, stream: str, delivery: Delivery, outcome: Outcome) -> None:
        summary = outcome.record.summary
        if outcome.ok:
            stored = await self._store.save(outcome.record)
            status = "ok" if stored else "duplicate"
            for method in summary.methods:
                self._metrics.explanations.labels(model, method, status).inc()
            if stored:
                self._metrics.lag.labels(model).observe(max(0.0, time.time() - summary.timestamp))
            await self._finish(stream, delivery.entry_id)
            self.processed += 1
            return
        error = outcome.record.detail.error or "unknown error"
        await self._store.save(outcome.record)
        if not outcome.retry:
            await self._dead_letter(model, stream, delivery, error)
        else:
            await self._retry_or_give_up(model, stream, [delivery], error)

    async def _retry_or_give_up(self, model: str, stream: str, deliveries: list[Delivery], error: str) -> None:
        for delivery in deliveries:
            if delivery.deliveries >= self._max_deliveries:
                await self._dead_letter(model, stream, delivery, f"{error} (after {delivery.deliveries} deliveries)")
            else:
                self._metrics.explanations.labels(model, "-", "failed").inc()
                log.warning(
                    "%s entry %s failed (delivery %d of %d), will retry: %s",
                    model,
                    delivery.entry_id.decode(),
                    delivery.deliveries,
                    self._max_deliveries,
                    error,
                )

    async def _dead_letter(self, model: str, stream: str, delivery: Delivery, error: str) -> None:
        fields: dict[bytes, bytes] = dict(delivery.fields or {})
        fields.update(
            {
                b"error": error.encode()[:4000],
                b"source_id": delivery.entry_id,
                b"deliveries": str(delivery.deliveries).encode(),
                b"consumer": self.consumer.encode(),
            }
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(keys.dead_letter_stream(model), fields)  # type: ignore[arg-type]
        pipe.xack(stream, keys.CONSUMER_GROUP, delivery.entry_id)
        pipe.xdel(stream, delivery.entry_id)
        await pipe.execute()
        self._metrics.dead_letters.labels(model).inc()
        self._metrics.explanations.labels(model, "-", "dead").inc()
        log.error("%s entry %s dead-lettered: %s", model, delivery.entry_id.decode(), error)

    async def _finish(self, stream: str, entry_id: bytes) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(stream, keys.CONSUMER_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()

    async def _sanity(self, model: str, runtime: ModelRuntime) -> None:
        try:
            checks = await asyncio.to_thread(runtime.sanity_check)
        except Exception:
            log.exception("randomisation sanity check of %s failed", model)
            return
        for check in checks:
            self._metrics.sanity.labels(model, check.method).set(check.similarity)
            figure = SanityFigure(
                similarity=check.similarity,
                flagged=check.flagged,
                samples=runtime.config.sanity_samples,
                checked_at=time.time(),
            )
            await self._store.save_sanity(model, check.method, figure)
            if check.flagged:
                log.warning(
                    "%s: %s maps barely change on a randomised model (similarity %.2f)",
                    model,
                    check.method,
                    check.similarity,
                )

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        key = keys.worker_heartbeat(self.consumer)
        while not stop.is_set():
            body = orjson.dumps(
                {"models": sorted(self._runtimes), "pid": os.getpid(), "processed": self.processed, "at": time.time()}
            )
            with contextlib.suppress(OSError, ConnectionError):
                await self._redis.set(key, body, ex=self._heartbeat_ttl_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._heartbeat_ttl_s / 3)
