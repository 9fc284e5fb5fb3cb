"""How far each attribution method can be trusted: the verdict stored with each map, and its aggregate.

The attribution worker judges every map it stores from three figures (see
``attribution_workers.verdict``) and writes a :class:`Verdict` with the map and a compact
:class:`MethodTrust` copy into the explanation's summary, so lists and the per-method
aggregate (:func:`method_trust_report`) never read maps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field


class Verdict(BaseModel):
    """One map's verdict; ``None`` in a part means not measured."""

    model_config = ConfigDict(frozen=True)

    trusted: bool | None = None
    """The method passes its sanity check, every other measured part passes and one of them measured the map itself
    (deletion or agreement); ``False`` when any part fails, and for every map of an event on which the worker's
    own model is not the server's: it predicts another class, or the reported class at another confidence
    (``ExplanationSummary.worker_prediction.mismatch``: version skew or other weights; the summary says so
    first); ``None`` otherwise (not judged: the sanity check alone judges the method, not the map, and before
    the method's first conclusive check the map parts alone judge nothing).
    Records stored before that rule may be ``True`` with ``passes_sanity`` ``None``."""
    passes_sanity: bool | None = None
    """The latest randomisation sanity check of this method on this model was not flagged; ``None`` before the
    first check and while the latest rests on fewer pairs of maps than the worker's ``sanity_min_pairs``
    (inconclusive)."""
    beats_random: bool | None = None
    """Deleting elements in the map's order lowers the target probability faster than random orders."""
    agrees: bool | None = None
    """The map ranks elements like the explanation's other methods (``None`` with one method)."""
    converges: bool | None = None
    """Integrated Gradients only: its convergence delta is a small enough share of the logit change it explains;
    ``None`` for the other methods and in records stored before it was kept (maps towards the label: before it
    was judged there too)."""
    summary: str = "Not judged."
    """One plain sentence: the verdict, then the parts with their figures."""
    min_agreement: float | None = None
    """The agreement threshold this verdict used (the worker's ``verdict_min_agreement``); ``None`` in records
    stored before it was kept."""


class MethodTrust(BaseModel):
    """One method's trust figures in one explanation (towards the prediction)."""

    model_config = ConfigDict(frozen=True)

    verdict: Verdict
    fidelity_gain: float | None = None
    """``random_auc - deletion_auc`` of the map's deletion curve."""
    agreement: float | None = None
    """Mean Spearman correlation of this map's |values| with each other method's, in [-1, 1]."""


class LatestSanity(BaseModel):
    """A method's latest randomisation sanity check on the model (the verdicts counted in
    ``sanity_pass_share`` used the check in force when each map was explained).

    The check passed only when it is ``conclusive`` and not ``flagged``. An inconclusive check (too few pairs of
    maps) neither passes nor fails: ``flagged`` false then means nothing, and no map is judged by it."""

    similarity: float
    """Similarity of the method's maps on the trained and on a randomised model, averaged over ``samples``
    inputs; high is bad (the maps ignore the model)."""
    flagged: bool
    """``similarity`` reached the configured limit. The raw comparison, also for an inconclusive check: read it
    only with ``conclusive`` true."""
    samples: int
    """Inputs whose pair of maps (trained and randomised model) the similarity averages."""
    conclusive: bool
    """The check measured at least the pairs of maps it needs (the checking worker's ``sanity_min_pairs``) to
    judge maps. False: it measured fewer (Grad-CAM's maps of zeros rank nothing and are left out), and its figure
    is shown but is neither a pass nor a failure. Figures stored by workers older than this flag read true."""
    checked_at: float


class MethodFigures(BaseModel):
    """One method's figures over a model's recent explanations."""

    method: str
    explanations: int
    """Explanations that ran this method."""
    sanity_checked: int
    """Of them, those explained after a sanity check of the method had run."""
    sanity_pass_share: float | None
    mean_fidelity_gain: float | None
    fidelity_count: int
    mean_agreement: float | None
    agreement_count: int
    trusted_share: float | None
    """Share of trusted verdicts among the judged verdicts (``trusted`` not ``None``) made after a sanity check of
    the method (``passes_sanity`` not ``None``): before its first check a map can be failed on its own figures but
    never trusted, so counting those verdicts biased the share low. ``None`` when there is none."""
    verdict_count: int
    """The verdicts ``trusted_share`` is over."""
    failed_before_sanity: int = 0
    """Verdicts made before any sanity check of the method (or on an inconclusive one) that failed on the map's
    own figures: not in ``trusted_share``."""
    latest_sanity: LatestSanity | None = None
    """``None`` before the method's first check on this model."""


class MethodTrustReport(BaseModel):
    """``GET /v1/explanations/{model}/methods``: per method, over the model's latest done explanations."""

    model: str
    explanations: int
    """Done explanations looked at (at most the requested limit)."""
    methods: list[MethodFigures] = Field(default_factory=list)
    """Sorted by method name."""


def method_trust_report(
    model: str, trusts: Sequence[dict[str, MethodTrust]], sanity: Mapping[str, LatestSanity] | None = None
) -> MethodTrustReport:
    """Aggregate the per-method trust of ``trusts`` (one dict per explanation, as in its summary), with each
    method's latest sanity figure from ``sanity``."""
    names = sorted({method for trust in trusts for method in trust})
    latest = sanity or {}
    return MethodTrustReport(
        model=model,
        explanations=len(trusts),
        methods=[
            _figures(method, [trust[method] for trust in trusts if method in trust], latest.get(method))
            for method in names
        ],
    )


def _figures(method: str, found: list[MethodTrust], latest: LatestSanity | None) -> MethodFigures:
    sanity = [t.verdict.passes_sanity for t in found if t.verdict.passes_sanity is not None]
    gains = [t.fidelity_gain for t in found if t.fidelity_gain is not None and math.isfinite(t.fidelity_gain)]
    agreements = [t.agreement for t in found if t.agreement is not None and math.isfinite(t.agreement)]
    after_sanity = [t.verdict for t in found if t.verdict.passes_sanity is not None]
    checked = [verdict.trusted for verdict in after_sanity if verdict.trusted is not None]
    unchecked = [t for t in found if t.verdict.trusted is False and t.verdict.passes_sanity is None]
    return MethodFigures(
        method=method,
        explanations=len(found),
        sanity_checked=len(sanity),
        sanity_pass_share=_share(sanity),
        mean_fidelity_gain=_mean(gains),
        fidelity_count=len(gains),
        mean_agreement=_mean(agreements),
        agreement_count=len(agreements),
        trusted_share=_share(checked),
        verdict_count=len(checked),
        failed_before_sanity=len(unchecked),
        latest_sanity=latest,
    )


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _mean(values: Iterable[float]) -> float | None:
    listed = list(values)
    return math.fsum(listed) / len(listed) if listed else None
