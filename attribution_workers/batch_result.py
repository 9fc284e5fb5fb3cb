"""What one batch of explanations gives besides its outcomes (times, trust figures, layer health, mismatch counts):
:func:`summarised` for a batch explained at once, :func:`merged` for one explained one event at a time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from attribution_workers.inspection_health import BaselineDraft, HealthSnapshot
from attribution_workers.methods import MethodName
from attribution_workers.outcomes import Outcome
from sampler.explanation_records import Fidelity, WorkerPrediction
from sampler.verdicts import MethodTrust


@dataclass
class BatchResult:
    outcomes: list[Outcome]
    seconds: dict[str, float] = field(default_factory=dict)
    fidelity_gain: dict[str, float] = field(default_factory=dict)
    agreement: float | None = None
    layer_health: list[HealthSnapshot] = field(default_factory=list)
    """Layer health after the batch of each model version in it, in order of first appearance (none when
    nothing is inspected): during a rollout a batch mixes versions, and each has its own windows."""
    inspection_seconds: float = 0.0
    """Wall time of the batch's hooked forward pass and its per-layer summaries."""
    inspection_failed: tuple[str, ...] = ()
    """Layers left out of the batch's inspection because their figures could not be taken (the worker counts them)."""
    new_baselines: dict[str, BaselineDraft] = field(default_factory=dict)
    """Per version, this runtime's own activation-shift baseline, complete and not stored yet (to store)."""
    prediction_mismatches: int = 0
    """Explained events on which the worker's model predicted another class than the server reported (the worker
    counts them); their maps are not trusted and left out of ``fidelity_gain`` and ``agreement``."""
    confidence_mismatches: int = 0
    """Explained events on which the worker's model predicted the reported class at another confidence than the
    server reported (counted apart from ``prediction_mismatches``; their maps are treated the same way)."""
    confidence_unchecked: int = 0
    """Explained events whose confidence could not be compared: no usable reported probability (logged)."""


class RowFigures(NamedTuple):
    """The trust figures of each event of a batch explained at once, by position."""

    fidelities: dict[MethodName, list[Fidelity | None]]
    """Deletion fidelity by method, one per event."""
    agreements: list[float | None]
    """Mean agreement between the methods (``None`` with one method)."""
    trusts: list[dict[str, MethodTrust]]
    """Each method's verdict and figures, by method."""


def summarised(
    outcomes: list[Outcome],
    predictions: Sequence[WorkerPrediction],
    figures: RowFigures,
    *,
    seconds: dict[str, float],
    layer_health: list[HealthSnapshot],
    inspection_seconds: float,
    inspection_failed: tuple[str, ...],
    new_baselines: dict[str, BaselineDraft],
) -> BatchResult:
    """The result of a batch explained at once: its events' fidelity and agreement averaged over those whose
    prediction the worker's model matches (fidelity over the maps that ranked something: a constant map has none),
    and their prediction mismatches counted."""
    agreeing = [i for i, prediction in enumerate(predictions) if prediction.matches]
    valid = [a for i in agreeing if (a := figures.agreements[i]) is not None and math.isfinite(a)]
    return BatchResult(
        outcomes,
        seconds=seconds,
        fidelity_gain={
            method: float(np.mean(gains))
            for method, found in figures.fidelities.items()
            if (gains := [f.gain for i in agreeing if (f := found[i])])
        },
        agreement=float(np.mean(valid)) if valid else None,
        layer_health=layer_health,
        inspection_seconds=inspection_seconds,
        inspection_failed=inspection_failed,
        new_baselines=new_baselines,
        prediction_mismatches=sum(prediction.mismatch == "class" for prediction in predictions),
        confidence_mismatches=sum(prediction.mismatch == "confidence" for prediction in predictions),
        confidence_unchecked=sum(prediction.confidence_check == "skipped" for prediction in predictions),
    )


def merged(parts: Sequence[BatchResult]) -> BatchResult:
    """The results of a batch explained one event at a time, as one: outcomes in order, times added, the trust
    figures averaged over the events that have them, each version's latest layer health. Keeping only the outcomes
    left such a batch out of the method timings, the trust gauges, layer health and baselines."""
    gains: dict[str, list[float]] = {}
    for part in parts:
        for method, gain in part.fidelity_gain.items():
            gains.setdefault(method, []).append(gain)
    agreements = [part.agreement for part in parts if part.agreement is not None]
    health = {snapshot.version: snapshot for part in parts for snapshot in part.layer_health}
    return BatchResult(
        [outcome for part in parts for outcome in part.outcomes],
        seconds={
            method: sum(part.seconds.get(method, 0.0) for part in parts)
            for method in dict.fromkeys(method for part in parts for method in part.seconds)
        },
        fidelity_gain={method: float(np.mean(values)) for method, values in gains.items()},
        agreement=float(np.mean(agreements)) if agreements else None,
        layer_health=list(health.values()),
        inspection_seconds=sum(part.inspection_seconds for part in parts),
        inspection_failed=tuple(dict.fromkeys(layer for part in parts for layer in part.inspection_failed)),
        new_baselines={version: draft for part in parts for version, draft in part.new_baselines.items()},
        prediction_mismatches=sum(part.prediction_mismatches for part in parts),
        confidence_mismatches=sum(part.confidence_mismatches for part in parts),
        confidence_unchecked=sum(part.confidence_unchecked for part in parts),
    )
