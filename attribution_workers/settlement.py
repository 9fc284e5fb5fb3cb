"""How each stream entry a worker took ends: stored and acknowledged, left pending for a retry, or dead-lettered.

Every ending is counted in ``vai_explanations_total`` (and the dead-letter counters); see
:mod:`attribution_workers.worker` for the delivery rules these carry out. A dead-lettered event's explanation
record reads ``failed`` with the reason before its entry leaves the stream, and entries that Redis failed before
they were settled have their delivery taken back (:meth:`Settlement.interrupted`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

from redis.exceptions import ResponseError

from attribution_workers import outcomes
from attribution_workers.batch_result import BatchResult
from attribution_workers.bounded import WorkTimedOut
from attribution_workers.consumer import Delivery, GroupConsumer
from attribution_workers.failures import is_outage
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.outcomes import Outcome
from common.redis import REDIS_DOWN, REDIS_FAILED, stream_entry_time_s
from sampler.contract import MessageError, SampledEvent
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
        self._owed: dict[str, dict[bytes, Delivery]] = {}
        """By stream, deliveries Redis failed and did not answer for then: taken back before the next claim."""
        self._clock_warned = False

    async def trimmed(self, model: str, stream: str, delivery: Delivery) -> None:
        """The entry was trimmed by ``MAXLEN`` while pending: nothing is left to explain."""
        self._metrics.explanations.labels(model, "-", "trimmed").inc()
        await self._consumer.finish(stream, delivery.entry_id)

    async def settle(
        self, model: str, stream: str, events: list[tuple[Delivery, SampledEvent]], result: BatchResult
    ) -> None:
        """Record a batch's figures and end each of its entries by its outcome."""
        ended = _paired(events, result.outcomes)
        for method, seconds in result.seconds.items():
            self._metrics.seconds.labels(model, method).observe(seconds)
        for method, gain in result.fidelity_gain.items():
            self._metrics.fidelity.labels(model, method).set(gain)
        if result.agreement is not None:
            self._metrics.agreement.labels(model).set(result.agreement)
        self._count_mismatches(model, result)
        offset_s = await self._redis_clock_offset_s()
        for index, (delivery, outcome) in enumerate(ended):  # each alone: one not stored strands no other
            try:
                await self._settle_one(model, stream, delivery, outcome, offset_s)
            except Exception as error:
                later = [d for d, _ in ended[index + 1 :]]
                await self.failed(model, stream, [delivery], error, in_hand=later)

    def _count_mismatches(self, model: str, result: BatchResult) -> None:
        """Log the events on which the worker's model was not the server's, by kind, and say when the confidence
        could not be compared. The counters count stored explanations only (:meth:`_settle_one`), as the explanation
        lag's histogram does: the two make the share that ``VaiAttributionModelSkew`` watches, and a batch retried or
        an explanation already stored would count on one side only."""
        total = len(result.outcomes)
        if result.prediction_mismatches:
            log.warning(
                "%s: the worker's model predicts another class than the server reported on %d of %d events "
                "(version skew or different weights?); their maps are not trusted",
                model,
                result.prediction_mismatches,
                total,
            )
        if result.confidence_mismatches:
            log.warning(
                "%s: the worker's model predicts the reported class at another confidence than the server reported "
                "on %d of %d events (version skew or different weights?); their maps are not trusted",
                model,
                result.confidence_mismatches,
                total,
            )
        if result.confidence_unchecked:
            log.warning(
                "%s: %d of %d events reported no usable probability of their class: the worker's model's confidence "
                "was not compared with the server's (their records say so)",
                model,
                result.confidence_unchecked,
                total,
            )

    async def failed(
        self,
        model: str,
        stream: str,
        deliveries: Sequence[Delivery],
        error: Exception,
        *,
        in_hand: Sequence[Delivery] = (),
    ) -> None:
        """The work of ``deliveries`` raised ``error``. A timeout goes on up, the delivery counted (the worker ends
        as if it had died on them). A Redis outage goes on up too, once the delivery of ``deliveries`` and of
        ``in_hand`` (the batch's others not settled yet) is taken back: Redis failed, not they. Anything else fails
        just ``deliveries``, retried or dead-lettered like any failure."""
        if isinstance(error, WorkTimedOut):
            raise error
        if is_outage(error):
            await self.interrupted(stream, [*deliveries, *in_hand])
            raise error
        self._metrics.errors.labels(model).inc()
        log.error("%s: %d entries failed unexpectedly", model, len(deliveries), exc_info=error)
        await self.retry_or_give_up(model, stream, deliveries, f"{type(error).__name__}: {error}")

    async def interrupted(self, stream: str, deliveries: Sequence[Delivery]) -> None:
        """Redis failed before ``deliveries`` were settled: take back their delivery, so that the outage does not
        count against them (a worker reclaiming entries while Redis refuses writes would otherwise see them at
        ``max_deliveries`` when it recovers, and dead-letter them untried). Redis refusing writes still takes this
        back; one that does not answer has it taken back before the next claim (:meth:`uncount_owed`)."""
        owed = self._owed.setdefault(stream, {})
        owed.update({d.entry_id: d for d in deliveries if d.fields is not None})
        try:
            await self._uncount(stream)
        except REDIS_FAILED as error:
            log.debug("%s: deliveries taken back once Redis answers: %s: %s", stream, type(error).__name__, error)

    async def uncount_owed(self) -> None:
        """Take back the deliveries :meth:`interrupted` could not; raises while Redis still fails."""
        for stream in list(self._owed):
            await self._uncount(stream)

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
        """Mark the event's explanation ``failed`` with ``error``, then move the entry to the dead-letter stream.
        Redis failing either raises: the entry stays pending, and the whole of this is done again."""
        await self._mark_failed(model, delivery, error)
        trimmed = await self._consumer.dead_letter(model, stream, delivery, error)
        self._metrics.dead_letters.labels(model).inc()
        self._metrics.dead_letters_trimmed.labels(model).inc(trimmed)
        self._metrics.explanations.labels(model, "-", "dead").inc()
        log.error("%s entry %s dead-lettered: %s", model, delivery.entry_id.decode(), error)

    async def _settle_one(
        self, model: str, stream: str, delivery: Delivery, outcome: Outcome, offset_s: float | None
    ) -> None:
        summary = outcome.record.summary
        if outcome.ok:
            stored = await self._store.save(outcome.record)
            status = "ok" if stored else "duplicate"
            for method in summary.methods:
                self._metrics.explanations.labels(model, method, status).inc()
            if stored and offset_s is not None:
                waited_s = time.time() + offset_s - stream_entry_time_s(delivery.entry_id)
                self._metrics.lag.labels(model).observe(max(0.0, waited_s))
                mismatch = None if summary.worker_prediction is None else summary.worker_prediction.mismatch
                if mismatch == "class":
                    self._metrics.prediction_mismatch.labels(model).inc()
                elif mismatch == "confidence":
                    self._metrics.confidence_mismatch.labels(model).inc()
            await self._consumer.finish(stream, delivery.entry_id)
            self.processed += 1
            return
        error = outcome.record.detail.error or "unknown error"
        if not outcome.retry:
            await self.dead_letter(model, stream, delivery, error)
            return
        if delivery.deliveries < self._max_deliveries:
            await self._store.save(outcome.record)  # failed until a later delivery stores it done
        await self.retry_or_give_up(model, stream, [delivery], error)

    async def _mark_failed(self, model: str, delivery: Delivery, error: str) -> None:
        """Store the ``failed`` record of the entry's event, so that it does not read ``queued`` until it expires.
        A Redis outage raises; a record that can never be stored (Redis refuses its data) is logged, not retried.
        An entry that does not decode, or is another model's, has no record of this model to mark."""
        event = _event_of(model, delivery)
        if event is None:
            return
        try:
            await self._store.save(outcomes.failed(event, error, retry=False).record)
        except Exception as refusal:
            if is_outage(refusal):
                raise
            log.error(
                "%s entry %s: its explanation cannot be marked failed: %s: %s",
                model,
                delivery.entry_id.decode(),
                type(refusal).__name__,
                refusal,
                exc_info=not isinstance(refusal, REDIS_FAILED),  # a bug, not data Redis refuses
            )

    async def _uncount(self, stream: str) -> None:
        owed = self._owed.pop(stream, {})
        if not owed:
            return
        try:
            taken = await self._consumer.uncount(stream, owed.values())
        except REDIS_FAILED as error:
            if is_outage(error) and not _no_group(error):
                self._owed[stream] = owed | self._owed.get(stream, {})
                raise
            log.warning("%s: delivery of %d entries not taken back: %s", stream, len(owed), error)
            return
        log.debug("%s: took back the delivery of %d of %d entries Redis failed", stream, taken, len(owed))

    async def _redis_clock_offset_s(self) -> float | None:
        """Redis's clock minus this host's, read once a batch: a wait runs from the entry's id (Redis's clock when
        it entered the stream) to now on the same clock. None when Redis does not tell (no lag is observed)."""
        try:
            return await self._consumer.redis_time_s() - time.time()
        except REDIS_FAILED as error:
            if not isinstance(error, REDIS_DOWN) and not self._clock_warned:  # down: the results fail too
                self._clock_warned = True
                log.warning("explanation lag not measured: Redis TIME failed: %s: %s", type(error).__name__, error)
            return None


def _paired(events: list[tuple[Delivery, SampledEvent]], found: list[Outcome]) -> list[tuple[Delivery, Outcome]]:
    """Each outcome with the entry it ends. The runtime gives one outcome per event, in its own order, named by
    request id; two entries of one request id (a writer that sent a batch again after Redis took it) each get one
    of that id's outcomes, in stream order: keyed by id alone, the last entry took both and the other stayed
    pending until reclaimed and explained again."""
    waiting: dict[str, deque[Delivery]] = {}
    for delivery, event in events:
        waiting.setdefault(event.request_id, deque()).append(delivery)
    return [(waiting[outcome.record.summary.request_id].popleft(), outcome) for outcome in found]


def _event_of(model: str, delivery: Delivery) -> SampledEvent | None:
    """The entry's event, when it decodes and is ``model``'s."""
    if delivery.fields is None:
        return None
    try:
        event = SampledEvent.decode(delivery.fields)
    except MessageError:
        return None
    return event if event.model == model else None


def _no_group(error: BaseException) -> bool:
    """The consumer group is gone (Redis restarted empty): so are its pending entries."""
    return isinstance(error, ResponseError) and "NOGROUP" in str(error)
