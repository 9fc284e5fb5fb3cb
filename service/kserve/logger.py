"""KServe's inference logger as a source of events: join each request to its response, then ingest.

The logger posts every request and every response of an InferenceService as CloudEvents
(``service.kserve.cloudevents`` and ``service.kserve.payloads`` read them). Behind a Kubernetes Service the
two halves may reach different replicas, so they meet in Redis under
``keys.kserve_pending(model, namespace, ce_id)`` (a ce-id is the caller's to choose, so it is unique only
within one InferenceService):

- a request stores its model inputs and the ``ce-metadata`` values its mapping reads there (``SET EX``, unless
  something is there already) and its id in ``keys.KSERVE_PENDING_INDEX``, unless ``VAI_KSERVE_MAX_PENDING`` of
  its model's requests wait already (``pending_full``: anyone who reaches ``/v1/cloudevents`` can send requests
  that never get a response);
- a response takes them (``GETDEL``) in one transaction that leaves a marker in their place, then
  ingests one event per instance (request ids ``{ce-id}:{i}``) through the ordinary data plane;
  with no request waiting it is ingested at once without inputs (monitored, not explainable);
- a request that finds the marker came after its response: it is dropped and counted;
- a request whose response never comes is counted by :meth:`KServeLogger.sweep` once its TTL is past. The index
  is scored and swept on Redis's clock (``TIME`` in a script), never a replica's: with replicas' clocks apart, one
  running ahead would count a request as expired while its key lives and its response can still join it;
- a response whose join failed is ingested at once without inputs rather than answered 503: KServe's logger
  never retries, so a 503 would lose the prediction, and after a timeout the join may have run after all (a
  retry would find its own marker and be dropped as a duplicate). A request it did not consume expires as an
  orphan. A request that cannot be stored is answered 503 (nothing of it could be monitored alone).

Only the mapped component's events (``kserve.component``, default ``predictor``) are read: a transformer's
request and response are the same inference seen from outside, and counted as ``other_component``.

This module owns the stored record's format (``{"v": 1, "inputs", "input_unusable", "metadata", "overlong"}``:
``overlong`` lists the mapped keys whose value was too long to keep, absent in records of earlier releases, which
ignore it) and its keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from pydantic import ConfigDict
from redis.asyncio import Redis

from common import keys
from common.codec import EncodedArray
from common.errors import (
    Forbidden,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RedisUnavailable,
    RequestTimeout,
    Unauthorized,
    VaiError,
)
from common.redis import REDIS_FAILED, execute, queue_script
from service.ingest.handler import IngestHandler, IngestResult, Rejection
from service.kserve.cloudevents import SHOWN, CloudEvent, read_attributes, read_event, shown
from service.kserve.instances import events_body, ingested
from service.kserve.payloads import Array, request_inputs, response_prediction
from service.metrics import KServeMetrics
from service.settings import KServeMapping, SidecarSettings

RECORD_VERSION = 1
MARKER = b"answered"
"""What a response leaves under the key: a request arriving later is dropped."""
GRACE_S = 2.0
"""Past its key's TTL, an orphan is counted only after this, so a response just in time is never counted twice."""
_STORE = """
local current = redis.call('GET', KEYS[1])
if current then return {0, current} end
local now = redis.call('TIME')
now = now[1] + now[2] / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return {2} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', now + ARGV[4], ARGV[3])
redis.call('ZADD', KEYS[3], now + ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2] + 1)
return {1}
"""
"""Store a request's record (``ARGV[1]``, for ``ARGV[2]`` seconds) at ``KEYS[1]`` unless something is there (its
own record already, or the marker of its response), and only then index its join member ``ARGV[3]`` in ``KEYS[2]``,
due ``ARGV[4]`` seconds from now by Redis's clock: at once, so a response arriving meanwhile always finds the entry to
remove, and never for a request whose response came first (the sweep would count it expired as well). ``KEYS[3]``
(:func:`keys.kserve_pending_of`) holds the model's pending members scored by when their keys expire: those past are
trimmed first, and with ``ARGV[5]`` (``VAI_KSERVE_MAX_PENDING``) left the request is not stored. Returns ``{1}``
when stored, ``{2}`` when the model has as many pending, else ``{0, what is there}``. A script that reads TIME and
then writes must be replicated by its effects: the default since Redis 5 (GETDEL needs 6.2 already), so no
``redis.replicate_commands()``, as in ``monitors.fleet.lease``."""
_SWEEP = """
local now = redis.call('TIME')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now[1] + now[2] / 1000000 + ARGV[2], 'LIMIT', 0, ARGV[1])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""
"""Take at most ``ARGV[1]`` members due by Redis's clock (``ARGV[2]`` seconds ahead of it) out of the index, at once:
each is returned to one sweeping replica only."""
_STORED = {1: "request_stored", 2: "pending_full"}
"""The outcome of a request by the store script's answer (0, something there already: by what is there)."""
UNMAPPED = "__unmapped__"
"""The ``model`` label of events refused before a model was known."""


REFUSED: dict[type[VaiError], str] = {
    Unauthorized: "unauthorized",
    Forbidden: "forbidden",
    PayloadTooLarge: "body_too_large",
    RequestTimeout: "body_timeout",
    Overloaded: "body_budget",
}
"""The outcome of a CloudEvent refused before it was read, by error (else ``invalid_body``)."""


class KServeLogger:
    """``handle(headers, body)`` for each CloudEvent; ``sweep()`` now and then to count orphaned requests."""

    def __init__(
        self,
        settings: SidecarSettings,
        *,
        redis: Redis,
        ingest: IngestHandler,
        registry: CollectorRegistry,
    ) -> None:
        self._redis = redis
        self._max_pending = settings.kserve_max_pending
        self._ingest = ingest
        self._ttl_s = settings.kserve_join_ttl_s
        self._max_batch = settings.max_batch
        self._mappings: dict[str, tuple[str, KServeMapping]] = {  # one section per service: SidecarSettings checks
            section.kserve.service or name: (name, section.kserve)
            for name, section in settings.models.items()
            if section.kserve is not None
        }
        self._metadata_keys = {name: _metadata_keys(mapping) for name, mapping in self._mappings.values()}
        """Per model, the ``ce-metadata`` keys its mapping reads: the only ones a CloudEvent keeps."""
        metrics = KServeMetrics(registry)
        self.events = metrics.events
        self.dropped = metrics.dropped

    def refused(self, headers: Mapping[str, str], error: VaiError) -> None:
        """Count a CloudEvent refused before :meth:`handle` read it: its token, or its body's size, encoding
        or time. Its model is the mapped service its ``ce-inferenceservicename`` header names, if any."""
        self.events.labels(
            self._model_of(headers.get("ce-inferenceservicename")), REFUSED.get(type(error), "invalid_body")
        ).inc()

    def disconnected(self, headers: Mapping[str, str]) -> None:
        """Count a CloudEvent whose sender went away before its body was all sent (nobody is left to answer)."""
        self.events.labels(self._model_of(headers.get("ce-inferenceservicename")), "disconnected").inc()

    def _model_of(self, service: str | None) -> str:
        """The model section mapping ``service``, else ``UNMAPPED``."""
        found = self._mappings.get(service or "")
        return UNMAPPED if found is None else found[0]

    @property
    def enabled(self) -> bool:
        """Some model section has a ``kserve`` mapping."""
        return bool(self._mappings)

    async def handle(self, headers: Mapping[str, str], body: bytes) -> KServeReply:
        """One CloudEvent; a small summary for the logger, or a ``VaiError`` naming what is wrong. Each ends in
        exactly one ``vai_kserve_events_total`` outcome."""
        model = UNMAPPED
        try:
            attributes = read_attributes(headers, body)
            model = self._model_of(attributes.service)  # a malformed CloudEvent still counts against its model
            event = read_event(attributes, self._metadata_keys.get(model, ()))
            model, mapping = self._mapping(event)
            if event.component != mapping.component:
                self.events.labels(model, "other_component").inc()
                return _reply("other_component", model, event.id)
            if event.is_request:
                return await self._request(model, mapping, event)
            return await self._response(model, mapping, event)
        except VaiError as error:
            self.events.labels(model, "redis_unavailable" if isinstance(error, RedisUnavailable) else "invalid").inc()
            raise
        except Exception:  # a bug, answered 500: still one outcome
            self.events.labels(model, "internal").inc()
            raise

    def _mapping(self, event: CloudEvent) -> tuple[str, KServeMapping]:
        if event.service is None:
            raise InvalidInput(
                "ce-inferenceservicename: missing; it picks the model section with the kserve mapping",
                field="ce-inferenceservicename",
            )
        found = self._mappings.get(event.service)
        if found is None:
            raise InvalidInput(
                f"ce-inferenceservicename: no model section maps {shown(event.service)}; add "
                f"[models.{event.service if len(event.service) <= SHOWN else 'NAME'}.kserve] with at least scores_are "
                "(or kserve.service naming it) to the config",
                field="ce-inferenceservicename",
            )
        return found

    async def _request(self, model: str, mapping: KServeMapping, event: CloudEvent) -> KServeReply:
        inputs = request_inputs(event, mapping)
        rows = None if inputs is None else inputs.rows
        if rows is not None and len(rows) > self._max_batch:  # its response would be refused: no orphan
            raise InvalidInput(
                f"inputs: at most {self._max_batch} instances per request (VAI_MAX_BATCH), got {len(rows)}",
                field="inputs",
            )
        record = orjson.dumps(
            {
                "v": RECORD_VERSION,
                "inputs": None if rows is None else [None if row is None else _encoded(row) for row in rows],
                "input_unusable": inputs is not None and rows is None,
                "metadata": event.metadata,
                "overlong": sorted(event.overlong),
            }
        )
        try:
            stored, current = await self._store(model, event, record)
        except REDIS_FAILED:
            if _keeps(event, rows):
                raise RedisUnavailable(
                    "redis is unavailable: KServe requests cannot wait for their responses"
                ) from None
            self.events.labels(model, "redis_unavailable").inc()  # 200: its response is monitored all the same
            return _reply("redis_unavailable", model, event.id)
        outcome = _STORED.get(stored) or ("request_dropped" if current == MARKER else "duplicate")
        self.events.labels(model, outcome).inc()
        return _reply(outcome, model, event.id)

    async def _store(self, model: str, event: CloudEvent, record: bytes) -> tuple[int, Any]:
        """Store a request's record unless one (or the marker of its response) is there, or
        ``VAI_KSERVE_MAX_PENDING`` of the model's wait already; what the script answered (1 stored, 2 too many
        pending, 0 something there) and what is there now."""
        key = keys.kserve_pending(model, event.namespace, event.id)
        member = keys.kserve_join_member(model, event.namespace, event.id)
        pipe = self._redis.pipeline(transaction=False)
        queue_script(
            pipe,
            _STORE,
            [key, keys.KSERVE_PENDING_INDEX, keys.kserve_pending_of(model)],
            [record, self._ttl_s, member, self._ttl_s + GRACE_S, self._max_pending],
        )
        ((stored, *current),) = await execute(pipe)
        return int(stored), current[0] if current else None

    async def _response(self, model: str, mapping: KServeMapping, event: CloudEvent) -> KServeReply:
        prediction = response_prediction(event, mapping)
        count = len(prediction.scores)
        if not 1 <= count <= self._max_batch:  # before the join: its request is left to expire, counted once
            where = prediction.field
            raise InvalidInput(
                f"{where}: {count} instances; a response holds 1 to {self._max_batch} (VAI_MAX_BATCH)", field=where
            )
        try:
            previous = await self._join(model, event)
        except REDIS_FAILED:  # joined or not (a timeout), unknown: monitored without inputs (module docstring)
            previous = None
        if previous == MARKER:
            self.events.labels(model, "duplicate").inc()
            return _reply("duplicate", model, event.id)
        record = _record(previous)
        stored = record.get("inputs") if record is not None else None
        if record is not None and record.get("input_unusable") is True:  # every instance's, and counted so
            stored = [None] * len(prediction.scores)
        inputs = stored if isinstance(stored, list) and len(stored) == len(prediction.scores) else None
        outcome = (
            "response_only"
            if record is None
            else "count_mismatch"  # monitored without the inputs: whose instance is whose cannot be told
            if isinstance(stored, list) and inputs is None
            else "joined"
        )
        width = self._ingest.embedding_dims.get(model)  # read after the last await: ingest sees the same
        body, dropped = events_body(model, mapping, event, prediction, record, inputs, embedding_width=width)
        result = ingested(self._ingest, body, prediction, event.id)  # every event rejected: still answered 200
        self.events.labels(model, outcome).inc()
        for part in dropped:
            self.dropped.labels(model, part).inc()
        return _reply(outcome, model, event.id, result)

    async def _join(self, model: str, event: CloudEvent) -> bytes | None:
        """Take the request waiting for this response, leaving the marker in its place; what was there."""
        key = keys.kserve_pending(model, event.namespace, event.id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.getdel(key)
        pipe.set(key, MARKER, ex=self._ttl_s)
        member = keys.kserve_join_member(model, event.namespace, event.id)
        pipe.zrem(keys.KSERVE_PENDING_INDEX, member)
        pipe.zrem(keys.kserve_pending_of(model), member)
        previous, *_ = await execute(pipe)
        return previous if isinstance(previous, bytes) else None

    async def sweep(self, *, ahead_s: float = 0.0, limit: int = 1000) -> int:
        """Count the requests whose response never came (each once, whichever replica sweeps); how many. Due by
        Redis's clock, ``ahead_s`` later (tests)."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            queue_script(pipe, _SWEEP, [keys.KSERVE_PENDING_INDEX], [limit, ahead_s])
            (due,) = await execute(pipe)
        except REDIS_FAILED:
            return 0  # counted by a later sweep
        for member in due:
            self.events.labels(keys.kserve_member_model(member.decode()), "request_expired").inc()
        return len(due)


@dataclass(frozen=True, slots=True)
class KServeReply:
    """The answer to KServe's logger, one per CloudEvent: its outcome, and what ingest made of its events (none for a
    request, or a response not ingested). Serialises (orjson) as ``{"outcome", "model", "id", "accepted",
    "rejected"}``."""

    __pydantic_config__ = ConfigDict(json_schema_serialization_defaults_required=True)  # every answer has them all

    outcome: str
    model: str
    id: str
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)


def _reply(outcome: str, model: str, event_id: str, result: IngestResult | None = None) -> KServeReply:
    if result is None:
        return KServeReply(outcome, model, event_id)
    return KServeReply(outcome, model, event_id, result.accepted, list(result.rejected))


def _encoded(row: Array) -> Any:
    return EncodedArray.of(row).model_dump(mode="json")


def _metadata_keys(mapping: KServeMapping) -> tuple[str, ...]:
    """The ``ce-metadata`` keys ``mapping`` reads: its cohort keys and its label key."""
    wanted = [*mapping.cohort_metadata, *([] if mapping.label_metadata is None else [mapping.label_metadata])]
    return tuple(dict.fromkeys(wanted))


def _keeps(event: CloudEvent, rows: list[Array | None] | None) -> bool:
    """Whether a request holds anything for its response: a usable input, or metadata the mapping reads (the only
    metadata a CloudEvent keeps)."""
    return any(row is not None for row in rows or ()) or bool(event.metadata)


def _record(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and record.get("v") == RECORD_VERSION else None
