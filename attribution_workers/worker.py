"""The attribution worker: consumer groups on the sample streams, at-least-once, idempotent results.

Delivery: entries are read with ``XREADGROUP``; an entry is acknowledged (and
deleted) only after its result is stored; storing is idempotent by
(model, request_id). A failed entry stays pending and is reclaimed with
``XAUTOCLAIM`` once it has been idle ``retry_after_ms`` (also how the entries of a
dead consumer come back); after ``max_deliveries`` it moves to the dead-letter
stream with its error. Entries that do not decode, or can never be explained,
go there at once, unexecuted, and so do entries delivered more than
``max_deliveries`` times (their worker died or timed out on each).

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
import socket
import time
from collections.abc import Mapping
from typing import NoReturn

import orjson
from redis.asyncio import Redis

from attribution_workers.bounded import WorkTimedOut, run_bounded
from attribution_workers.consumer import Delivery, GroupConsumer
from attribution_workers.inspection_health import HealthSnapshot
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.reconnect import RedisOutage
from attribution_workers.runtime import BatchResult, ModelRuntime, Outcome
from common import keys
from common.errors import RedisUnavailable
from common.redis import REDIS_FAILED
from sampler.contract import MessageError, SampledEvent
from sampler.explanation_records import SanityFigure
from sampler.explanations import ExplanationStore
from sampler.layers import LayerHealthReport, LayerHealthStore

log = logging.getLogger(__name__)
__all__ = ["AttributionWorker", "Delivery", "default_consumer"]


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
        self._job_timeout_s = job_timeout_s
        self._max_deliveries = max_deliveries
        self._heartbeat_ttl_s = heartbeat_ttl_s
        self._streams = {keys.sample_stream(model): model for model in self._runtimes}
        self._consumer = GroupConsumer(
            redis,
            self._streams,
            consumer=consumer,
            batch_size=batch_size,
            block_ms=block_ms,
            retry_after_ms=retry_after_ms,
            max_deliveries=max_deliveries,
        )
        self.processed = 0
        self._outage = RedisOutage(metrics.redis_up)
        self._layers = LayerHealthStore(redis)

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
                if not grouped:
                    await self.ensure_groups()
                    grouped = True
                await self.step()
            except REDIS_FAILED as error:
                await _pause(stop, self._outage.failed(error))
            else:
                self._outage.succeeded()

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def ensure_groups(self) -> None:
        """Create the consumer group of every stream (at 0, so nothing already queued is missed)."""
        await self._consumer.ensure_groups()

    async def step(self) -> int:
        """Reclaim idle entries, read new ones, and process them; returns how many were handled."""
        handled = 0
        for stream, model in self._streams.items():
            claimed = await self._consumer.claim_idle(stream)
            if claimed:
                await self._process(model, stream, claimed)
                handled += len(claimed)
        for stream, deliveries in (await self._consumer.read_new()).items():
            await self._process(self._streams[stream], stream, deliveries)
            handled += len(deliveries)
        return handled

    async def _process(self, model: str, stream: str, deliveries: list[Delivery]) -> None:
        events: list[tuple[Delivery, SampledEvent]] = []
        for delivery in deliveries:
            if delivery.fields is None:  # trimmed by MAXLEN while pending: nothing left to explain
                self._metrics.explanations.labels(model, "-", "trimmed").inc()
                await self._consumer.finish(stream, delivery.entry_id)
                continue
            if delivery.deliveries > self._max_deliveries:  # its worker died or timed out each time
                await self._dead_letter(model, stream, delivery, f"no result after {delivery.deliveries} deliveries")
                continue
            try:
                events.append((delivery, SampledEvent.decode(delivery.fields)))
            except MessageError as error:
                await self._dead_letter(model, stream, delivery, f"undecodable entry: {error}")
        if not events:
            return
        self._metrics.batch_size.observe(len(events))
        runtime = self._runtimes[model]
        batch = [e for _, e in events]
        sanity = await self._sanity_figures(model)
        try:
            result = await run_bounded(
                lambda: runtime.explain(batch, sanity), timeout_s=self._job_timeout_s, name=f"explain-{model}"
            )
        except TimeoutError:
            await self._timed_out(model, stream, [d for d, _ in events])
        await self._settle(model, stream, events, result)
        if runtime.sanity_due():
            await self._sanity(model, runtime)

    async def _sanity_figures(self, model: str) -> dict[str, SanityFigure]:
        """The latest sanity figure of each method of ``model`` (any worker's), for the verdicts.

        Unreadable, it is a Redis outage like any other: the batch waits, its entries pending.
        """
        try:
            return await self._store.sanity(model)
        except RedisUnavailable as error:
            raise ConnectionError(str(error)) from error

    async def _timed_out(self, model: str, stream: str, deliveries: list[Delivery]) -> NoReturn:
        """Give up on the entries that had their last delivery, leave the others pending, end the run."""
        message = f"batch of {len(deliveries)} {model} events timed out after {self._job_timeout_s:g} s"
        log.error("%s; the worker must restart to free the model", message)
        try:
            await self._retry_or_give_up(model, stream, deliveries, "attribution timed out")
        except REDIS_FAILED:
            log.exception("could not record the timed-out batch; its entries stay pending")
        raise WorkTimedOut(message)

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
        if result.layer_health is not None:
            self._metrics.inspection_seconds.labels(model).observe(result.inspection_seconds)
            await self._publish_layers(model, result.layer_health)

    async def _publish_layers(self, model: str, snapshot: HealthSnapshot) -> None:
        """Layer gauges of ``model``, and this worker's report for every sidecar to serve."""
        for layer in snapshot.layers:
            self._metrics.layer_dead.labels(model, layer.name).set(layer.dead_ratio)
            if layer.saturated_ratio is not None:
                self._metrics.layer_saturated.labels(model, layer.name).set(layer.saturated_ratio)
            if layer.activation_shift is not None:
                self._metrics.layer_shift.labels(model, layer.name).set(layer.activation_shift)
        report = LayerHealthReport(
            worker=self.consumer,
            version=snapshot.version,
            samples=snapshot.samples,
            window=snapshot.window,
            updated_at=time.time(),
            layers=snapshot.layers,
        )
        await self._layers.publish(model, report)

    async def _settle_one(self, model: str, stream: str, delivery: Delivery, outcome: Outcome) -> None:
        summary = outcome.record.summary
        if outcome.ok:
            stored = await self._store.save(outcome.record)
            status = "ok" if stored else "duplicate"
            for method in summary.methods:
                self._metrics.explanations.labels(model, method, status).inc()
            if stored:
                self._metrics.lag.labels(model).observe(max(0.0, time.time() - summary.timestamp))
            await self._consumer.finish(stream, delivery.entry_id)
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
        await self._consumer.dead_letter(model, stream, delivery, error)
        self._metrics.dead_letters.labels(model).inc()
        self._metrics.explanations.labels(model, "-", "dead").inc()
        log.error("%s entry %s dead-lettered: %s", model, delivery.entry_id.decode(), error)

    async def _sanity(self, model: str, runtime: ModelRuntime) -> None:
        try:
            checks = await run_bounded(runtime.sanity_check, timeout_s=self._job_timeout_s, name=f"sanity-{model}")
        except TimeoutError:
            raise WorkTimedOut(f"sanity check of {model} timed out after {self._job_timeout_s:g} s") from None
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
            try:
                await self._redis.set(key, body, ex=self._heartbeat_ttl_s)
            except REDIS_FAILED as error:  # the work loop reports outages; the heartbeat just tries again
                log.debug("heartbeat not written: %s: %s", type(error).__name__, error)
            await _pause(stop, self._heartbeat_ttl_s / 3)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
