"""Temperature scaling (Guo et al., ICML 2017): would one scalar fix this model's calibration?

The probability vectors are taken as logits through their logarithm (``z = log p``; softmax of
``z`` gives ``p`` back), and the scaled probabilities are ``softmax(z / T)``. ``T`` minimises the
mean negative log-likelihood of the labels over ``T`` in :data:`BOUNDS`. The NLL is convex in
``1 / T`` (a log-sum-exp of linear functions minus a linear one), hence unimodal in ``log T``, so
a bounded Brent search on ``log T`` finds its minimum; the bounds themselves are checked too.
``T > 1`` softens an over-confident model, ``T < 1`` sharpens an under-confident one; scaling
never changes the predicted class, so accuracy stays the same and only the confidences move.

A ``T`` at a bound says the window cannot pin it down (no errors at all, say: the NLL keeps
falling as ``T`` shrinks). Zero probabilities are clipped to the smallest positive float before
the logarithm. The feed carries probability vectors only for models with few classes (the
sidecar's ``brier_max_classes``); without them there is no temperature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from monitors.calibration import DEFAULT_BINS, compute_calibration
from monitors.records import LabelledPrediction

BOUNDS = (0.05, 20.0)
"""Range of temperatures searched."""
MIN_LABELLED = 30
"""Fewest labelled probability vectors a temperature is fitted on."""
_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True, slots=True)
class TemperatureFit:
    temperature: float
    ece_before: float
    ece_after: float
    """ECE of the same predictions after scaling (same bins as :mod:`monitors.calibration`)."""
    nll_before: float
    nll_after: float
    count: int
    """Labelled probability vectors the fit used."""


def logits_of(probabilities: ArrayLike) -> NDArray[np.float64]:
    """``log p`` of an ``(N, K)`` matrix of probability vectors (zeros clipped to the smallest float)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, K) with N >= 1 and K >= 2, got {probs.shape}")
    if not np.all((probs >= 0.0) & (probs <= 1.0)):
        raise ValueError("probabilities must lie in [0, 1]")
    return np.asarray(np.log(np.maximum(probs, _TINY)), dtype=np.float64)


def scale(probabilities: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """``softmax(log p / T)`` of each row."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return np.asarray(np.exp(log_softmax(logits_of(probabilities) / temperature, axis=1)), dtype=np.float64)


def nll(logits: NDArray[np.float64], labels: NDArray[np.int64], temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    return _Nll(logits, labels)(temperature)


class _Nll:
    """The NLL as a function of ``T``, with what does not depend on ``T`` computed once: with ``s = z - max z``
    per row (all ``<= 0``, so nothing overflows), ``NLL(T) = mean(log sum exp(s / T) - s_label / T)``."""

    def __init__(self, logits: NDArray[np.float64], labels: NDArray[np.int64]) -> None:
        self._shifted = logits - logits.max(axis=1, keepdims=True)
        self._label_mean = float(np.mean(self._shifted[np.arange(labels.size), labels]))

    def __call__(self, temperature: float) -> float:
        sums = np.exp(self._shifted / temperature).sum(axis=1)  # >= 1: the row's maximum gives exp(0)
        return float(np.mean(np.log(sums)) - self._label_mean / temperature)


def fit_temperature(
    probabilities: ArrayLike, labels: ArrayLike, *, min_labelled: int = MIN_LABELLED, n_bins: int = DEFAULT_BINS
) -> TemperatureFit | None:
    """The NLL-minimising temperature of labelled probability vectors; ``None`` with fewer than ``min_labelled``."""
    logits = logits_of(probabilities)
    true = np.asarray(labels, dtype=np.int64)
    if true.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {true.shape}")
    if true.min() < 0 or true.max() >= logits.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]})")
    if true.size < min_labelled:
        return None
    temperature = _minimise(logits, true)
    predicted = logits.argmax(axis=1)
    before = np.exp(log_softmax(logits, axis=1)).max(axis=1)
    after = np.exp(log_softmax(logits / temperature, axis=1)).max(axis=1)
    return TemperatureFit(
        temperature=temperature,
        ece_before=compute_calibration(confidence=before, predicted=predicted, labels=true, n_bins=n_bins).ece,
        ece_after=compute_calibration(confidence=after, predicted=predicted, labels=true, n_bins=n_bins).ece,
        nll_before=nll(logits, true, 1.0),
        nll_after=nll(logits, true, temperature),
        count=int(true.size),
    )


def temperature_of(records: Sequence[LabelledPrediction], *, min_labelled: int = MIN_LABELLED) -> TemperatureFit | None:
    """:func:`fit_temperature` of the labelled predictions that carry a probability vector.

    As in :func:`monitors.calibration.calibration_of`, the vectors used are those of the length of
    the first one seen that cover their label; ``None`` when fewer than ``min_labelled`` remain.
    """
    width = next((r.probabilities.size for r in records if r.probabilities is not None), 0)
    usable = [
        r for r in records if r.probabilities is not None and r.probabilities.size == width and 0 <= r.label < width
    ]
    if width < 2 or len(usable) < min_labelled:
        return None
    probabilities = np.stack([r.probabilities for r in usable if r.probabilities is not None])
    return fit_temperature(np.clip(probabilities, 0.0, 1.0), [r.label for r in usable], min_labelled=min_labelled)


def _minimise(logits: NDArray[np.float64], labels: NDArray[np.int64]) -> float:
    low, high = math.log(BOUNDS[0]), math.log(BOUNDS[1])
    objective = _Nll(logits, labels)
    found = minimize_scalar(
        lambda log_t: objective(math.exp(log_t)), bounds=(low, high), method="bounded", options={"xatol": 1e-6}
    )
    candidates = [float(found.x), low, high]  # Brent never evaluates the bounds themselves
    return math.exp(min(candidates, key=lambda log_t: objective(math.exp(log_t))))
