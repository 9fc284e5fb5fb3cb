"""The sidecar's side of monitoring: delayed labels, drift references, and the fleet monitor's figures.

Nothing statistical runs here. The sidecar publishes records (``service.feed_writer``), joins
delayed labels to the prediction records kept in Redis (``GETDEL``, so a label counts once, on
whichever replica it arrives), stores uploaded references for the monitor to calibrate on, and
answers with the figures the owning monitor published for the whole fleet.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from common import keys
from common.errors import InvalidInput, RedisUnavailable, Unavailable
from common.names import MODEL_PATTERN
from common.redis import REDIS_FAILED, execute
from monitors.drift.config import DriftConfig
from monitors.drift.reference import Reference
from monitors.feed import FeedFormatError, MonitoringRecord
from monitors.fleet.references import ReferenceStore
from monitors.fleet.results import DriftStatus, QualityReport
from monitors.fleet.views import WANTED_TTL_S, DriftHistory, HistoryPoint, ProjectionStatus
from service.body import NOT_UNICODE, not_unicode_at, printable
from service.errors import first_problem
from service.feed_writer import LABELLED, FeedWriter

log = logging.getLogger(__name__)
_Result = TypeVar("_Result", bound=BaseModel)
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


@dataclass(frozen=True, slots=True)
class PublishedView:
    """A view as the owning monitor published it (``body`` is its JSON), or why there is none."""

    body: bytes | None
    monitored: bool
    """Whether the model is known to the monitors (some replica published its records or a reference)."""
    status: ProjectionStatus | None = None
    """The owner's projection methods and errors (projections only)."""


@dataclass(slots=True)
class LabelsResult:
    matched: int = 0
    unmatched: list[LabelVerdict] = field(default_factory=list)
    rejected: list[LabelVerdict] = field(default_factory=list)


class Monitoring:
    def __init__(self, redis: Redis, writer: FeedWriter, *, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self.writer = writer
        self.references = ReferenceStore(redis)
        self.labels = writer.labels
        self._reference_locks: dict[str, asyncio.Lock] = {}
        self._unreadable: set[tuple[str, str]] = set()
        """(model, what) of published results found unreadable, warned about once until one reads again."""

    async def apply_labels(self, items: list[Any], *, known: set[str]) -> LabelsResult:
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
                    bodies = await self._take_remote(remote)
                except BaseException:
                    self.writer.give_back()  # nothing joined or counted: the caller may send them again
                    raise
                self.writer.keep_taken()
        except TimeoutError:
            raise RedisUnavailable("redis: labels not joined (monitoring records still on their way)") from None
        for (index, _, _, label), record in local:
            if record is not None:
                self._join(result, index, record, label)
        for (index, model, request_id, label), body in zip(remote, bodies, strict=True):
            if body is None:
                self._unmatched(result, (index, model, request_id, label), known)
                continue
            try:
                record = MonitoringRecord.from_blob(model, body)
            except FeedFormatError as error:
                result.rejected.append(
                    LabelVerdict(index, request_id, "rejected", f"prediction record: {error}", model)
                )
                continue
            self._join(result, index, record, label)
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

    def _unmatched(self, result: LabelsResult, item: tuple[int, str, str, int], known: set[str]) -> None:
        index, model, request_id, _ = item
        result.unmatched.append(LabelVerdict(index, request_id, "unmatched"))
        self.labels.labels(model if model in known else UNKNOWN_MODEL, "false").inc()

    async def _take_remote(self, labels: list[tuple[int, str, str, int]]) -> list[bytes | None]:
        """The prediction records of ``labels`` in Redis, deleted as they are read (``GETDEL``: a label
        counts once, on whichever replica it arrives)."""
        if not labels:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for _, model, request_id, _ in labels:
            pipe.getdel(keys.prediction(model, request_id))
        try:
            return await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: labels not joined") from None

    def _count_rejected(self, rejected: list[LabelVerdict], known: set[str]) -> None:
        for verdict in rejected:
            model = verdict.model if verdict.model is not None and verdict.model in known else UNKNOWN_MODEL
            self.labels.labels(model, "rejected").inc()

    def _valid_labels(
        self, items: list[Any], *, known: set[str], result: LabelsResult
    ) -> list[tuple[int, str, str, int]]:
        """The items that are labels, with their positions; the others go to ``result.rejected`` by name (their
        count waits for the end of the request: a 503 on the way must not count them twice when retried)."""
        labels: list[tuple[int, str, str, int]] = []
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

    def _join(self, result: LabelsResult, index: int, record: MonitoringRecord, label: int) -> None:
        if label >= record.num_classes:
            message = f"labels.{index}.label: class {label} out of range for {record.num_classes} classes"
            result.rejected.append(LabelVerdict(index, record.request_id, "rejected", message, record.model))
            return
        self.writer.mark_labelled(record.model)
        self.writer.offer(LABELLED, record.labelled(label))
        self.labels.labels(record.model, "true").inc()
        result.matched += 1

    def reference_lock(self, model: str) -> asyncio.Lock:
        """Held while a reference of ``model`` is uploaded (one model, one upload at a time; models are bounded
        by ``VAI_MAX_MODELS`` before this is asked for)."""
        return self._reference_locks.setdefault(model, asyncio.Lock())

    async def set_reference(
        self, model: str, reference: Reference, *, margin: npt.NDArray[np.float64] | None = None
    ) -> str:
        try:
            return await self.references.put(model, reference, margin=margin)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: reference not stored") from None

    async def check_reference(self, reference: Reference) -> None:
        """Raises ``InvalidInput`` when ``reference`` has fewer distinct rows than the live monitors' drift settings
        need to calibrate (``DriftConfig.least_rows``). Settings no monitor has published, or that this release
        cannot read, check nothing here: the monitor then reports the failure on ``/drift``."""
        body = await self._get(keys.DRIFT_CONFIG, "drift settings")
        if body is None or reference.embeddings is None:
            return
        try:
            config = DriftConfig.model_validate_json(body)
        except ValidationError:
            return
        width = int(reference.embeddings.shape[1])
        least = config.least_rows(width)
        distinct = await asyncio.to_thread(_distinct_rows, reference)
        if distinct >= least:
            return
        raise InvalidInput(
            f"embeddings: {distinct} distinct rows, but the monitors' drift detectors need at least {least} "
            f"for {width}-d embeddings (VAI_DRIFT__WINDOW_SIZE={config.window_size}"
            + (f", VAI_DRIFT__PCA_SHARE={config.pca_share:g} of them fit PCA" if least > config.least_reference else "")
            + ")",
            field="embeddings",
        )

    async def drift_status(self, model: str) -> DriftStatus | None:
        body = await self._get(keys.drift_status(model), "drift status")
        return None if body is None else self._published(DriftStatus, body, model, "drift status")

    async def quality(self, model: str) -> QualityReport | None:
        body = await self._get(keys.quality_report(model), "calibration")
        return None if body is None else self._published(QualityReport, body, model, "calibration")

    async def monitored(self, model: str) -> bool:
        """Whether the monitors know ``model`` (some replica published its records or a reference)."""
        try:
            return bool(await self._redis.sismember(keys.MONITORED_MODELS, model))
        except REDIS_FAILED:
            raise RedisUnavailable("redis: models not read") from None

    async def projection(self, model: str, method: str) -> PublishedView:
        """The published projection; asking marks it wanted, so the owner keeps computing it for a while."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.projection(model, method))
        pipe.get(keys.projection_status(model))
        pipe.sismember(keys.MONITORED_MODELS, model)
        try:
            body, status, monitored = await execute(pipe)
            if monitored:  # only models the monitors know: a reader cannot create keys for any name
                await self._redis.set(keys.projection_wanted(model, method), b"1", ex=WANTED_TTL_S)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: projection not read") from None
        return PublishedView(body=body, monitored=bool(monitored), status=_projection_status(status))

    async def distributions(self, model: str) -> PublishedView:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.distributions(model))
        pipe.sismember(keys.MONITORED_MODELS, model)
        try:
            body, monitored = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: distributions not read") from None
        return PublishedView(body=body, monitored=bool(monitored))

    async def drift_history(self, model: str) -> tuple[DriftHistory, bool]:
        """The model's drift-score history, oldest first, and whether the model is known to the monitors."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.xrange(keys.drift_history(model))
        pipe.sismember(keys.MONITORED_MODELS, model)
        try:
            entries, monitored = await execute(pipe)
        except REDIS_FAILED:
            raise RedisUnavailable("redis: drift history not read") from None
        history = await asyncio.to_thread(_history, model, entries)
        return history, bool(monitored)

    def _published(self, kind: type[_Result], body: bytes, model: str, what: str) -> _Result:
        """A result the owning monitor published; one this sidecar cannot read (a monitor of another release, a
        value out of its contract) is a 503 while the owner writes it again, not a 500. Logged once until it reads."""
        try:
            found = kind.model_validate_json(body)
        except ValidationError as error:
            if (model, what) not in self._unreadable:
                self._unreadable.add((model, what))
                log.warning("%s of model %s unreadable: %s", what, model, error.errors(include_url=False)[:1])
            raise Unavailable(f"{what} of model {model!r} cannot be read now; try again", retry_after_s=5) from None
        self._unreadable.discard((model, what))
        return found

    async def _get(self, key: str, what: str) -> bytes | None:
        try:
            value: bytes | None = await self._redis.get(key)  # type: ignore[assignment]
        except REDIS_FAILED:
            raise RedisUnavailable(f"redis: {what} not read") from None
        return value


def _distinct_rows(reference: Reference) -> int:
    """How many distinct embedding rows ``reference`` holds (one or more: a ``Reference`` of them could not be
    built below two rows)."""
    return 0 if reference.embeddings is None else len(np.unique(reference.embeddings, axis=0))


def _history(model: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> DriftHistory:
    points: list[HistoryPoint] = []
    for _, fields in entries:
        try:
            points += [HistoryPoint.model_validate(item) for item in orjson.loads(fields.get(b"p", b"[]"))]
        except (ValueError, TypeError) as error:  # a foreign or newer entry: skip it, serve the rest
            log.warning("skipping an unreadable drift-history entry of %s: %s", model, error)
    return DriftHistory(model=model, points=tuple(points))


def _projection_status(body: bytes | None) -> ProjectionStatus | None:
    """The owner's projection status, or ``None`` when absent or unreadable (an owner of another version)."""
    if body is None:
        return None
    try:
        return ProjectionStatus.model_validate_json(body)
    except ValidationError as error:
        log.warning("projection status skipped, not readable: %s", str(error).splitlines()[0])
        return None
