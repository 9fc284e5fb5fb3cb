"""Accuracy before the labels arrive: average thresholded confidence (ATC, Garg et al., ICLR 2022).

On labelled predictions, pick the confidence threshold ``t`` so that the share of them with
confidence below ``t`` equals their error rate; the estimated accuracy of new traffic is then the
share of its predictions with confidence ``>= t``. The score is the top-1 probability (ATC-MC):
every record of the feed carries it, the probability vector only some do.

Choice of ``t`` on ``n`` labelled predictions with ``e`` errors: the candidates are each distinct
confidence ``u`` (with ``below(u)`` = how many labelled confidences are ``< u``) and one threshold just
above the largest confidence (``below = n``). The chosen candidate minimises ``|below - e|``, which is
exactly the gap between the estimate on the labelled data itself and its measured accuracy (times
``n``). Without ties at the boundary the gap is 0 and ``t`` is the ``(e+1)``-th smallest confidence.
Ties in confidence can make an exact match impossible (a model whose top-1 probability saturates at
1.0 on right and wrong answers alike); ties in the gap go to the higher threshold (the lower, more
cautious estimate). The fit says how far off it is on its own labelled predictions
(:attr:`AtcFit.fit_gap`), so a reader can tell such a threshold from one that fits.

Edge cases: no errors gives ``t`` = the smallest labelled confidence (new predictions less confident
than any labelled one count as errors); all errors gives ``t`` just above the largest (only new
predictions more confident than every labelled one count as right, possibly none: ``t`` may exceed 1).
Below :data:`MIN_LABELLED` labelled predictions nothing is fitted: the threshold would be one of a
handful of points and the estimate mostly noise.

ATC assumes the shift leaves the link between confidence and correctness alone; it is an estimate,
not a measurement, and reads best beside the measured accuracy once labels do arrive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitors.cohorts import ALL
from monitors.records import LabelledPrediction

MIN_LABELLED = 30
"""Fewest labelled predictions a threshold is fitted on."""


@dataclass(frozen=True, slots=True)
class AtcFit:
    """A fitted ATC threshold and what it was fitted on."""

    threshold: float
    fitted_on: int
    """Labelled predictions behind the threshold."""
    errors: int
    """Of them, how many were wrong."""
    fit_gap: float = 0.0
    """The estimate on those labelled predictions minus their measured accuracy: 0 unless tied confidences
    made an exact threshold impossible; far from 0, the estimate cannot be trusted on new traffic either."""

    def estimate(self, confidence: ArrayLike) -> float:
        """Estimated accuracy of predictions with these top-1 probabilities: the share ``>= threshold``."""
        conf = _confidence(confidence)
        return float(np.mean(conf >= self.threshold))


@dataclass(frozen=True, slots=True)
class CohortEstimate:
    """The ATC estimate of one (model version, cohort slice)."""

    version: str
    cohort: str
    estimated_accuracy: float
    predictions: int
    """Recent predictions (labelled or not) the estimate is the share of."""
    fit: AtcFit
    fitted_cohort: str
    """Slice whose labelled predictions gave the threshold: the cohort's own, or ``all`` when it has too few."""


def atc_threshold(confidence: ArrayLike, correct: ArrayLike) -> float:
    """The ATC threshold of labelled predictions (see the module docstring for ties and edge cases)."""
    conf = _confidence(confidence)
    right = np.asarray(correct, dtype=bool)
    if right.shape != conf.shape:
        raise ValueError(f"correct must have the shape of confidence {conf.shape}, got {right.shape}")
    errors = int(conf.size - right.sum())
    ordered = np.sort(conf)
    candidates = np.append(np.unique(ordered), np.nextafter(ordered[-1], np.inf))
    below = np.searchsorted(ordered, candidates, side="left")
    gap = np.abs(below - errors)
    best = int(np.flatnonzero(gap == gap.min())[-1])  # ties go to the higher threshold
    return float(candidates[best])


def fit_atc(confidence: ArrayLike, correct: ArrayLike, *, min_labelled: int = MIN_LABELLED) -> AtcFit | None:
    """The threshold fitted on labelled predictions; ``None`` with fewer than ``min_labelled``."""
    if min_labelled < 1:
        raise ValueError(f"min_labelled must be at least 1, got {min_labelled}")
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.size < min_labelled:
        return None
    right = np.asarray(correct, dtype=bool)
    threshold = atc_threshold(conf, right)
    errors = int(conf.size - right.sum())
    own_estimate = float(np.mean(conf >= threshold))
    return AtcFit(threshold, fitted_on=int(conf.size), errors=errors, fit_gap=own_estimate - float(right.mean()))


def fit_records(records: Sequence[LabelledPrediction], *, min_labelled: int = MIN_LABELLED) -> AtcFit | None:
    """:func:`fit_atc` of labelled predictions."""
    return fit_atc(
        [r.confidence for r in records], [r.predicted == r.label for r in records], min_labelled=min_labelled
    )


def estimate_cohorts(
    labelled: Mapping[tuple[str, str], Sequence[LabelledPrediction]],
    recent: Mapping[tuple[str, str], NDArray[np.float64]],
    *,
    min_labelled: int = MIN_LABELLED,
) -> list[CohortEstimate]:
    """An estimate per (version, cohort) with recent predictions and a threshold to apply.

    ``labelled`` holds the labelled window of each (version, cohort), ``recent`` the top-1
    probabilities of every recent prediction of each. A cohort's threshold is fitted on its own
    labelled predictions when it has ``min_labelled`` of them, else on its version's ``all`` slice.
    """
    fits = {key: fit_records(records, min_labelled=min_labelled) for key, records in labelled.items()}
    estimates = []
    for (version, cohort), confidence in sorted(recent.items()):
        fitted_cohort = cohort
        fit = fits.get((version, cohort))
        if fit is None:
            fitted_cohort, fit = ALL, fits.get((version, ALL))
        if fit is None or not len(confidence):
            continue
        estimates.append(
            CohortEstimate(
                version=version,
                cohort=cohort,
                estimated_accuracy=fit.estimate(confidence),
                predictions=len(confidence),
                fit=fit,
                fitted_cohort=fitted_cohort,
            )
        )
    return estimates


def _confidence(confidence: ArrayLike) -> NDArray[np.float64]:
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.ndim != 1 or conf.size == 0:
        raise ValueError(f"confidence must be a non-empty 1-D array, got shape {conf.shape}")
    if not np.all((conf >= 0.0) & (conf <= 1.0)):
        raise ValueError("confidence must lie in [0, 1]: pass top-1 probabilities, not logits")
    return conf
