"""What an explained batch leaves behind: one record per event, done with its maps and figures, or failed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from attribution_workers.config import AttributionConfig
from attribution_workers.explainer import Attribution, Explanation
from attribution_workers.loader import LoadedModel
from attribution_workers.methods import MethodName
from sampler.contract import SampledEvent
from sampler.explanation_records import (
    ExplanationDetail,
    ExplanationRecord,
    ExplanationSummary,
    Fidelity,
    MethodSettings,
    StoredAttribution,
    WorkerPrediction,
)
from sampler.verdicts import MethodTrust

LABEL_SUFFIX = "@label"
"""Maps towards the true label (when known and different from the prediction) are stored as ``method@label``."""


@dataclass
class Outcome:
    """What became of one event: a record to store, and whether retrying could help."""

    record: ExplanationRecord
    retry: bool = False

    @property
    def ok(self) -> bool:
        return self.record.summary.status == "done"


def method_settings(config: AttributionConfig, model: LoadedModel, methods: Sequence[MethodName]) -> MethodSettings:
    """The settings of the methods that run, as the records keep them."""
    ran = set(methods)
    return MethodSettings(
        fidelity_steps=config.fidelity_steps,
        fidelity_random_orders=config.fidelity_random_orders,
        ig_steps=config.ig_steps if "integrated_gradients" in ran else None,
        shap_samples=config.shap_samples if ran & {"gradient_shap", "kernel_shap"} else None,
        shap_stdev=config.shap_stdev if "gradient_shap" in ran else None,
        lime_samples=config.lime_samples if "lime" in ran else None,
        lime_patch=config.lime_settings().patch_edge(model.input_shape) if "lime" in ran else None,
        occlusion_window=config.occlusion_window if "occlusion" in ran else None,
        gradcam_layer=model.gradcam_layer_name if "gradcam" in ran else None,
    )


def record_of(
    methods: tuple[MethodName, ...],
    config: AttributionConfig,
    event: SampledEvent,
    explanation: Explanation,
    label: Explanation | None,
    fidelity: dict[str, Fidelity | None],
    agreement_value: float | None,
    seconds: dict[str, float],
    now: float,
    trust: dict[str, MethodTrust],
    prediction: WorkerPrediction | None = None,
    settings: MethodSettings | None = None,
) -> ExplanationRecord:
    """The record of one explained event: every map (and the maps towards its label) with its figures, what the
    worker's own model predicted, and the settings the maps were made with."""
    stored: dict[str, StoredAttribution] = {
        a.method: stored_attribution(
            a, explanation.target, fidelity.get(a.method), seconds[a.method], trust.get(a.method)
        )
        for a in explanation.attributions
    }
    if label is not None:
        stored |= {
            a.method + LABEL_SUFFIX: stored_attribution(
                a, label.target, None, seconds[a.method], trust.get(a.method + LABEL_SUFFIX)
            )
            for a in label.attributions
        }
    summary = ExplanationSummary.queued(event).model_copy(
        update={
            "status": "done",
            "methods": methods,
            "trust": {m: trust[m] for m in methods},
            "worker_prediction": prediction,
        }
    )
    detail = ExplanationDetail(
        attributions=stored,
        agreement=agreement_value if agreement_value is None or math.isfinite(agreement_value) else None,
        input=event.input if config.store_inputs else None,
        explained_at=now,
        feature_names=config.feature_names,
        settings=settings,
    )
    return ExplanationRecord(summary=summary, detail=detail)


def stored_attribution(
    attribution: Attribution, target: int, fidelity: Fidelity | None, seconds: float, trust: MethodTrust | None
) -> StoredAttribution:
    delta = attribution.convergence_delta
    return StoredAttribution.from_array(
        attribution.values,
        target=target,
        fidelity=fidelity,
        seconds=seconds,
        convergence_delta=delta if delta is None or math.isfinite(delta) else None,
        agreement=trust.agreement if trust is not None else None,
        verdict=trust.verdict if trust is not None else None,
    )


def failed(event: SampledEvent, error: str, *, retry: bool) -> Outcome:
    summary = ExplanationSummary.queued(event).model_copy(update={"status": "failed"})
    return Outcome(ExplanationRecord(summary=summary, detail=ExplanationDetail(error=error[:2000])), retry=retry)
