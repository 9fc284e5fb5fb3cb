"""The explanation record format: what a worker stores for a sampled event and what the API serves.

Typed models only (pydantic, JSON in Redis); :mod:`sampler.explanations` stores and indexes them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.codec import ScaledHalf
from common.names import MODEL_PATTERN, VERSION_PATTERN
from sampler.contract import InputTensor, SampledEvent
from sampler.layers import FeatureMaps, LayerStats
from sampler.policy import Reason
from sampler.verdicts import MethodTrust, Verdict

ExplanationStatus = Literal["queued", "done", "failed"]
ConfidenceCheck = Literal["passed", "failed", "skipped"]
"""The worker's comparison of its model's probability of the reported class with the server's."""
Mismatch = Literal["class", "confidence"]
"""Why the worker's model is not the server's: another class, or the same class at another confidence."""


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


class WorkerPrediction(BaseModel):
    """What the attribution worker's own model makes of the input, beside what the model server reported.

    The maps explain the reported class (``ExplanationSummary.predicted``, what the engineer asks about) on the
    worker's copy of the model. When that copy is not the server's model (version skew between server and worker,
    or other weights), the maps and their deletion figures describe a model that did not serve the prediction,
    and every map of the explanation is *not trusted* (``attribution_workers.verdict``). Two checks see it:
    the worker's model predicts another class (``mismatch`` ``"class"``), or it predicts the reported class at
    another confidence than the server reported (``"confidence"``: same class, different function).
    """

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    predicted: int
    """The worker's model's top class on this input."""
    probability: float
    """The worker's model's softmax probability of the reported class, the class the maps explain."""
    top_probability: float
    """The worker's model's softmax probability of its own top class (``predicted``)."""
    matches: bool
    """Whether the worker's model agrees with the server; ``False`` when either check fails (``mismatch`` says
    which)."""
    reported_probability: float | None = None
    """The server's probability of the reported class, which ``probability`` is compared with: the sampled
    event's ``confidence`` (its top-1 probability, the softmax of its logits taken by the sidecar at ingest when
    it sent logits). ``None`` when the event carried none usable (``confidence_check`` is then ``"skipped"``)
    and in records stored before the check."""
    confidence_check: ConfidenceCheck | None = None
    """The confidence check: ``"failed"`` when ``probability`` and ``reported_probability`` differ by more than
    the worker's ``prediction_confidence_tolerance``; ``"skipped"`` when the event carried no usable probability
    (not a pass: the worker could not compare); ``None`` in records stored before the check."""
    mismatch: Mismatch | None = None
    """Why ``matches`` is ``False``: ``"class"`` when ``probability`` is below ``top_probability`` by more than
    the worker's ``prediction_tie_tolerance`` (another class; a near tie, two classes within float error or
    half-precision serving's rounding, is not a disagreement), else ``"confidence"`` (the same class at another
    confidence). ``None`` when it matches. Records stored before the confidence check read ``"class"`` when
    they do not match: it was the only check then."""

    @model_validator(mode="before")
    @classmethod
    def _older_mismatch(cls, data: Any) -> Any:
        """A record stored before ``mismatch`` was kept failed the class check, the only one then."""
        if isinstance(data, dict) and data.get("matches") is False and "mismatch" not in data:
            return {**data, "mismatch": "class"}
        return data

    @property
    def confidence_gap(self) -> float | None:
        """``|probability - reported_probability|``; ``None`` when the server reported none."""
        return None if self.reported_probability is None else abs(self.probability - self.reported_probability)


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
    worker_prediction: WorkerPrediction | None = None
    """The worker's own model's prediction on the input (done records); ``None`` while queued, when failed and in
    records stored before it was kept."""

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


class MethodSettings(BaseModel):
    """The attribution settings an explanation's maps and figures were computed with (the worker's
    ``[models.NAME.attribution]`` then), so that a figure stays readable after the config changes. A method's
    settings are ``None`` when it did not run."""

    model_config = ConfigDict(frozen=True)

    fidelity_steps: int
    fidelity_random_orders: int
    ig_steps: int | None = None
    shap_samples: int | None = None
    """Gradient SHAP's and kernel SHAP's samples."""
    shap_stdev: float | None = None
    """Gradient SHAP's noise, in input units."""
    lime_samples: int | None = None
    lime_patch: int | None = None
    """The edge of LIME's square patches as used on this input shape (the config may leave it to the worker)."""
    occlusion_window: int | None = None
    gradcam_layer: str | None = None
    """The layer Grad-CAM's map is taken at."""


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
    settings: MethodSettings | None = None
    """How the maps were made; ``None`` when the explanation failed, and in records stored before it was kept."""


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
    """Inputs whose pair of maps the figure averages: the fewest any one randomised copy measured (an input whose
    trained or randomised map ranks nothing on its support is left out)."""
    checked_at: float
    model_digest: str | None = None
    """The checked model's identity (the worker's ``LoadedModel.digest``); a worker judges its maps only with
    figures of its own model (None: a figure of an older worker, judged by nobody)."""
    conclusive: bool = True
    """``samples`` reached the checking worker's ``sanity_min_pairs``. An inconclusive figure is stored and shown
    but judges no map (its ``flagged`` is the raw comparison with the limit). Figures of older workers read as
    conclusive here; the judging worker also requires ``samples >= sanity_min_pairs`` itself."""
    seeds: tuple[int, ...] = ()
    """The seeds of the randomised copies of the model the figure averages over (one draw of re-drawn weights
    each); empty in figures of older workers, which drew one copy with seed 0."""
    seed_similarities: tuple[float | None, ...] = ()
    """The similarity of each draw, in the order of ``seeds`` (``None``: that draw measured no pair)."""
    similarity_spread: float | None = None
    """Largest minus smallest of ``seed_similarities``: how much the figure depends on the draw of random weights;
    ``None`` with fewer than two measured draws and in figures of older workers."""


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
