"""The ingest API's events a KServe response becomes: one per instance whose scores could be read, with what of the
request and the CloudEvent's attributes each may keep (``service.kserve.logger`` joins them first); and what ingest
made of them, told per instance."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any

import orjson

from common.codec import EncodedArray
from common.names import VERSION_RE
from common.numbers import ascii_decimal
from service.events.errors import FieldError
from service.events.schemas import MAX_COHORT_TEXT
from service.ingest.handler import IngestHandler, IngestResult, Rejection
from service.ingest.validation import timestamp_of
from service.kserve.cloudevents import CloudEvent
from service.kserve.payloads import Array, Prediction
from service.settings import KServeMapping

MAX_VERSION = 64
DEFAULT_ENDPOINT = "default"
NOT_VERSION_TEXT = re.compile(r"[^!-~]")


def events_body(
    model: str,
    mapping: KServeMapping,
    event: CloudEvent,
    prediction: Prediction,
    record: dict[str, Any] | None,
    inputs: list[Any] | None,
    *,
    embedding_width: int | None,
) -> tuple[bytes, list[str]]:
    """The events of one response (one per instance whose scores could be read: :attr:`Prediction.readable`), as the
    ingest API's JSON with compact tensors, and the parts left out of them (one name per event and part).
    ``inputs``: the request's, one per prediction, when kept and matching in number (``None`` for an instance whose
    input was unusable); ``embedding_width``: the model's, once known (an embedding
    of another width would have its event refused, and the prediction with it)."""
    metadata, overlong = _metadata(record, event)
    common: dict[str, Any] = {
        "model": model,
        "model_version": _version(prediction, event),
    }
    cohort = {key: metadata[key] for key in mapping.cohort_metadata if key in metadata}
    unusable = [key for key, value in cohort.items() if not 1 <= len(value) <= MAX_COHORT_TEXT]
    unusable += [key for key in mapping.cohort_metadata if key in overlong]
    for key in unusable:  # an event with such a value would be refused whole, and the prediction lost
        cohort.pop(key, None)
    if cohort:
        common["cohort"] = cohort
    label = metadata.get(mapping.label_metadata) if mapping.label_metadata is not None else None
    label_sent = label is not None or mapping.label_metadata in overlong
    label_index = None if label is None else ascii_decimal(label.strip(), max_digits=9)
    timestamp = _timestamp(event)
    if timestamp is not None:
        common["timestamp"] = timestamp
    left_out = ["cohort"] * bool(unusable) + ["time"] * (event.time is not None and timestamp is None)
    embeddings = None if prediction.embeddings is None else _of_width(prediction.embeddings, embedding_width)
    events, dropped = [], []
    for index, scores in enumerate(prediction.scores):
        if isinstance(scores, FieldError):  # no event: rejected by ingested()
            continue
        item = {**common, "request_id": f"{event.id}:{index}", mapping.scores_are: _compact(scores)}
        if label_index is not None and label_index < scores.shape[-1]:
            item["label"] = label_index
        elif label_sent:  # no class of this prediction: the event is monitored without it
            dropped.append("label")
        if embeddings is not None and embeddings[index] is not None:
            item["embedding"] = _compact(embeddings[index])
        elif embeddings is not None:
            dropped.append("embedding")
        if inputs is not None and inputs[index] is not None:
            item["input"] = inputs[index]
        elif inputs is not None:
            dropped.append("input")
        events.append(item)
        dropped.extend(left_out)
    return orjson.dumps({"events": events}), dropped


def _metadata(record: dict[str, Any] | None, event: CloudEvent) -> tuple[dict[str, str], set[str]]:
    """The ``ce-metadata`` values of a response and of its request's record (the response's win, key by key), and
    the keys whose value was too long to keep (:attr:`CloudEvent.overlong`). A record stored by an earlier release
    may hold any key at any length: ``events_body`` still checks each value it uses."""
    stored = record.get("metadata") if record is not None else None
    listed = record.get("overlong") if record is not None else None
    metadata = (
        {key: value for key, value in stored.items() if isinstance(value, str)} if isinstance(stored, dict) else {}
    )
    overlong = {key for key in listed if isinstance(key, str)} if isinstance(listed, list) else set()
    for key in event.overlong:
        metadata.pop(key, None)
    return metadata | event.metadata, (overlong - event.metadata.keys()) | event.overlong


def ingested(ingest: IngestHandler, body: bytes, prediction: Prediction, ce_id: str) -> IngestResult:
    """What ingest made of a response's events (``body``, from :func:`events_body`), told per instance: each
    rejection's ``index`` is its instance's, and each unreadable v1 prediction is rejected too, naming it (and
    counted in ``vai_events_rejected_total`` as ingest counts the events it rejects).

    A response whose every event is rejected is a result all the same, not the "no valid event" ``InvalidInput`` of
    ``/v1/events``: KServe's logger logs any answer but 200 as a failed delivery, and by now the join has taken the
    waiting request, so the CloudEvent ends in its join's outcome with its rejections."""
    readable = prediction.readable
    result = ingest.admit(body) if readable else IngestResult()
    rejected = [replace(rejection, index=readable[rejection.index]) for rejection in result.rejected]
    for index, row in enumerate(prediction.scores):
        if isinstance(row, FieldError):
            ingest.reject_body(row.reason)
            rejected.append(Rejection(index, f"{ce_id}:{index}", row.field, str(row)))
    rejected.sort(key=lambda rejection: rejection.index)
    return IngestResult(result.accepted, rejected, result.sampled)


def _of_width(embeddings: list[Array | None], width: int | None) -> list[Array | None]:
    """``embeddings`` with ``None`` for each whose width is not ``width`` (when unknown, the first one's): every
    embedding of a model has one width, and ingest refuses an event of another."""
    if width is None:
        width = next((embedding.shape[-1] for embedding in embeddings if embedding is not None), None)
    return [None if embedding is None or embedding.shape[-1] != width else embedding for embedding in embeddings]


def _timestamp(event: CloudEvent) -> float | None:
    """``ce-time`` in epoch seconds; ``None`` when absent, or no time an event may have (unparseable, out of
    range): the receive time then stands in, rather than the events being refused."""
    if event.time is None:
        return None
    try:
        return timestamp_of(event.time, received_at=0.0)
    except FieldError:
        return None


def _version(prediction: Prediction, event: CloudEvent) -> str:
    """The v2 ``model_version``, else ``{service}-{endpoint}``; on an endpoint other than ``default`` (a canary)
    the endpoint is appended to the model version, since servers such as Triton report the same one on both."""
    if prediction.model_version is None:
        return _safe_version(f"{event.service}-{event.endpoint}")
    if event.endpoint == DEFAULT_ENDPOINT:
        return _safe_version(prediction.model_version)
    return _safe_version(f"{prediction.model_version}-{event.endpoint}")


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
