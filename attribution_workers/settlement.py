"""How each stream entry a worker took ends: stored and acknowledged, left pending for a retry, or dead-lettered.

Every ending is counted in ``vai_explanations_total`` (and the dead-letter counters); see
:mod:`attribution_workers.worker` for the delivery rules these carry out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from attribution_workers.bounded import WorkTimedOut
from attribution_workers.consumer import Delivery, GroupConsumer
from attribution_workers.failures import is_outage
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.outcomes import Outcome
from attribution_workers.runtime import BatchResult
from sampler.contract import SampledEvent
from sampler.explanations import ExplanationStore

log = logging.getLogger(__name__)


class Settlement:
    """Ends entries of one worker's streams; ``processed`` counts the explanations it stored or found stored."""

    def __init__(
        self, consumer: GroupConsumer, store: ExplanationStore, metrics: WorkerMetrics, *, max_deliveries: int
    ) -> None:
        self._consumer = consumer
        self._store = store
        self._metrics = metrics
        self._max_deliveries = max_deliveries
        self.processed = 0

    async def trimmed(self, model: str, stream: str, delivery: Delivery) -> None:
        """The entry was trimmed by ``MAXLEN`` while pending: nothing is left to explain."""
        self._metrics.explanations.labels(model, "-", "trimmed").inc()
        await self._consumer.finish(stream, delivery.entry_id)

    async def settle(
        self, model: str, stream: str, events: list[tuple[Delivery, SampledEvent]], result: BatchResult
    ) -> None:
        """Record a batch's figures and end each of its entries by its outcome."""
        by_id = {event.request_id: delivery for delivery, event in events}
        for method, seconds in result.seconds.items():
            self._metrics.seconds.labels(model, method).observe(seconds)
        for method, gain in result.fidelity_gain.items():
            self._metrics.fidelity.labels(model, method).set(gain)
        if result.agreement is not None:
            self._metrics.agreement.labels(model).set(result.agreement)
        for outcome in result.outcomes:  # each alone: one that cannot be stored does not strand the others
            delivery = by_id[outcome.record.summary.request_id]
            try:
                await self._settle_one(model, stream, delivery, outcome)
            except Exception as error:
                await self.failed(model, stream, [delivery], error)

    async def failed(self, model: str, stream: str, deliveries: Sequence[Delivery], error: Exception) -> None:
        """The work of ``deliveries`` raised ``error``: a Redis outage or a timeout goes on up (the entries stay
        pending); anything else fails just these entries, retried or dead-lettered like any failure."""
        if isinstance(error, WorkTimedOut) or is_outage(error):
            raise error
        self._metrics.errors.labels(model).inc()
        log.error("%s: %d entries failed unexpectedly", model, len(deliveries), exc_info=error)
        await self.retry_or_give_up(model, stream, deliveries, f"{type(error).__name__}: {error}")

    async def retry_or_give_up(self, model: str, stream: str, deliveries: Sequence[Delivery], error: str) -> None:
        """Leave each entry pending for ``XAUTOCLAIM``, or dead-letter it once it has had its last delivery."""
        for delivery in deliveries:
            if delivery.deliveries >= self._max_deliveries:
                await self.dead_letter(model, stream, delivery, f"{error} (after {delivery.deliveries} deliveries)")
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

    async def dead_letter(self, model: str, stream: str, delivery: Delivery, error: str) -> None:
        trimmed = await self._consumer.dead_letter(model, stream, delivery, error)
        self._metrics.dead_letters.labels(model).inc()
        self._metrics.dead_letters_trimmed.labels(model).inc(trimmed)
        self._metrics.explanations.labels(model, "-", "dead").inc()
        log.error("%s entry %s dead-lettered: %s", model, delivery.entry_id.decode(), error)

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
            await self.dead_letter(model, stream, delivery, error)
        else:
            await self.retry_or_give_up(model, stream, [delivery], error)
