"""Delayed labels: each joined to its prediction record, this replica's buffer first, then Redis.

A record in Redis is read, checked against its label, and then published to the labelled feed and replaced in one
script, only if it is still the record read (so a label counts once, on whichever replica it arrives). What replaces
it is a marker of the class it joined (``joined:<class>``, kept :data:`JOINED_TTL_S`): the same label sent again — a
client's retry after an answer it lost — is answered ``matched`` and counted ``duplicate``, and another class for
it is refused by name. A record joined from this replica's buffer (its label came before it was written, within
~50 ms of its event) leaves no marker: its labelled record is still in memory, and a marker must never claim more than
Redis holds. The script's first write is the ``XADD``: a Redis out of memory (``noeviction``) refuses it before
anything is replaced, and the route answers 503, the record still waiting for the same label sent again. A label
refused for its class (out of range for the prediction) leaves the record where it is, for the corrected label. A
record still in this replica's buffer never reached Redis: its labelled record goes through the buffer, which keeps
it until Redis takes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, ParamSpec, TypeVar

from prometheus_client import Counter
from pydantic import ConfigDict, ValidationError
from redis.asyncio import Redis

from common import keys
from common.errors import InvalidInput, RedisUnavailable
from common.redis import REDIS_FAILED, execute, queue_script
from monitors.feed import ENTRY_FIELD, FeedFormatError, MonitoringRecord
from service.events.errors import first_problem
from service.feed.label_body import LabelIn
from service.feed.writer import LABELLED, FeedWriter
from service.http.body import NOT_UNICODE, not_unicode_at, printable
from service.metrics import FeedMetrics

log = logging.getLogger(__name__)
_PUBLISH = """
local maxlen, field, ttl, n = ARGV[1], ARGV[2], ARGV[3], #KEYS / 2
local trimmed = {}
for i = 1, n do
  if redis.call('GET', KEYS[n + i]) == ARGV[3 + n + i] then
    local before = redis.call('XLEN', KEYS[i])
    redis.call('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', field, ARGV[3 + i])
    trimmed[i] = before + 1 - redis.call('XLEN', KEYS[i])
    redis.call('SET', KEYS[n + i], ARGV[3 + 2 * n + i], 'EX', ttl)
  else
    trimmed[i] = -1
  end
end
return trimmed
"""
"""Per label: the labelled feed and the prediction record's key (KEYS), the labelled record, the record as read and
its joined marker (ARGV, after ``MAXLEN``, the entry's field and the marker's TTL). Publishes each record still as
read and replaces it with its marker; returns how many older entries ``MAXLEN`` trimmed, or -1 for a record gone
or replaced meanwhile (another replica's label took it). The
``XADD`` is the first write: under ``maxmemory`` with ``noeviction`` Redis refuses it (the script has written
nothing yet), so nothing is deleted; once a script has written, Redis lets the rest through."""


class _Label(NamedTuple):
    """A valid label."""

    position: int
    """Its index in the request."""
    model: str
    request_id: str
    label: int
    """The class."""


JOINED_TTL_S = 600
"""How long a joined prediction record's key keeps the marker of the class it was labelled with: a label sent again
within it (a retry) is recognised as the same label."""
_JOINED = b"joined:"


class _Joined(NamedTuple):
    """A prediction record whose label joined already (its key holds the marker): the class it was labelled with."""

    label: int


def _marker(label: int) -> bytes:
    return _JOINED + str(label).encode()


_Found = MonitoringRecord | FeedFormatError | _Joined | None
"""What a label found in Redis: its record, one that could not be read, the marker of one joined already, or none."""

_ANSWER = ConfigDict(json_schema_serialization_defaults_required=True)
"""Of a result answered as JSON: every field is in the answer, those with a default too (OpenAPI says required)."""

UNKNOWN_MODEL = "__unknown__"
"""The ``model`` label of labels for a model this replica has never seen and Redis has no record of."""


@dataclass(frozen=True, slots=True)
class LabelVerdict:
    """A label that did not join: found no prediction record, or refused (the error names the field)."""

    __pydantic_config__ = _ANSWER

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
    """The answer to ``POST /v1/labels``: how many labels joined their prediction, and the others, by index."""

    __pydantic_config__ = _ANSWER

    matched: int = 0
    duplicates: int = 0
    """Of ``matched``: labels joined already by an earlier request with the same class (a retry), not counted again
    in the calibration window (``vai_labels_total{matched="duplicate"}``)."""
    unmatched: list[LabelVerdict] = field(default_factory=list)
    rejected: list[LabelVerdict] = field(default_factory=list)


class DelayedLabels:
    """``POST /v1/labels``: joins each valid label to its prediction record and publishes the labelled record to the
    monitor's feed (a record from Redis in the call that takes it; one from this replica's buffer through it);
    counts every label in ``vai_labels_total{model, matched}`` (``true``, ``duplicate``, ``false``, ``rejected``)."""

    def __init__(
        self, redis: Redis, writer: FeedWriter, metrics: FeedMetrics, *, timeout_s: float, retry_s: float = 0.0
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        """How long labels that found no record wait before they look once more (``VAI_LABEL_JOIN_RETRY_S``)."""
        self.writer = writer
        self.labels: Counter = metrics.labels

    async def apply(self, items: list[Any], *, known: set[str]) -> LabelsResult:
        """Join delayed labels to their predictions: this replica's buffer first, then Redis. Each item is
        checked on its own: one that is not a :class:`LabelIn` is rejected by name, and the others go on;
        ``InvalidInput`` when none is valid. On ``RedisUnavailable`` nothing was joined or counted, so the
        caller can send the same labels again."""
        result = LabelsResult()
        labels = await _off_loop_if_many(len(items), self._valid_labels, items, known, result)
        models = {model for _, model, _, _ in labels}
        for model in models & known:  # a model this replica serves (bounded by VAI_MAX_MODELS) keeps records
            self.writer.mark_labelled(model)
        await self._announce_labelled(models - known)
        try:  # held: a record on its way to Redis would be found in neither place, nor one that leaves meanwhile
            async with self.writer.held(self._timeout_s):
                local = [(item, self.writer.take_local(item.model, item.request_id)) for item in labels]
                try:
                    remote = await self._join_remote([item for item, record in local if record is None])
                except BaseException:
                    self.writer.give_back()  # nothing joined or counted: the caller may send them again
                    raise
                for (_, model, request_id, label), record in local:
                    if record is not None and label >= record.num_classes:  # refused below: the record waits on
                        self.writer.give_back_one(model, request_id)
                self.writer.keep_taken()
        except TimeoutError:
            raise RedisUnavailable("redis: labels not joined (monitoring records still on their way)") from None
        # Counted at once, before the look-again's wait: a cancel from here on must not lose a taken record, nor
        # leave one published uncounted.
        for (index, _, _, label), record in local:
            if record is not None:
                self._join(result, index, record, label, offer=True)
        published = [
            (item, found)
            for item, found in remote
            if isinstance(found, MonitoringRecord) and item.label < found.num_classes
        ]
        for item, record in published:
            self._join(result, item.position, record, item.label, offer=False)
        done = {item.position for item, _ in published}
        for item, found in await self._look_again(
            [(item, found) for item, found in remote if item.position not in done]
        ):
            self._settle(result, item, found, known)
        result.unmatched.sort(key=lambda verdict: verdict.index)
        result.rejected.sort(key=lambda verdict: verdict.index)
        self._count_rejected(result.rejected, known)
        return result

    def _settle(self, result: LabelsResult, item: _Label, found: _Found, known: set[str]) -> None:
        """The verdict of a label by what it found in Redis, after its look again (a record found is joined)."""
        index, model, request_id, label = item
        if found is None:
            self._unmatched(result, item, known)
        elif isinstance(found, _Joined):
            self._joined_already(result, item, found.label)
        elif isinstance(found, FeedFormatError):
            message = f"prediction record: {found}"
            result.rejected.append(LabelVerdict(index, request_id, "rejected", message, model))
        else:
            self._join(result, index, found, label, offer=False)

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

    async def _look_again(self, remote: list[tuple[_Label, _Found]]) -> list[tuple[_Label, _Found]]:
        """``remote``, where each label that found no record has looked once more after ``retry_s``: a label
        sent to this replica just after its event reached another one finds the record once that replica's
        writer has flushed it (within ~50 ms when Redis keeps up). A 503 on the second look loses nothing: the
        labels joined on the first are counted by the caller, the others are answered ``unmatched``."""
        missing = [item for item, found in remote if _looks_again(found)]
        if not missing or self._retry_s <= 0:
            return remote
        await asyncio.sleep(self._retry_s)
        try:
            again = {item.position: found for item, found in await self._join_remote(missing)}
        except RedisUnavailable:
            return remote
        return [(item, again.get(item.position) if _looks_again(found) else found) for item, found in remote]

    def _joined_already(self, result: LabelsResult, item: _Label, joined: int) -> None:
        """``item`` found the marker of a record joined to class ``joined``: the same label again is matched (and
        counted ``duplicate``), another class is refused by name."""
        index, model, request_id, label = item
        if label != joined:
            message = f"labels.{index}.label: the prediction was labelled {joined} already"
            result.rejected.append(LabelVerdict(index, request_id, "rejected", message, model))
            return
        result.matched += 1
        result.duplicates += 1
        self.labels.labels(model, "duplicate").inc()

    def _unmatched(self, result: LabelsResult, item: _Label, known: set[str]) -> None:
        index, model, request_id, _ = item
        result.unmatched.append(LabelVerdict(index, request_id, "unmatched"))
        self.labels.labels(model if model in known else UNKNOWN_MODEL, "false").inc()

    async def _join_remote(self, labels: list[_Label]) -> list[tuple[_Label, _Found]]:
        """What each of ``labels`` found in Redis. The record of each label that is one of its classes is on the
        labelled feed (and replaced by its marker) when this returns, all in one script that Redis refuses as a
        whole, before it writes anything, when it is out of memory (``RedisUnavailable``)."""
        if not labels:
            return []
        try:
            bodies: list[bytes | None] = await self._redis.mget(  # type: ignore[assignment]  # no decode_responses
                [keys.prediction(model, request_id) for _, model, request_id, _ in labels]
            )
        except REDIS_FAILED:
            raise RedisUnavailable("redis: labels not joined") from None
        found, joins = await _off_loop_if_many(len(labels), _read_records, labels, bodies)
        trimmed = await self._publish(joins)
        for join, count in zip(joins, trimmed, strict=True):
            if count < 0:  # another replica's label took it between the read and the script
                found[join.at] = (found[join.at][0], None)
                continue
            self._metrics.written.labels(join.model, LABELLED).inc()
            if count:
                self._metrics.trimmed.labels(join.model, LABELLED).inc(count)
        return found

    async def _publish(self, joins: list[_Join]) -> list[int]:
        """Run :data:`_PUBLISH` for ``joins``; per join, how many entries ``MAXLEN`` trimmed, or -1 when the record
        was gone."""
        if not joins:
            return []
        targets = [keys.labelled_feed(join.model) for join in joins]
        targets += [keys.prediction(join.model, join.request_id) for join in joins]
        args: list[bytes | str | int] = [self.writer.stream_maxlen, ENTRY_FIELD, JOINED_TTL_S]
        args += [join.labelled for join in joins]
        args += [join.as_read for join in joins]
        args += [join.marker for join in joins]
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, _PUBLISH, targets, args)
        try:
            (trimmed,) = await execute(pipe)
        except REDIS_FAILED as error:  # out of memory included: nothing was written, the labels may come again
            log.debug("labels not joined: %s", error)
            raise RedisUnavailable("redis: labels not joined") from None
        return [int(count) for count in trimmed]

    def _count_rejected(self, rejected: list[LabelVerdict], known: set[str]) -> None:
        for verdict in rejected:
            model = verdict.model if verdict.model is not None and verdict.model in known else UNKNOWN_MODEL
            self.labels.labels(model, "rejected").inc()

    def _valid_labels(self, items: list[Any], known: set[str], result: LabelsResult) -> list[_Label]:
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
                labels.append(_Label(index, valid.model, valid.request_id, valid.label))
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

    def _join(self, result: LabelsResult, index: int, record: MonitoringRecord, label: int, *, offer: bool) -> None:
        """Join ``label`` to ``record`` (its labelled record offered to the buffer when ``offer``: published
        already otherwise); rejected by name when it is no class of the prediction."""
        if label >= record.num_classes:
            message = f"labels.{index}.label: class {label} out of range for {record.num_classes} classes"
            result.rejected.append(LabelVerdict(index, record.request_id, "rejected", message, record.model))
            return
        self.writer.mark_labelled(record.model)
        if offer:
            self.writer.offer(LABELLED, record.labelled(label))
        self.labels.labels(record.model, "true").inc()
        result.matched += 1


class _Join(NamedTuple):
    """A record a label joins, as the publishing script takes it."""

    at: int
    """The label's index among those looked up."""
    model: str
    request_id: str
    labelled: bytes
    """The labelled record to publish."""
    as_read: bytes
    """The prediction record as read (the script publishes only if it is still that)."""
    marker: bytes
    """What replaces it."""


def _read_records(labels: list[_Label], bodies: list[bytes | None]) -> tuple[list[tuple[_Label, _Found]], list[_Join]]:
    """What each label found, and the joins of those that found their record and name one of its classes."""
    found = [(item, _record(item.model, body)) for item, body in zip(labels, bodies, strict=True)]
    joins = [
        _Join(at, item.model, item.request_id, record.labelled(item.label).blob(), body, _marker(item.label))
        for at, ((item, record), body) in enumerate(zip(found, bodies, strict=True))
        if isinstance(record, MonitoringRecord) and body is not None and item.label < record.num_classes
    ]
    return found, joins


_P = ParamSpec("_P")
_R = TypeVar("_R")
OFF_LOOP_FROM = 200
"""Labels from which a request's checks and records are handled in a worker thread: ~20 µs each of CPU (10,000
labels ~0.2 s) would otherwise stall the event loop, and the events it takes in meanwhile."""


async def _off_loop_if_many(count: int, function: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """``function(*args)``: in a worker thread when ``count`` labels are at least :data:`OFF_LOOP_FROM`."""
    if count < OFF_LOOP_FROM:
        return function(*args, **kwargs)
    return await asyncio.to_thread(function, *args, **kwargs)


def _looks_again(found: _Found) -> bool:
    """Whether a label that found this looks once more: no record yet, or the marker of an earlier prediction of the
    same request id (ids are unique per model, but one reused within the marker's life must not hide its record)."""
    return found is None or isinstance(found, _Joined)


def _record(model: str, body: bytes | None) -> _Found:
    """The prediction record ``body`` holds (``None`` for none), the marker of one joined already, or why it cannot
    be read."""
    if body is None:
        return None
    if body.startswith(_JOINED) and body[len(_JOINED) :].isdigit():
        return _Joined(int(body[len(_JOINED) :]))
    try:
        return MonitoringRecord.from_blob(model, body)
    except FeedFormatError as error:
        return error
