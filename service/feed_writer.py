"""What the sidecar publishes for the fleet monitor, written to Redis off the request path.

Per accepted event the request path only appends to bounded buffers (O(1), no I/O):

* the prediction feed (``vai:feed:{model}``), for drift — within a per-replica budget
  (``VAI_MONITOR_MAX_PER_SECOND``) beyond which events are sampled uniformly at random;
* the prediction record that waits in Redis (with a TTL) for a delayed label;
* the labelled feed (``vai:labelled:{model}``) when the event carries its label, or when a
  delayed label joins its record.

A background task writes them continuously in pipelined batches (``XADD … MAXLEN ~`` and one
Lua call for the records). Every record not kept is counted in
``vai_monitor_records_dropped_total{model, feed, reason}``: ``budget``, ``buffer_full``
(Redis slow), ``redis_unavailable`` (Redis down; the oldest waiting are dropped) or
``redis_error`` (Redis refused the write, e.g. out of memory).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from common import keys
from common.redis import REDIS_DOWN, REDIS_FAILED
from monitors.feed import MonitoringRecord
from service.validation import Prediction, softmax

log = logging.getLogger(__name__)

PREDICTIONS, LABELLED, RECORDS = "predictions", "labelled", "label_join"
"""The ``feed`` label: the drift feed, the labelled feed, and records waiting for a delayed label."""

_SET_ALL = """
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
"""


class UniformBudget:
    """Keeps each event with probability ``budget / rate`` once the rate exceeds the budget.

    The rate is the larger of the previous second's count and the current second's so far,
    so a burst is thinned from its start and every event of a second has the same chance.
    """

    def __init__(self, per_second: int, *, rng: random.Random | None = None) -> None:
        self._budget = per_second
        self._second = 0
        self._count = 0
        self._previous = 0
        self._random = (rng or random.Random()).random

    def admit(self, now_s: float) -> bool:
        if self._budget <= 0:
            return True
        second = int(now_s)
        if second != self._second:
            self._previous = self._count if second == self._second + 1 else 0
            self._second, self._count = second, 0
        self._count += 1
        rate = max(self._previous, self._count)
        return rate <= self._budget or self._random() < self._budget / rate


@dataclass(slots=True)
class _Pending:
    feed: str
    model: str
    record: MonitoringRecord


class FeedWriter:
    def __init__(
        self,
        redis: Redis,
        registry: CollectorRegistry,
        *,
        max_per_second: int,
        max_records: int,
        stream_maxlen: int,
        prediction_ttl_s: int,
        brier_max_classes: int,
        batch: int = 500,
        retry_s: float = 0.5,
    ) -> None:
        self._redis = redis
        self._budget = UniformBudget(max_per_second)
        self._pending: deque[_Pending] = deque()
        self._max_records = max_records
        self._stream_maxlen = stream_maxlen
        self._ttl_s = prediction_ttl_s
        self._brier_max_classes = brier_max_classes
        self._batch = batch
        self._retry_s = retry_s
        self._announced: set[str] = set()
        self._announced_at = time.monotonic()
        self.redis_up = True
        self._writing = asyncio.Lock()
        """Held while a batch is out of the buffer and on its way to Redis."""
        self._set_all = redis.register_script(_SET_ALL)
        self.dropped = Counter(
            "vai_monitor_records_dropped",
            "Monitoring records not written to Redis, by feed and reason.",
            ["model", "feed", "reason"],
            registry=registry,
        )
        self.labels = Counter(
            "vai_labels", "Labels by whether they found their prediction.", ["model", "matched"], registry=registry
        )
        self.written = Counter(
            "vai_monitor_records_written",
            "Monitoring records written to Redis, by feed.",
            ["model", "feed"],
            registry=registry,
        )

    def __len__(self) -> int:
        return len(self._pending)

    # --- request path ------------------------------------------------------------------------

    def observe(self, prediction: Prediction, version: str) -> None:
        record = self._record(prediction, version)
        if prediction.label is not None:
            self.offer(LABELLED, record.labelled(prediction.label))
            self.labels.labels(prediction.model, "true").inc()
        else:
            self.offer(RECORDS, record)
        if self._budget.admit(prediction.received_at):
            self.offer(PREDICTIONS, record)
        else:
            self.dropped.labels(prediction.model, PREDICTIONS, "budget").inc()

    def offer(self, feed: str, record: MonitoringRecord) -> None:
        if len(self._pending) >= self._max_records:
            oldest = self._pending.popleft()
            reason = "buffer_full" if self.redis_up else "redis_unavailable"
            self.dropped.labels(oldest.model, oldest.feed, reason).inc()
        self._pending.append(_Pending(feed, record.model, record))

    def _record(self, prediction: Prediction, version: str) -> MonitoringRecord:
        probabilities = None
        if prediction.num_classes <= self._brier_max_classes:
            scores = prediction.scores
            probabilities = softmax(scores) if prediction.from_logits else np.array(scores, dtype=np.float64)
        embedding = prediction.embedding
        return MonitoringRecord(
            model=prediction.model,
            request_id=prediction.request_id,
            version=version,
            time_s=prediction.timestamp,
            predicted=prediction.predicted,
            confidence=prediction.confidence,
            margin=prediction.margin,
            num_classes=prediction.num_classes,
            cohort=prediction.cohort,
            probabilities=probabilities,
            embedding=None if embedding is None else _float32(embedding),
        )

    def take_local(self, model: str, request_id: str) -> MonitoringRecord | None:
        """A prediction record still waiting here (its label came before it reached Redis)."""
        for item in self._pending:
            if item.feed == RECORDS and item.model == model and item.record.request_id == request_id:
                self._pending.remove(item)
                return item.record
        return None

    # --- background --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            written = await self.flush()
            if not written:
                await asyncio.sleep(0.01 if self.redis_up else self._retry_s)

    async def settled(self) -> None:
        """Wait until no batch is half-way to Redis: then every record is either here or in Redis."""
        async with self._writing:
            pass

    async def flush(self) -> int:
        """Write up to one batch; returns how many records were written."""
        if not self._pending:
            return 0
        async with self._writing:
            return await self._flush()

    async def _flush(self) -> int:
        batch = [self._pending.popleft() for _ in range(min(self._batch, len(self._pending)))]
        try:
            results = await self._write(batch)
        except REDIS_DOWN as error:
            self._pending.extendleft(reversed(batch))  # they wait, oldest first, within the bound
            if self.redis_up:
                log.warning("monitoring records wait in memory: redis unavailable (%s)", type(error).__name__)
            self.redis_up = False
            return 0
        if not self.redis_up:
            log.info("redis is back: writing the monitoring records that waited")
        self.redis_up = True
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self.dropped.labels(item.model, item.feed, "redis_error").inc()
            else:
                self.written.labels(item.model, item.feed).inc()
        return len(batch)

    async def _write(self, batch: list[_Pending]) -> list[object]:
        pipe = self._redis.pipeline(transaction=False)
        records = [item for item in batch if item.feed == RECORDS]
        for item in batch:
            if item.feed == RECORDS:
                continue
            stream = keys.prediction_feed(item.model) if item.feed == PREDICTIONS else keys.labelled_feed(item.model)
            pipe.xadd(stream, item.record.to_fields(), maxlen=self._stream_maxlen, approximate=True)  # type: ignore[arg-type]
        if time.monotonic() - self._announced_at > 10.0:  # Redis may have restarted empty: say it again
            self._announced, self._announced_at = set(), time.monotonic()
        new_models = {item.model for item in batch} - self._announced
        if new_models:
            pipe.sadd(keys.MONITORED_MODELS, *new_models)
        results: list[object] = list(await pipe.execute(raise_on_error=False)) if len(pipe) else []
        if new_models and not isinstance(results[-1], Exception):
            self._announced |= new_models
        streamed = iter(results)
        outcome: dict[int, object] = {id(item): next(streamed) for item in batch if item.feed != RECORDS}
        if records:
            try:
                await self._set_all(
                    keys=[keys.prediction(item.model, item.record.request_id) for item in records],
                    args=[self._ttl_s, *(item.record.to_blob() for item in records)],
                )
            except REDIS_DOWN:
                raise
            except REDIS_FAILED as error:
                outcome.update({id(item): error for item in records})
            else:
                outcome.update({id(item): True for item in records})
        for result in outcome.values():
            if isinstance(result, REDIS_DOWN):
                raise result
        return [outcome[id(item)] for item in batch]


_F32_MAX = float(np.finfo(np.float32).max)


def _float32(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """float32 for the wire; values beyond its range (valid float64 events can hold them) are clipped."""
    if values.size and float(np.abs(values).max()) > _F32_MAX:
        values = np.clip(values, -_F32_MAX, _F32_MAX)
    return values.astype(np.float32)
