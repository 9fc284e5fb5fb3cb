"""The ingest data plane: validate events, record metrics, sample, enqueue. No HTTP here."""

from __future__ import annotations

import contextlib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from common.cardinality import BoundedLabel
from common.errors import InvalidInput, TooManyModels, VaiError
from monitors.cohorts import CohortGuard
from sampler.contract import InputTensor
from sampler.metrics import SamplerMetrics
from sampler.queue import QueueWriter
from sampler.sampler import Sampler
from service.decoding.fast_parsing import BodyDecoder
from service.decoding.parsing import Decoded, Rejected
from service.decoding.tensor_lanes import Lane
from service.events.accepted import Accepted, Checked
from service.events.errors import FieldError
from service.events.scores import summarise_matrix
from service.feed.writer import FeedWriter
from service.ingest.cohorts import CohortCounts
from service.ingest.sampling import RequestSampling, Sampled
from service.ingest.validation import (
    check,
    check_lane_event,
    rows_beyond_float32,
    scores_chosen,
    summarised,
)
from service.metrics import IngestMetrics
from service.settings import SidecarSettings

_Key = TypeVar("_Key", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    request_id: str | None
    field: str
    error: str


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    sampled: list[Sampled] = field(default_factory=list)

    def to_json(self) -> bytes:
        return orjson.dumps(self)


class IngestHandler:
    """Turns request bodies into accepted predictions, metrics and queued samples."""

    def __init__(
        self,
        settings: SidecarSettings,
        *,
        sampler: Sampler,
        writer: QueueWriter,
        metrics: IngestMetrics,
        sampler_metrics: SamplerMetrics,
        feed: FeedWriter | None = None,
        cohorts: CohortCounts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._sampler = sampler
        self._sampling = RequestSampling(
            sampler,
            writer,
            metrics=metrics,
            sampler_metrics=sampler_metrics,
            retention_s=settings.explanation_ttl_s,
        )
        self._metrics = metrics
        self._feed = feed
        self._clock = clock
        self._decoder = BodyDecoder(max_batch=settings.max_batch)
        self._models: dict[str, BoundedLabel] = {}
        """Known models, each with the bounded set of its version labels."""
        if cohorts is None:  # a handler on its own admits values itself; the sidecar's are the fleet's
            cohorts = CohortCounts(
                metrics, CohortGuard(keys=settings.cohort_keys, max_values_per_key=settings.max_cohort_values)
            )
        self._cohorts = cohorts
        self.embedding_dims: dict[str, int] = {}
        self._width_by_upload: set[str] = set()
        """Models whose ``embedding_dims`` an uploaded reference set and no event has had since: a later upload
        may still change it (see :meth:`embedding_width_claimed`)."""
        self._recent: dict[str, OrderedDict[str, None]] = {}
        """Recent request ids per model, oldest first. An OrderedDict: evicting a plain dict's first key
        (``next(iter(d))``) walks over every key deleted before it, ~8 µs per event at 10,000 ids."""
        self.counts: Counter[str] = Counter()
        """Accepted events per model since start (for /status)."""

    @property
    def models(self) -> list[str]:
        return sorted(self._models)

    @property
    def known_models(self) -> set[str]:
        return set(self._models)

    def register(self, model: str) -> None:
        """Know ``model`` before any event of it (e.g. a drift reference); raises ``TooManyModels`` past the cap."""
        if model not in self._models:
            if (refused := self._no_slot()) is not None:
                raise TooManyModels(f"model: {refused}")
            self._models[model] = BoundedLabel(self._settings.max_versions_per_model)

    def _no_slot(self) -> str | None:
        """Why one more model is refused, or ``None`` while there are fewer than ``VAI_MAX_MODELS``."""
        if len(self._models) < self._settings.max_models:
            return None
        return f"unknown model and already {self._settings.max_models} models (raise VAI_MAX_MODELS)"

    def ingest(
        self, body: bytes, *, open_brackets: int | None = None, header_length: str | None = None
    ) -> IngestResult:
        """Handle one request body; raises ``InvalidInput`` when nothing in it is valid.

        ``open_brackets``: the body's count of b"[", when it was taken while reading (see ``BracketTally``).
        ``header_length``: ``Inference-Header-Content-Length`` of a body in the binary tensor extension.
        """
        received_at = self._clock()
        try:
            decoded = self._decoder.decode(body, open_brackets=open_brackets, header_length=header_length)
        except VaiError:
            self._metrics.rejected.labels("invalid_body").inc()
            raise
        result = IngestResult()
        if isinstance(decoded, Lane):
            accepted = self._admit_lane(decoded, result.rejected, received_at=received_at)
        else:
            accepted = self._admit_each(decoded, result.rejected, received_at=received_at)
        result.accepted = len(accepted)
        by_model = list(_positions([event.model for event in accepted.events]))  # read by metrics, feed, sampling
        self._observe(accepted, by_model)
        result.sampled = self._sampling.take(accepted, by_model)
        if not accepted:
            first = result.rejected[0]
            raise InvalidInput(
                f"no valid event in the request; first: {first.error}", field=first.field, detail=_detail(result)
            )
        return result

    def _admit_each(self, decoded: list[Decoded], rejected: list[Rejection], *, received_at: float) -> Accepted:
        """The events that pass every check, event by event; the others go to ``rejected``."""
        checked: list[Checked] = []
        for index, item in enumerate(decoded):
            try:
                if isinstance(item, Rejected):
                    raise item.error
                valid = check(item, received_at=received_at)
                self._admit(valid.model, valid.request_id, valid.embedding_dim)
            except FieldError as error:
                self._reject(rejected, index, item.request_id, error)
                continue
            checked.append(valid)
        return summarised(checked, received_at=received_at)

    def _admit_lane(self, lane: Lane, rejected: list[Rejection], *, received_at: float) -> Accepted:
        """:meth:`_admit_each` for a lane's events, whose number fields are alike in every event: their presence
        and lengths are checked once, the scores summarised straight from the lane's matrix."""
        events, vectors = lane.events, lane.vectors
        try:
            scores, from_logits = scores_chosen(vectors.get("logits"), vectors.get("probabilities"))
        except FieldError as error:  # what check() says of every event
            for index, event in enumerate(events):
                self._reject(rejected, index, event.request_id, error)
            return summarised([], received_at=received_at)
        embeddings = vectors.get("embedding")
        classes, dims = scores.shape[1], 0 if embeddings is None else embeddings.shape[1]
        beyond = rows_beyond_float32(embeddings)
        kept: list[int] = []
        timestamps: list[float] = []
        inputs: list[InputTensor | None] = []
        for index, event in enumerate(events):
            try:
                timestamp, model_input = check_lane_event(
                    event,
                    classes,
                    received_at=received_at,
                    probabilities=None if from_logits else scores[index],
                    embedding=embeddings[index] if embeddings is not None and index in beyond else None,
                )
                self._admit(event.model, event.request_id, dims)
            except FieldError as error:
                self._reject(rejected, index, event.request_id, error)
                continue
            kept.append(index)
            timestamps.append(timestamp)
            inputs.append(model_input)
        if len(kept) < len(events):  # rows taken out (copied): the summary reads one matrix
            scores, embeddings = scores[kept], None if embeddings is None else embeddings[kept]
            events = [events[index] for index in kept]
        return Accepted(
            list(events),
            timestamps,
            scores,
            [from_logits] * len(kept),
            [None] * len(kept) if embeddings is None else embeddings,
            inputs,
            *summarise_matrix(scores, from_logits=from_logits),
            received_at,
        )

    def _reject(self, rejected: list[Rejection], index: int, request_id: str | None, error: FieldError) -> None:
        self._metrics.rejected.labels(error.reason).inc()
        rejected.append(Rejection(index, request_id, error.field, str(error)))

    @contextlib.contextmanager
    def embedding_width_claimed(self, model: str, dims: int) -> Iterator[None]:
        """Hold ``model``'s embedding width at ``dims`` for an uploaded reference of that width: ``InvalidInput``
        when its events already have another; events of another width arriving meanwhile are refused rather than
        stored beside a reference they do not match. A width that only an earlier upload set (no event of it since)
        is replaced: that upload may have been the mistake. Put back as it was if the upload fails and no event
        has had the claimed width meanwhile."""
        known = self.embedding_dims.get(model)
        by_upload = model in self._width_by_upload
        if known is not None and not by_upload:
            if known != dims:
                raise InvalidInput(
                    f"embeddings: {dims} values per row, but this model's events have {known}", field="embeddings"
                )
            yield  # the events' width: nothing to claim or give back
            return
        self.embedding_dims[model] = dims
        self._width_by_upload.add(model)
        try:
            yield
        except BaseException:
            if model in self._width_by_upload:  # no event took the claimed width meanwhile
                if known is None:
                    self.embedding_dims.pop(model, None)
                    self._width_by_upload.discard(model)
                else:
                    self.embedding_dims[model] = known  # the earlier upload's, still stored
            raise

    def reject_body(self, reason: str) -> None:
        """Count a request whose body was refused before it could be read (too large, bad headers)."""
        self._metrics.rejected.labels(reason).inc()

    def _admit(self, model: str, request_id: str, dims: int) -> None:
        """Checks that depend on what came before (and the request id's text, checked here for both readers);
        records the event once it passes them all."""
        if not request_id.isprintable():  # a newline or NUL in an id breaks logs, keys and the viewer's links
            raise FieldError("request_id", "must be printable text: no control characters")
        if model not in self._models:  # the cap's error, before any other check: this event's rejection
            if (refused := self._no_slot()) is not None:
                raise FieldError("model", refused, reason="too_many_models")
            self.register(model)
        known_dims = self.embedding_dims.get(model)
        if dims and known_dims is not None and known_dims != dims:
            raise FieldError(
                "embedding", f"expected {known_dims} values for model {model!r}, got {dims}", reason="embedding_length"
            )
        recent = self._recent.get(model)
        if recent is None:
            recent = self._recent[model] = OrderedDict()
        if request_id in recent:
            raise FieldError("request_id", f"duplicate of a recent event of model {model!r}", reason="duplicate")
        window = self._settings.dedupe_window
        if window:
            recent[request_id] = None
            if len(recent) > window:
                recent.popitem(last=False)
        if dims and known_dims is None:
            self.embedding_dims[model] = dims
        elif dims and model in self._width_by_upload:
            self._width_by_upload.discard(model)  # an event of the uploaded width: now the events' width too

    def _observe(self, accepted: Accepted, by_model: list[tuple[str, list[int]]]) -> None:
        """Metrics and monitors for a request's accepted events, each metric touched once per label set."""
        groups: dict[tuple[str, str], list[int]] = {}
        for (model, version), at in _positions([(event.model, event.model_version) for event in accepted.events]):
            labels = (model, self._models[model](version))  # taken in arrival order: the labels taken per event
            groups[labels] = sorted(groups[labels] + at) if labels in groups else at  # versions past the cap meet
        for labels, at in groups.items():
            every = len(at) == len(accepted)
            confidences = accepted.confidences if every else [accepted.confidences[i] for i in at]
            self._metrics.confidence.observe_many(labels, confidences)
            self._metrics.margin.observe_many(labels, accepted.margins if every else [accepted.margins[i] for i in at])
            self._metrics.child(self._metrics.events, *labels).inc(len(at))
            self.counts[labels[0]] += len(at)
            threshold = self._settings.low_confidence_threshold(labels[0])
            low = sum(confidence < threshold for confidence in confidences)
            if low:
                self._metrics.child(self._metrics.low_confidence, *labels).inc(low)
        self._cohorts.count(accepted.events)
        if self._feed is not None:
            self._feed_all(self._feed, accepted, by_model)

    @staticmethod
    def _feed_all(feed: FeedWriter, accepted: Accepted, by_model: list[tuple[str, list[int]]]) -> None:
        events = accepted.events
        admitted = feed.admit(accepted.received_at, len(events))
        keeping: set[str] = set()  # models whose every event waits in Redis for a delayed label
        for model, at in by_model:
            kept = admitted.count(True) if len(at) == len(events) else sum(admitted[i] for i in at)
            feed.count_budget_drops(model, len(at) - kept)
            if feed.keeps_records(model):
                keeping.add(model)
        for index, event in enumerate(events):  # most events past the budget need no Prediction at all
            if admitted[index] or event.label is not None or event.model in keeping:
                feed.take(accepted.prediction(index), event.model_version, admitted=admitted[index])


def _positions(keys: list[_Key]) -> Iterable[tuple[_Key, list[int]]]:
    """Each distinct key with its positions in ``keys``, in order of first appearance (most requests have one)."""
    if len(set(keys)) == 1:
        return [(keys[0], list(range(len(keys))))]
    found: dict[_Key, list[int]] = {}
    for position, key in enumerate(keys):
        at = found.get(key)
        if at is None:
            at = found[key] = []
        at.append(position)
    return found.items()


def _detail(result: IngestResult) -> dict[str, Any]:
    return orjson.loads(result.to_json())  # type: ignore[no-any-return]
