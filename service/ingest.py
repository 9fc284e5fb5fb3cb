"""The ingest data plane: validate events, record metrics, sample, enqueue. No HTTP here."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.cardinality import BoundedLabel
from common.errors import InvalidInput, VaiError
from sampler.contract import SampledEvent
from sampler.metrics import SamplerMetrics
from sampler.policy import Reason
from sampler.queue import QueueWriter
from sampler.sampler import Sampler
from service.errors import FieldError
from service.fast_parsing import BodyDecoder
from service.feed_writer import FeedWriter
from service.metrics import IngestMetrics
from service.parsing import Rejected
from service.settings import SidecarSettings
from service.validation import Checked, Prediction, check, predictions


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    request_id: str | None
    field: str
    error: str


@dataclass(frozen=True, slots=True)
class Sampled:
    request_id: str
    reasons: tuple[Reason, ...]


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._sampler = sampler
        self._writer = writer
        self._metrics = metrics
        self._sampler_metrics = sampler_metrics
        self._feed = feed
        self._clock = clock
        self._decoder = BodyDecoder(max_batch=settings.max_batch)
        self._models: dict[str, BoundedLabel] = {}
        """Known models, each with the bounded set of its version labels."""
        self._cohort_values = {key: BoundedLabel(settings.max_cohort_values) for key in settings.cohort_keys}
        self.embedding_dims: dict[str, int] = {}
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
        """Know ``model`` before any event of it (e.g. a drift reference); raises ``FieldError`` past the cap."""
        if model not in self._models:
            if len(self._models) >= self._settings.max_models:
                raise FieldError(
                    "model",
                    f"unknown model and already {self._settings.max_models} models (raise VAI_MAX_MODELS)",
                    reason="too_many_models",
                )
            self._models[model] = BoundedLabel(self._settings.max_versions_per_model)

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
        checked: list[Checked] = []
        for index, item in enumerate(decoded):
            try:
                if isinstance(item, Rejected):
                    raise item.error
                valid = check(item, received_at=received_at)
                self._admit(valid)
            except FieldError as error:
                self._metrics.rejected.labels(error.reason).inc()
                result.rejected.append(Rejection(index, item.request_id, error.field, str(error)))
                continue
            checked.append(valid)
        accepted = predictions(checked, received_at=received_at)
        result.accepted = len(accepted)
        self._observe(accepted)
        result.sampled = self._sample_all(accepted)
        if not accepted:
            first = result.rejected[0]
            raise InvalidInput(
                f"no valid event in the request; first: {first.error}", field=first.field, detail=_detail(result)
            )
        return result

    def reject_body(self, reason: str) -> None:
        """Count a request whose body was refused before it could be read (too large, bad headers)."""
        self._metrics.rejected.labels(reason).inc()

    def _admit(self, event: Checked) -> None:
        """Checks that depend on what came before; records the event once it passes them all."""
        model, request_id, dims = event.model, event.request_id, event.embedding_dim
        if model not in self._models:
            self.register(model)  # the cap's error, before any other check
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
        if self._settings.dedupe_window:
            recent[request_id] = None
            if len(recent) > self._settings.dedupe_window:
                recent.popitem(last=False)
        if dims and known_dims is None:
            self.embedding_dims[model] = dims

    def _observe(self, accepted: list[Prediction]) -> None:
        """Metrics and monitors for a request's accepted events, each metric touched once per label set."""
        figures: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        cohorts: dict[tuple[str, str, str], int] = {}
        budget_drops: dict[str, int] = {}
        for prediction in accepted:
            labels = (prediction.model, self._models[prediction.model](prediction.version))
            found = figures.get(labels)
            if found is None:
                found = figures[labels] = ([], [])
            found[0].append(prediction.confidence)
            found[1].append(prediction.margin)
            if self._feed is not None and not self._feed.observe(prediction, prediction.version):
                budget_drops[prediction.model] = budget_drops.get(prediction.model, 0) + 1
            if prediction.cohort:
                for key, values in self._cohort_values.items():
                    value = prediction.cohort.get(key)
                    if value is not None:
                        cohort_labels = (prediction.model, key, values(value))
                        cohorts[cohort_labels] = cohorts.get(cohort_labels, 0) + 1
        for labels, (confidences, margins) in figures.items():
            self._metrics.confidence.observe_many(labels, confidences)
            self._metrics.margin.observe_many(labels, margins)
            self._metrics.child(self._metrics.events, *labels).inc(len(confidences))
            self.counts[labels[0]] += len(confidences)
            threshold = self._sampler.policy(labels[0]).confidence_below
            low = sum(confidence < threshold for confidence in confidences) if threshold is not None else 0
            if low:
                self._metrics.child(self._metrics.low_confidence, *labels).inc(low)
        for cohort_labels, count in cohorts.items():
            self._metrics.child(self._metrics.cohort_events, *cohort_labels).inc(count)
        if self._feed is not None:
            for model, count in budget_drops.items():
                self._feed.count_budget_drops(model, count)

    def _sample_all(self, accepted: list[Prediction]) -> list[Sampled]:
        """Sampling decisions for a request's accepted events; most are not sampled, counted once per model."""
        positions: dict[str, list[int]] = {}
        for position, prediction in enumerate(accepted):
            positions.setdefault(prediction.model, []).append(position)
        chosen: list[tuple[int, tuple[Reason, ...]]] = []
        for model, at in positions.items():
            events = accepted if len(at) == len(accepted) else [accepted[i] for i in at]
            found = self._sampler.reasons_many(
                model,
                [p.confidence for p in events],
                [p.margin for p in events],
                [p.cohort for p in events],
                [p.input is not None for p in events],
            )
            if len(found) < len(at):
                self._metrics.child(self._metrics.not_sampled, model).inc(len(at) - len(found))
            chosen += [(at[i], reasons) for i, reasons in found]
        chosen.sort(key=lambda pair: pair[0])  # admitted and queued in arrival order, as they came
        return [
            sampled
            for position, reasons in chosen
            if (sampled := self._sample(accepted[position], reasons)) is not None
        ]

    def _sample(self, prediction: Prediction, reasons: tuple[Reason, ...]) -> Sampled | None:
        model = prediction.model
        for reason in reasons:
            self._metrics.child(self._sampler_metrics.sampled, model, reason).inc()
        if not self._sampler.admit(model):
            self._metrics.child(self._sampler_metrics.dropped, model, "budget").inc()
            return None
        if self._writer.offer(_message(prediction, reasons)) is not None:
            return None
        return Sampled(prediction.request_id, reasons)


def _message(prediction: Prediction, reasons: tuple[Reason, ...]) -> SampledEvent:
    return SampledEvent(
        model=prediction.model,
        model_version=prediction.version,
        request_id=prediction.request_id,
        timestamp=prediction.timestamp,
        received_at=prediction.received_at,
        reasons=reasons,
        predicted=prediction.predicted,
        confidence=prediction.confidence,
        margin=prediction.margin,
        num_classes=prediction.num_classes,
        cohort=prediction.cohort,
        label=prediction.label,
        input=prediction.input,
    )


def _detail(result: IngestResult) -> dict[str, Any]:
    return orjson.loads(result.to_json())  # type: ignore[no-any-return]
