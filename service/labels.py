"""Delayed labels: each joined to its prediction record, this replica's buffer first, then Redis.

A record is taken from Redis with its remaining time to live, atomically (so a label counts once, on whichever
replica it arrives); a label refused for its class (out of range for the prediction) puts the record back, so
the corrected label can still join it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from common import keys
from common.errors import InvalidInput, RedisUnavailable
from common.names import MODEL_PATTERN
from common.redis import REDIS_FAILED, execute, queue_script
from monitors.feed import FeedFormatError, MonitoringRecord
from service.body import NOT_UNICODE, not_unicode_at, printable
from service.errors import first_problem
from service.feed_writer import LABELLED, FeedWriter

log = logging.getLogger(__name__)
_TAKE = """
local blob = redis.call('GET', KEYS[1])
if not blob then return false end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {blob, ttl}
"""
"""``GETDEL`` that also says how long the record had left (milliseconds), to put it back for a refused label."""
_Label = tuple[int, str, str, int]
"""A valid label: its position in the request, model, request id and class."""

UNKNOWN_MODEL = "__unknown__"
"""The ``model`` label of labels for a model this replica has never seen and Redis has no record of."""


class LabelIn(BaseModel):
    """One delayed label of ``POST /v1/labels``."""

    model: str = Field(pattern=MODEL_PATTERN)
    request_id: str = Field(min_length=1, max_length=128)
    label: int = Field(ge=0, strict=True)


@dataclass(frozen=True, slots=True)
class LabelVerdict:
    index: int
    request_id: str | None
    """As sent (``None`` when the item had none, or not a string)."""
    outcome: str
    """``matched``, ``unmatched`` (never seen, expired or labelled already) or ``rejected``."""
    error: str | None = None
    model: str | None = None
    """The model the label named (a string), when it named one."""


@dataclass(slots=True)
class LabelsResult:
    matched: int = 0
    unmatched: list[LabelVerdict] = field(default_factory=list)
    rejected: list[LabelVerdict] = field(default_factory=list)


class DelayedLabels:
    """``POST /v1/labels``: joins each valid label to its prediction record and offers the labelled record to the
    monitor's feed; counts every label in ``vai_labels_total{model, matched}``."""

    def __init__(self, redis: Redis, writer: FeedWriter, *, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self.writer = writer
        self.labels: Counter = writer.labels

    async def apply(self, items: list[Any], *, known: set[str]) -> LabelsResult:
        """Join delayed labels to their predictions: this replica's buffer first, then Redis. Each item is
        checked on its own: one that is not a :class:`LabelIn` is rejected by name, and the others go on;
        ``InvalidInput`` when none is valid. On ``RedisUnavailable`` nothing was joined or counted, so the
        caller can send the same labels again."""
        result = LabelsResult()
        labels = self._valid_labels(items, known=known, result=result)
        models = {model for _, model, _, _ in labels}
        for model in models & known:  # a model this replica serves (bounded by VAI_MAX_MODELS) keeps records
            self.writer.mark_labelled(model)
        await self._announce_labelled(models - known)
        try:  # held: a record on its way to Redis would be found in neither place, nor one that leaves meanwhile
            async with self.writer.held(self._timeout_s):
                local = [(item, self.writer.take_local(item[1], item[2])) for item in labels]
                remote = [item for item, record in local if record is None]
                try:
                    taken = await self._take_remote(remote)
                except BaseException:
                    self.writer.give_back()  # nothing joined or counted: the caller may send them again
                    raise
                for (_, model, request_id, label), record in local:
                    if record is not None and label >= record.num_classes:  # refused below: the record waits on
                        self.writer.give_back_one(model, request_id)
                self.writer.keep_taken()
        except TimeoutError:
            raise RedisUnavailable("redis: labels not joined (monitoring records still on their way)") from None
        for (index, _, _, label), record in local:
            if record is not None:
                self._join(result, index, record, label)
        refused: list[tuple[str, bytes, int]] = []
        for (index, model, request_id, label), found in zip(remote, taken, strict=True):
            if found is None:
                self._unmatched(result, (index, model, request_id, label), known)
                continue
            body, ttl_ms = found
            try:
                record = MonitoringRecord.from_blob(model, body)
            except FeedFormatError as error:
                result.rejected.append(
                    LabelVerdict(index, request_id, "rejected", f"prediction record: {error}", model)
                )
                continue
            if not self._join(result, index, record, label):
                refused.append((keys.prediction(model, request_id), body, ttl_ms))
        await self._put_back(refused)
        result.unmatched.sort(key=lambda verdict: verdict.index)
        result.rejected.sort(key=lambda verdict: verdict.index)
        self._count_rejected(result.rejected, known)
        return result

    async def _announce_labelled(self, models: set[str]) -> None:
        """Of ``models``, none served here, those whose events other replicas publish (``keys.MONITORED_MODELS``)
        get labels: those replicas keep their records from their next policy refresh (``VAI_LABEL_RECORDS``
        auto). Nothing is kept here: unknown names create no state."""
        if not models:
            return
        ordered = sorted(models)
        try:
            present = await self._redis.smismember(keys.MONITORED_MODELS, ordered)
            fleet = [model for model, member in zip(ordered, present, strict=True) if member]
            if fleet:
                await self._redis.sadd(keys.LABELLED_MODELS, *fleet)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: labels not joined") from None

    def _unmatched(self, result: LabelsResult, item: _Label, known: set[str]) -> None:
        index, model, request_id, _ = item
        result.unmatched.append(LabelVerdict(index, request_id, "unmatched"))
        self.labels.labels(model if model in known else UNKNOWN_MODEL, "false").inc()

    async def _take_remote(self, labels: list[_Label]) -> list[tuple[bytes, int] | None]:
        """The prediction records of ``labels`` in Redis with their remaining time to live (ms), deleted as they
        are read (a label counts once, on whichever replica it arrives)."""
        if not labels:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for _, model, request_id, _ in labels:
            queue_script(pipe, _TAKE, [keys.prediction(model, request_id)], [])
        try:
            found = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: labels not joined") from None
        return [None if item is None else (item[0], int(item[1])) for item in found]

    async def _put_back(self, records: list[tuple[str, bytes, int]]) -> None:
        """Records whose label was refused (no class of the prediction), back with the time they had left, unless
        a record was written there meanwhile; a corrected label can still join them. Best effort: one Redis could
        not take back is lost, as it would have been before it could be refused."""
        if not records:
            return
        pipe = self._redis.pipeline(transaction=False)
        for key, body, ttl_ms in records:
            pipe.set(key, body, px=max(ttl_ms, 1), nx=True)
        try:
            await execute(pipe)
        except REDIS_FAILED as error:
            log.warning("%d prediction records of refused labels not put back: %s", len(records), error)

    def _count_rejected(self, rejected: list[LabelVerdict], known: set[str]) -> None:
        for verdict in rejected:
            model = verdict.model if verdict.model is not None and verdict.model in known else UNKNOWN_MODEL
            self.labels.labels(model, "rejected").inc()

    def _valid_labels(self, items: list[Any], *, known: set[str], result: LabelsResult) -> list[_Label]:
        """The items that are labels, with their positions; the others go to ``result.rejected`` by name (their
        count waits for the end of the request: a 503 on the way must not count them twice when retried)."""
        labels: list[_Label] = []
        for index, item in enumerate(items):
            fields = item if isinstance(item, dict) else {}
            request_id = fields.get("request_id")
            try:
                where = not_unicode_at(item)  # the body was read leniently: its text is checked here
                if where is not None:
                    path = ".".join(["labels", str(index), *(str(part) for part in where)])
                    raise ValueError(f"{path}: {NOT_UNICODE}")
                valid = LabelIn.model_validate(item)
            except ValidationError as error:
                _, message = first_problem(error, "labels", str(index))
            except ValueError as error:
                message = str(error)
            except RecursionError:
                message = f"labels.{index}: nested too deeply"
            else:
                labels.append((index, valid.model, valid.request_id, valid.label))
                continue
            named = printable(request_id) if isinstance(request_id, str) else None
            model = fields.get("model")  # echoed too: escaped like the id (a lone surrogate is no UTF-8)
            result.rejected.append(
                LabelVerdict(index, named, "rejected", message, printable(model) if isinstance(model, str) else None)
            )
        if not labels:
            self._count_rejected(result.rejected, known)
            first_error = result.rejected[0].error or "labels: no valid label"
            raise InvalidInput(f"no valid label in the request; first: {first_error}", field=first_error.split(":")[0])
        return labels

    def _join(self, result: LabelsResult, index: int, record: MonitoringRecord, label: int) -> bool:
        """Join ``label`` to ``record``; ``False`` when it is no class of the prediction (rejected by name)."""
        if label >= record.num_classes:
            message = f"labels.{index}.label: class {label} out of range for {record.num_classes} classes"
            result.rejected.append(LabelVerdict(index, record.request_id, "rejected", message, record.model))
            return False
        self.writer.mark_labelled(record.model)
        self.writer.offer(LABELLED, record.labelled(label))
        self.labels.labels(record.model, "true").inc()
        result.matched += 1
        return True
