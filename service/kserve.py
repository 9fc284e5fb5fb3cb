"""KServe's inference logger as a source of events: join each request to its response, then ingest.

The logger posts every request and every response of an InferenceService as CloudEvents
(``service.cloudevents`` and ``service.kserve_payloads`` read them). Behind a Kubernetes Service the
two halves may reach different replicas, so they meet in Redis under
``keys.kserve_pending(model, namespace, ce_id)`` (a ce-id is the caller's to choose, so it is unique only
within one InferenceService):

- a request stores its model inputs there (``SET NX EX``) and its id in ``keys.KSERVE_PENDING_INDEX``;
- a response takes them (``GETDEL``) in one transaction that leaves a marker in their place, then
  ingests one event per instance (request ids ``{ce-id}:{i}``) through the ordinary data plane;
  with no request waiting it is ingested at once without inputs (monitored, not explainable);
- a request that finds the marker came after its response: it is dropped and counted;
- a request whose response never comes is counted by :meth:`KServeLogger.sweep` once its TTL is past;
- a response whose join timed out may have been joined or not (Redis may have run it, its reply came too late):
  it is ingested at once without inputs rather than answered 503, since a retry would find its own marker and be
  dropped as a duplicate (and KServe's logger never retries). A request it did not consume expires as an orphan.

Only the mapped component's events (``kserve.component``, default ``predictor``) are read: a transformer's
request and response are the same inference seen from outside, and counted as ``other_component``.

This module owns the stored record's format (``{"v": 1, "inputs", "metadata"}``) and its keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from common import keys
from common.codec import EncodedArray
from common.errors import InvalidInput, RedisUnavailable, VaiError
from common.names import VERSION_RE
from common.numbers import ascii_decimal
from common.redis import REDIS_FAILED, execute
from common.timestamps import TimestampError, parse_timestamp
from service.cloudevents import CloudEvent, read_event
from service.ingest import IngestHandler, IngestResult
from service.kserve_payloads import Prediction, request_inputs, response_prediction
from service.settings import KServeMapping, SidecarSettings

RECORD_VERSION = 1
MARKER = b"answered"
"""What a response leaves under the key: a request arriving later is dropped."""
GRACE_S = 2.0
"""Past its key's TTL, an orphan is counted only after this, so a response just in time is never counted twice."""
UNMAPPED = "__unmapped__"
"""The ``model`` label of events refused before a model was known."""
MAX_VERSION = 64
NOT_VERSION_TEXT = re.compile(r"[^!-~]")


class KServeLogger:
    """``handle(headers, body)`` for each CloudEvent; ``sweep()`` now and then to count orphaned requests."""

    def __init__(
        self,
        settings: SidecarSettings,
        *,
        redis: Redis,
        ingest: IngestHandler,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._ingest = ingest
        self._ttl_s = settings.kserve_join_ttl_s
        self._max_batch = settings.max_batch
        self._clock = clock
        self._mappings: dict[str, tuple[str, KServeMapping]] = {  # one section per service: SidecarSettings checks
            section.kserve.service or name: (name, section.kserve)
            for name, section in settings.models.items()
            if section.kserve is not None
        }
        self.events = Counter(
            "vai_kserve_events",
            "KServe logger CloudEvents by outcome (request_stored, joined, count_mismatch, response_only, "
            "request_dropped, request_expired, duplicate, other_component, invalid, redis_unavailable).",
            ["model", "outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            "vai_kserve_parts_dropped",
            "Events of KServe responses monitored without a part that was unusable (label: no class of the "
            "prediction; embedding: missing, or not one row per instance).",
            ["model", "part"],
            registry=registry,
        )

    @property
    def enabled(self) -> bool:
        """Some model section has a ``kserve`` mapping."""
        return bool(self._mappings)

    async def handle(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """One CloudEvent; a small summary for the logger, or a ``VaiError`` naming what is wrong. Each ends in
        exactly one ``vai_kserve_events_total`` outcome."""
        model = UNMAPPED
        try:
            event = read_event(headers, body)
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

    def _mapping(self, event: CloudEvent) -> tuple[str, KServeMapping]:
        if event.service is None:
            raise InvalidInput(
                "ce-inferenceservicename: missing; it picks the model section with the kserve mapping",
                field="ce-inferenceservicename",
            )
        found = self._mappings.get(event.service)
        if found is None:
            raise InvalidInput(
                f"ce-inferenceservicename: no model section maps {event.service!r}; add "
                f"[models.{event.service}.kserve] with at least scores_are (or kserve.service naming it) to the config",
                field="ce-inferenceservicename",
            )
        return found

    async def _request(self, model: str, mapping: KServeMapping, event: CloudEvent) -> dict[str, Any]:
        inputs = request_inputs(event, mapping)
        if inputs is not None and len(inputs) > self._max_batch:  # its response would be refused: no orphan
            raise InvalidInput(
                f"inputs: at most {self._max_batch} instances per request (VAI_MAX_BATCH), got {len(inputs)}",
                field="inputs",
            )
        record = orjson.dumps(
            {
                "v": RECORD_VERSION,
                "inputs": None if inputs is None else [EncodedArray.of(row).model_dump(mode="json") for row in inputs],
                "metadata": event.metadata,
            }
        )
        key = keys.kserve_pending(model, event.namespace, event.id)
        member = keys.kserve_join_member(model, event.namespace, event.id)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(key, record, nx=True, ex=self._ttl_s)
            pipe.get(key)
            # indexed in the same transaction, so a response arriving at once always finds the entry to remove
            pipe.zadd(keys.KSERVE_PENDING_INDEX, {member: self._clock() + self._ttl_s + GRACE_S}, nx=True)
            stored, current, _ = await execute(pipe)
            if not stored and current == MARKER:
                await self._redis.zrem(keys.KSERVE_PENDING_INDEX, member)
        except REDIS_FAILED:
            raise RedisUnavailable("redis is unavailable: KServe requests cannot wait for their responses") from None
        outcome = "request_stored" if stored else "request_dropped" if current == MARKER else "duplicate"
        self.events.labels(model, outcome).inc()
        return _reply(outcome, model, event.id)

    async def _response(self, model: str, mapping: KServeMapping, event: CloudEvent) -> dict[str, Any]:
        prediction = response_prediction(event, mapping)
        try:
            previous = await self._join(model, event)
        except RedisTimeoutError:  # joined or not, unknown: monitored without inputs (module docstring)
            previous = None
        except REDIS_FAILED:
            raise RedisUnavailable(
                "redis is unavailable: KServe responses cannot be joined to their requests"
            ) from None
        if previous == MARKER:
            self.events.labels(model, "duplicate").inc()
            return _reply("duplicate", model, event.id)
        record = _record(previous)
        stored = record.get("inputs") if record is not None else None
        inputs = stored if isinstance(stored, list) and len(stored) == len(prediction.scores) else None
        outcome = (
            "response_only"
            if record is None
            else "count_mismatch"  # monitored without the inputs: whose instance is whose cannot be told
            if isinstance(stored, list) and inputs is None
            else "joined"
        )
        body, dropped = _events_body(model, mapping, event, prediction, record, inputs)
        result = self._ingest.ingest(body)  # refused whole: counted by handle(), as invalid
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
        pipe.zrem(keys.KSERVE_PENDING_INDEX, keys.kserve_join_member(model, event.namespace, event.id))
        previous, _, _ = await execute(pipe)
        return previous if isinstance(previous, bytes) else None

    async def sweep(self, *, now: float | None = None, limit: int = 1000) -> int:
        """Count the requests whose response never came (each once, whichever replica sweeps); how many."""
        try:
            due: list[bytes] = await self._redis.zrangebyscore(  # type: ignore[assignment]
                keys.KSERVE_PENDING_INDEX, "-inf", self._clock() if now is None else now, start=0, num=limit
            )
            if not due:
                return 0
            pipe = self._redis.pipeline(transaction=False)
            for member in due:
                pipe.zrem(keys.KSERVE_PENDING_INDEX, member)
            removed = await execute(pipe)
        except REDIS_FAILED:
            return 0  # counted by a later sweep
        for member, gone in zip(due, removed, strict=True):
            if gone:
                self.events.labels(keys.kserve_member_model(member.decode()), "request_expired").inc()
        return sum(1 for gone in removed if gone)


def _reply(outcome: str, model: str, event_id: str, result: IngestResult | None = None) -> dict[str, Any]:
    """The answer to KServe's logger: always ``{"outcome", "model", "id", "accepted", "rejected"}``."""
    rejected = [] if result is None else result.rejected
    return {
        "outcome": outcome,
        "model": model,
        "id": event_id,
        "accepted": 0 if result is None else result.accepted,
        "rejected": [
            {"index": item.index, "request_id": item.request_id, "field": item.field, "error": item.error}
            for item in rejected
        ],
    }


def _record(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and record.get("v") == RECORD_VERSION else None


def _events_body(
    model: str,
    mapping: KServeMapping,
    event: CloudEvent,
    prediction: Prediction,
    record: dict[str, Any] | None,
    inputs: list[Any] | None,
) -> tuple[bytes, list[str]]:
    """The events of one response, as the ingest API's JSON with compact tensors, and the parts left out of them
    (one name per event and part); ``inputs``: the request's, one per prediction, when kept and matching in number."""
    metadata = {**(record.get("metadata") or {} if record is not None else {}), **event.metadata}
    common: dict[str, Any] = {
        "model": model,
        "model_version": _safe_version(prediction.model_version or f"{event.service}-{event.endpoint}"),
    }
    cohort = {key: metadata[key] for key in mapping.cohort_metadata if key in metadata}
    if cohort:
        common["cohort"] = cohort
    label = metadata.get(mapping.label_metadata) if mapping.label_metadata is not None else None
    label_index = None if label is None else ascii_decimal(label.strip(), max_digits=9)
    if event.time is not None:
        with contextlib.suppress(TimestampError, ValueError):  # else the receive time stands in
            common["timestamp"] = parse_timestamp(event.time)
    events, dropped = [], []
    for index, scores in enumerate(prediction.scores):
        item = {**common, "request_id": f"{event.id}:{index}", mapping.scores_are: _compact(scores)}
        if label_index is not None and label_index < scores.shape[-1]:
            item["label"] = label_index
        elif label is not None:  # no class of this prediction: the event is monitored without it
            dropped.append("label")
        embedding = prediction.embeddings[index] if prediction.embeddings is not None else None
        if embedding is not None:
            item["embedding"] = _compact(embedding)
        elif prediction.embeddings is not None:
            dropped.append("embedding")
        if inputs is not None:
            item["input"] = inputs[index]
        events.append(item)
    return orjson.dumps({"events": events}), dropped


def _safe_version(text: str) -> str:
    """``text`` as a version (1-64 visible ASCII characters): other characters become ``_``; a longer one keeps
    its first 55 characters and ``~`` with 8 hex digits of its hash, so that two long versions stay apart."""
    if VERSION_RE.match(text):
        return text
    cleaned = NOT_VERSION_TEXT.sub("_", text) or "_"
    if len(cleaned) <= MAX_VERSION:
        return cleaned
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: MAX_VERSION - 9]}~{digest}"


def _compact(array: Any) -> dict[str, Any]:
    encoded: dict[str, Any] = EncodedArray.of(array).model_dump(mode="json")
    return encoded
