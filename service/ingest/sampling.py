"""Which of a request's accepted events go to the attribution workers: the policy's decisions, once per request
and model, the budget, and the queue writer. Ingest calls it after the metrics; no HTTP here."""

from __future__ import annotations

from dataclasses import dataclass

from sampler.contract import SampledEvent
from sampler.metrics import SamplerMetrics
from sampler.policy import Reason
from sampler.queue import QueueWriter
from sampler.sampler import Sampler
from service.events.accepted import Accepted, Prediction
from service.metrics import IngestMetrics


@dataclass(frozen=True, slots=True)
class Sampled:
    """An event queued for explanation, and why (the ingest answer lists them)."""

    request_id: str
    reasons: tuple[Reason, ...]


class RequestSampling:
    """Offers a request's accepted events to the sampling policy and queues those chosen, within the budget."""

    def __init__(
        self,
        sampler: Sampler,
        writer: QueueWriter,
        *,
        metrics: IngestMetrics,
        sampler_metrics: SamplerMetrics,
        retention_s: float,
    ) -> None:
        self._sampler = sampler
        self._writer = writer
        self._metrics = metrics
        self._sampler_metrics = sampler_metrics
        self._retention_s = retention_s
        """``VAI_EXPLANATION_TTL_S``: explanations are listed by event time within it, so an event whose time is
        further from its receipt is not sampled (counted ``outside_retention``): it could never be listed."""

    def take(self, accepted: Accepted, by_model: list[tuple[str, list[int]]]) -> list[Sampled]:
        """The events queued, in arrival order; most are not sampled, counted once per model.

        ``by_model``: each model of the request with its events' positions in ``accepted``.
        """
        chosen: list[tuple[int, tuple[Reason, ...]]] = []
        for model, at in by_model:
            every = len(at) == len(accepted)
            found = self._sampler.reasons_many(
                model,
                accepted.confidences if every else [accepted.confidences[i] for i in at],
                accepted.margins if every else [accepted.margins[i] for i in at],
                [accepted.events[i].cohort or {} for i in at],
                [accepted.inputs[i] is not None for i in at],
            )
            if len(found) < len(at):
                self._metrics.child(self._metrics.not_sampled, model).inc(len(at) - len(found))
            chosen += [(at[i], reasons) for i, reasons in found]
        chosen.sort(key=lambda pair: pair[0])  # admitted and queued in arrival order, as they came
        return [
            sampled
            for position, reasons in chosen
            if (sampled := self._sample(accepted, position, reasons)) is not None
        ]

    def _sample(self, accepted: Accepted, position: int, reasons: tuple[Reason, ...]) -> Sampled | None:
        model = accepted.events[position].model
        for reason in reasons:
            self._metrics.child(self._sampler_metrics.sampled, model, reason).inc()
        if abs(accepted.timestamps[position] - accepted.received_at) > self._retention_s:
            self._metrics.child(self._sampler_metrics.dropped, model, "outside_retention").inc()
            return None
        if not self._sampler.admit(model):  # most candidates past the budget: no Prediction built for them
            self._metrics.child(self._sampler_metrics.dropped, model, "budget").inc()
            return None
        prediction = accepted.prediction(position)
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
