"""The explanation record format: what a worker stores for a sampled event and what the API serves.

Typed models only (pydantic, JSON in Redis); :mod:`sampler.explanations` stores and indexes them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from common.codec import ScaledHalf
from common.names import MODEL_PATTERN, VERSION_PATTERN
from sampler.contract import InputTensor, SampledEvent
from sampler.layers import FeatureMaps, LayerStats
from sampler.policy import Reason
from sampler.verdicts import MethodTrust, Verdict

ExplanationStatus = Literal["queued", "done", "failed"]


class Fidelity(BaseModel):
    """Deletion-curve areas of one map, each in [0, 1]: lower means the target probability fell faster."""

    model_config = ConfigDict(frozen=True)

    deletion_auc: float
    """Area when elements go most-attributed first."""
    random_auc: float
    """Mean area over seeded random orders."""

    @property
    def gain(self) -> float:
        """``random_auc - deletion_auc``: above 0 the attribution order beats chance (faithful)."""
        return self.random_auc - self.deletion_auc


class StoredAttribution(ScaledHalf):
    """One method's map, compact: ``values / scale`` as float16 in the array codec (its dtype implied)."""

    target: int
    convergence_delta: float | None = None
    fidelity: Fidelity | None = None
    seconds: float | None = None
    agreement: float | None = None
    """Mean Spearman correlation of this map's |values| with each other method's map of the same input."""
    verdict: Verdict | None = None
    """Whether to trust this map (``sampler.verdicts``); None in records older than verdicts."""

    @classmethod
    def from_array(cls, values: npt.NDArray[Any], *, target: int, **figures: Any) -> StoredAttribution:
        return cls(**cls.encoded(values), target=target, **figures)


class ExplanationSummary(BaseModel):
    """What lists show of an explanation. Its numbers are finite: a stored ``NaN`` reads as unreadable."""

    model_config = ConfigDict(allow_inf_nan=False)

    model: str
    model_version: str
    request_id: str
    status: ExplanationStatus
    reasons: tuple[Reason, ...]
    predicted: int
    confidence: float
    cohort: dict[str, str] = Field(default_factory=dict)
    timestamp: float
    label: int | None = None
    methods: tuple[str, ...] = ()
    trust: dict[str, MethodTrust] = Field(default_factory=dict)
    """Each method's verdict and figures towards the prediction, copied from the detail so that lists and the
    per-method aggregate read no maps."""

    @classmethod
    def queued(cls, event: SampledEvent) -> ExplanationSummary:
        return cls(
            model=event.model,
            model_version=event.model_version,
            request_id=event.request_id,
            status="queued",
            reasons=event.reasons,
            predicted=event.predicted,
            confidence=event.confidence,
            cohort=event.cohort,
            timestamp=event.timestamp,
            label=event.label,
        )


class ExplanationDetail(BaseModel):
    attributions: dict[str, StoredAttribution] = Field(default_factory=dict)
    agreement: float | None = None
    """Mean pairwise Spearman correlation of the methods' absolute maps."""
    error: str | None = None
    input: InputTensor | None = None
    explained_at: float | None = None
    feature_names: tuple[str, ...] | None = None
    """Names of a flat input's features, from the model's attribution config (for the bar chart)."""
    layers: list[LayerStats] = Field(default_factory=list)
    """The inspected layers' outputs on this input (``sampler.layers``)."""
    feature_maps: dict[str, FeatureMaps] = Field(default_factory=dict)
    """A few channels of some layers' outputs, by layer name; drawn on request, not in the JSON detail."""


class ExplanationRecord(BaseModel):
    summary: ExplanationSummary
    detail: ExplanationDetail = Field(default_factory=ExplanationDetail)


class SanityFigure(BaseModel):
    """Latest randomisation sanity check of one method of a model (Adebayo et al. 2018)."""

    similarity: float
    """The larger of the signed and the |map| Spearman correlation, over each input's support, of the maps from
    the trained and a randomised model (``attribution_workers.trust.RandomisationCheck``); high is bad."""
    flagged: bool
    samples: int
    """Inputs whose pair of maps the figure averages."""
    checked_at: float
    model_digest: str | None = None
    """The checked model's identity (the worker's ``LoadedModel.digest``); a worker judges its maps only with
    figures of its own model (None: a figure of an older worker, judged by nobody)."""


class ExplanationQuery(BaseModel):
    model: str = Field(pattern=MODEL_PATTERN)
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    reason: Reason | None = None
    cohort: tuple[str, str] | None = None
    predicted: int | None = Field(default=None, ge=0)
    since: float | None = None
    until: float | None = None
    limit: int = Field(default=50, ge=1, le=500)
    cursor: tuple[float, str] | None = None
    """(timestamp, request_id) of the last item of the previous page."""


class ExplanationPage(BaseModel):
    items: list[ExplanationSummary]
    next_cursor: tuple[float, str] | None = None
