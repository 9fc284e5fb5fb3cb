"""The confidence and margin histograms of a model's production sample beside its reference's (the overview's
distributions), computed from arrays: numpy only, run in a thread by
:class:`~monitors.fleet.projection_views.ModelViews`."""

from __future__ import annotations

import math
import time

import numpy as np
import numpy.typing as npt

from monitors.fleet.projection_sample import ReferenceSample, score_arrays
from monitors.fleet.views import Distributions, Histogram

BINS = 20


def distributions_of(
    model: str,
    confidence: npt.NDArray[np.float64],
    margin: npt.NDArray[np.float64],
    reference: ReferenceSample | None,
    *,
    owner: str = "",
) -> Distributions:
    """Confidence histograms on fixed edges [0, 1]; margin edges from 0 to the 99th percentile of both samples,
    rounded up to a whole number."""
    reference_confidence = None if reference is None else reference.confidence
    reference_margin = None if reference is None else reference.margin
    confidence_edges = decimal_edges(1, BINS)
    pooled = [m for m in (margin, reference_margin) if m is not None and len(m)]
    top = float(np.quantile(np.concatenate(pooled), 0.99)) if pooled else 1.0
    margin_edges = decimal_edges(max(1, math.ceil(top)), BINS)
    return Distributions(
        model=model,
        updated_at=time.time(),
        production_count=len(confidence),
        reference_count=0 if reference_confidence is None else len(reference_confidence),
        confidence=_histogram(confidence_edges, confidence, reference_confidence),
        margin=_histogram(margin_edges, margin, reference_margin),
        owner=owner,
    )


def decimal_edges(top: int, bins: int) -> npt.NDArray[np.float64]:
    """``bins + 1`` equal-width edges from 0 to ``top``, each the float nearest its decimal value (``k * top /
    bins``, one rounding): 0.7, where ``linspace`` gives 0.7000000000000001 and so put a confidence of exactly
    0.7, common among rounded probabilities, in the bin below."""
    return np.arange(bins + 1, dtype=np.float64) * top / bins


def bin_counts(edges: npt.NDArray[np.float64], values: npt.NDArray[np.float64]) -> tuple[int, ...]:
    """Counts of ``values`` in ``[edges[k], edges[k + 1])``, the last bin closed; values beyond an end count in
    the bin at that end. By comparison with the edges themselves, so a value equal to an edge opens its bin."""
    index = np.searchsorted(edges, values, side="right") - 1
    return tuple(int(c) for c in np.bincount(np.clip(index, 0, len(edges) - 2), minlength=len(edges) - 1))


def _histogram(
    edges: npt.NDArray[np.float64], production: npt.NDArray[np.float64], reference: npt.NDArray[np.float64] | None
) -> Histogram:
    return Histogram(
        edges=tuple(float(e) for e in edges),
        production=bin_counts(edges, production),
        reference=None if reference is None else bin_counts(edges, reference),
    )


def distributions_from_pairs(
    model: str, pairs: list[tuple[float, float]], reference: ReferenceSample | None, owner: str
) -> Distributions:
    """:func:`distributions_of` the production sample's ``(confidence, margin)`` pairs."""
    confidence, margin = score_arrays(pairs)
    return distributions_of(model, confidence, margin, reference, owner=owner)
