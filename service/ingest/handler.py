"""The ingest data plane: validate events, record metrics, sample, enqueue. No HTTP here.

A request's events are decoded and admitted here, event by event or a lane at once. What the checks read of earlier
events (model slots, embedding widths, recent ids) is in :mod:`service.ingest.known_models`; the metrics and the
monitoring feed are in :mod:`service.ingest.observation`, the sampling in :mod:`service.ingest.sampling`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.errors import InvalidInput, VaiError
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
from service.ingest.known_models import KnownModels
from service.ingest.observation import IngestObserver, positions
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
        self._sampler = sampler
        self._sampling = RequestSampling(
            sampler,
            writer,
            metrics=metrics,
            sampler_metrics=sampler_metrics,
            retention_s=settings.explanation_ttl_s,
        )
        self._metrics = metrics
        self._clock = clock
        self._decoder = BodyDecoder(max_batch=settings.max_batch)
        self._known = KnownModels(settings)
        if cohorts is None:  # a handler on its own admits values itself; the sidecar's are the fleet's
            cohorts = CohortCounts(
                metrics, CohortGuard(keys=settings.cohort_keys, max_values_per_key=settings.max_cohort_values)
            )
        self._observer = IngestObserver(settings, metrics=metrics, known=self._known, cohorts=cohorts, feed=feed)

    @property
    def models(self) -> list[str]:
        return self._known.models

    @property
    def known_models(self) -> set[str]:
        return self._known.known_models

    @property
    def embedding_dims(self) -> dict[str, int]:
        """Each model's embedding width: its events', or an uploaded reference's."""
        return self._known.embedding_dims

    @property
    def counts(self) -> Counter[str]:
        """Accepted events per model since start (for /status)."""
        return self._observer.counts

    def register(self, model: str) -> None:
        """Know ``model`` before any event of it (e.g. a drift reference); raises ``TooManyModels`` past the cap."""
        self._known.register(model)

    def embedding_width_claimed(self, model: str, dims: int) -> AbstractContextManager[None]:
        """Hold ``model``'s embedding width at ``dims`` for an uploaded reference of that width (see
        :meth:`~service.ingest.known_models.KnownModels.embedding_width_claimed`)."""
        return self._known.embedding_width_claimed(model, dims)

    def ingest(
        self, body: bytes, *, open_brackets: int | None = None, header_length: str | None = None
    ) -> IngestResult:
        """Handle one request body; raises ``InvalidInput`` when nothing in it is valid.

        ``open_brackets``: the body's count of b"[", when it was taken while reading (see ``BracketTally``).
        ``header_length``: ``Inference-Header-Content-Length`` of a body in the binary tensor extension.
        """
        result = self.admit(body, open_brackets=open_brackets, header_length=header_length)
        if not result.accepted:
            first = result.rejected[0]
            raise InvalidInput(
                f"no valid event in the request; first: {first.error}", field=first.field, detail=_detail(result)
            )
        return result

    def admit(self, body: bytes, *, open_brackets: int | None = None, header_length: str | None = None) -> IngestResult:
        """:meth:`ingest`, with a body whose every event is rejected answered as such rather than raised (a KServe
        response, whose CloudEvent is delivered once its events are rejected); a body that cannot be read raises."""
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
        by_model = list(positions([event.model for event in accepted.events]))  # read by metrics, feed, sampling
        self._observer.observe(accepted, by_model)
        result.sampled = self._sampling.take(accepted, by_model)
        return result

    def _admit_each(self, decoded: list[Decoded], rejected: list[Rejection], *, received_at: float) -> Accepted:
        """The events that pass every check, event by event; the others go to ``rejected``."""
        checked: list[Checked] = []
        for index, item in enumerate(decoded):
            try:
                if isinstance(item, Rejected):
                    raise item.error
                valid = check(item, received_at=received_at)
                self._known.admit(valid.model, valid.request_id, valid.embedding_dim)
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
                self._known.admit(event.model, event.request_id, dims)
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

    def reject_body(self, reason: str) -> None:
        """Count a request whose body was refused before it could be read (too large, bad headers), or an event
        refused before it became one (a KServe v1 prediction that is no list of numbers)."""
        self._metrics.rejected.labels(reason).inc()


def _detail(result: IngestResult) -> dict[str, Any]:
    return orjson.loads(result.to_json())  # type: ignore[no-any-return]
