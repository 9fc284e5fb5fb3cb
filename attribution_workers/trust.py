"""How far to trust attributions: deletion fidelity, agreement between methods, and the model-randomisation check.

Agreement between methods uses Spearman's correlation of the *absolute* attribution values
(importance regardless of sign), computed per input over every input element; the
randomisation check compares maps over the input's support only, signed and absolute
(:class:`RandomisationCheck`). A map that is constant (e.g. a Grad-CAM map of zeros) or not
a number carries no ranking: it agrees and disagrees with nothing, so its pairs are left out
of the agreement between methods (a 0 there would pull the other methods' agreement down)
and of the randomisation check (a 0 there would count as evidence that the method follows
the weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from attribution_workers.errors import AttributionError
from attribution_workers.explainer import Explanation, stack_maps
from attribution_workers.loader import LoadedModel
from attribution_workers.methods import MethodName
from sampler.explanation_records import Fidelity


def spearman_rows(first: ArrayLike, second: ArrayLike, *, constant: float = 0.0) -> NDArray[np.float64]:
    """Spearman correlation of each row of ``first`` ``[B, N]`` with the same row of ``second`` (ties averaged);
    ``constant`` where either row is constant (no ranking to correlate)."""
    ranks = [rankdata(np.asarray(values, dtype=np.float64), axis=1) for values in (first, second)]
    if ranks[0].shape != ranks[1].shape or ranks[0].ndim != 2:
        raise AttributionError(f"need two [B, N] arrays of one shape, got {ranks[0].shape} and {ranks[1].shape}")
    a, b = (r - r.mean(axis=1, keepdims=True) for r in ranks)
    numerator = (a * b).sum(axis=1)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    correlation = np.divide(numerator, denominator, out=np.full_like(numerator, constant), where=denominator > 0)
    clipped: NDArray[np.float64] = np.clip(correlation, -1.0, 1.0)
    return clipped


def deletion_fidelity(
    model: LoadedModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    attributions: ArrayLike,
    *,
    steps: int = 16,
    random_orders: int = 3,
    seeds: Sequence[int] | None = None,
    rows_per_pass: int = 4096,
) -> list[Fidelity | None]:
    """Deletion curves (Petsiuk et al. 2018) of a batch, one :class:`Fidelity` per input.

    Input elements are set to the model's baseline in ``steps`` equal steps, in order of
    decreasing signed attribution (ties broken at random), and the softmax probability of
    the target is read after each step. The area uses the deleted fraction as x, so it
    lies in [0, 1]. The same is done for ``random_orders`` random orders of the input's
    *support* (the elements that differ from the baseline), the rest after them: deleting an
    element already at the baseline changes nothing, so random orders of every element
    wasted about half their steps on a digit, and any map that merely put the ink first beat
    them. The reference is "knows where the input is, nothing more".
    Each row draws its tie-breaks and random orders from its own generator, seeded by
    ``seeds`` (one per row, e.g. from the request id; default: the row's index), so an input
    gets the same orders in any batch and different inputs get different ones.
    A constant map (e.g. a Grad-CAM map of zeros) orders nothing: its order would be the random
    tie-breaks alone, a coin flip against the random orders, so it gets ``None`` (not measured); so does an input
    equal to the baseline everywhere, where deleting changes nothing and every curve is the same.
    """
    flat = inputs.to(device=model.device, dtype=torch.float32).reshape(len(inputs), -1)
    scores = np.asarray(attributions, dtype=np.float64).reshape(len(inputs), -1)
    seeds = range(len(flat)) if seeds is None else seeds
    if scores.shape != flat.shape or targets.shape != (len(flat),) or not len(flat) or min(steps, random_orders) < 1:
        raise AttributionError(
            f"need B >= 1 inputs, B targets, attributions shaped like the inputs {tuple(inputs.shape)} and "
            f"steps, random_orders >= 1; got {tuple(targets.shape)}, {np.shape(attributions)}, {steps}, {random_orders}"
        )
    if len(seeds) != len(flat):
        raise AttributionError(f"need one seed per input, got {len(seeds)} for {len(flat)}")
    support = (flat != model.baseline.reshape(1, -1)).cpu().numpy()
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * scores.shape[1]).astype(np.int64)
    areas = np.stack(
        [
            _area(_curves(model, flat, targets, order=order, counts=counts, rows_per_pass=rows_per_pass), counts)
            for order in _orders(scores, support, random_orders=random_orders, seeds=seeds)
        ]
    )
    unmeasurable = (np.ptp(scores, axis=1) == 0) | ~support.any(axis=1)  # a constant map; nothing to delete
    return [
        None
        if unmeasurable[row]
        else Fidelity(deletion_auc=float(areas[0, row]), random_auc=float(areas[1:, row].mean()))
        for row in range(len(flat))
    ]


def _orders(
    scores: NDArray[np.float64], support: NDArray[np.bool_], *, random_orders: int, seeds: Sequence[int]
) -> list[NDArray[np.int64]]:
    """Deletion orders ``[B, N]`` of every row: by decreasing score (random tie-breaks), then ``random_orders``
    random orders of the row's support followed by its other elements."""
    rows = [
        _row_orders(row, inside, random_orders, np.random.default_rng(seed))
        for row, inside, seed in zip(scores, support, seeds, strict=True)
    ]
    return [np.stack([orders[k] for orders in rows]) for k in range(random_orders + 1)]


def _row_orders(
    scores: NDArray[np.float64], support: NDArray[np.bool_], random_orders: int, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    by_score = np.lexsort((rng.random(scores.shape), -scores)).astype(np.int64)
    inside, outside = np.flatnonzero(support), np.flatnonzero(~support)
    return [by_score] + [np.concatenate([rng.permutation(inside), outside]) for _ in range(random_orders)]


def _curves(
    model: LoadedModel,
    flat: torch.Tensor,
    targets: torch.Tensor,
    *,
    order: NDArray[np.int64],
    counts: NDArray[np.int64],
    rows_per_pass: int,
) -> NDArray[np.float64]:
    """Target probability ``[B, len(counts)]`` after deleting the first ``counts`` elements of ``order``."""
    positions = torch.from_numpy(np.argsort(order, axis=1)).to(flat.device)
    thresholds = torch.from_numpy(counts).to(flat.device)
    baseline = model.baseline.reshape(1, 1, -1)
    targets = targets.to(device=flat.device, dtype=torch.int64)
    probabilities = []
    for rows in _row_slices(len(flat), max(1, rows_per_pass // len(counts))):
        deleted = positions[rows, None, :] < thresholds[None, :, None]
        perturbed = torch.where(deleted, baseline, flat[rows, None, :])
        with torch.no_grad():
            logits = model.module(perturbed.reshape(-1, *model.input_shape)).reshape(len(perturbed), len(counts), -1)
        chosen = targets[rows, None, None].expand(-1, len(counts), 1)
        probabilities.append(logits.softmax(dim=-1).gather(-1, chosen).squeeze(-1))
    curves: NDArray[np.float64] = torch.cat(probabilities).double().cpu().numpy()
    return curves


def _area(curves: NDArray[np.float64], counts: NDArray[np.int64]) -> NDArray[np.float64]:
    widths = np.diff(counts / counts[-1])
    areas: NDArray[np.float64] = ((curves[:, 1:] + curves[:, :-1]) / 2 * widths).sum(axis=1)
    return areas


def _row_slices(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


@dataclass(frozen=True)
class Agreement:
    """Pairwise rank agreement between methods, averaged over inputs."""

    methods: tuple[MethodName, ...]
    matrix: NDArray[np.float64]
    """``[M, M]`` mean Spearman of |attribution|, symmetric, 1 on the diagonal; rows and columns follow ``methods``.
    NaN for a pair with no input where both maps rank something."""

    @property
    def mean(self) -> float | None:
        """Mean over the distinct pairs of methods that were measured, in [-1, 1]; ``None`` when none was."""
        upper = np.triu_indices(len(self.methods), k=1)
        return _mean_measured(self.matrix[upper])

    def of(self, method: MethodName) -> float | None:
        """Mean agreement of ``method`` with each of the other methods, in [-1, 1]; ``None`` when its map ranked
        nothing (or no other one did)."""
        row = self.methods.index(method)
        return _mean_measured(np.delete(self.matrix[row], row))


def _mean_measured(values: NDArray[np.float64]) -> float | None:
    measured = values[~np.isnan(values)]
    return float(measured.mean()) if measured.size else None


def agreement(explanations: Sequence[Explanation]) -> Agreement:
    """How similarly the methods of these explanations rank input elements (they must share >= 2 methods)."""
    methods = explanations[0].methods if explanations else ()
    if len(methods) < 2 or any(explanation.methods != methods for explanation in explanations):
        raise AttributionError("agreement needs explanations that all have the same two or more methods")
    flat = {method: np.abs(stack_maps(explanations, method)).reshape(len(explanations), -1) for method in methods}
    matrix = np.eye(len(methods))
    for i, first in enumerate(methods):
        for j in range(i + 1, len(methods)):
            value = _mean_measured(spearman_rows(flat[first], flat[methods[j]], constant=np.nan))
            matrix[i, j] = matrix[j, i] = np.nan if value is None else value
    return Agreement(methods=methods, matrix=matrix)


class ExplainsModel(Protocol):
    """What the randomisation check needs of an explainer (:class:`~attribution_workers.explainer.Explainer` fits)."""

    @property
    def model(self) -> LoadedModel: ...

    def with_model(self, model: LoadedModel) -> ExplainsModel: ...

    def explain(self, inputs: torch.Tensor, targets: torch.Tensor) -> list[Explanation]: ...


@dataclass(frozen=True)
class RandomisationCheck:
    """Model-randomisation sanity check (Adebayo et al. 2018) of one method.

    A method whose maps barely change when the model's weights are replaced by random
    ones does not explain what the model learned (it may be an edge detector). The maps are
    compared per input over its *support*, the elements that differ from the baseline:
    elsewhere Integrated Gradients is exactly 0 and occlusion and Gradient SHAP nearly so,
    whatever the weights, so over every element two maps that share nothing but the input's
    layout correlated highly (independent noise on a digit's ink: 0.85, flagged). They are
    compared with their signs and without, and the method is flagged when either is high,
    i.e. on the larger of the two (:attr:`similarity`): on a randomised network gradient
    signs are close to random, so the signed figure alone would flag almost nothing, while a
    magnitude pattern that survives the re-drawn weights is the insensitivity the check is
    for (a map whose sign the weights flip keeps its |map| exactly: flagged).

    One draw of random weights is one sample of a noisy figure (Grad-CAM on 16 digits, seeds
    0-3: -0.12, 0.30, 0.23, -0.10), so the check may average several draws (``seeds``): the
    figures are means over the draws that measured a pair, and :attr:`draws` keeps each draw's.
    """

    method: MethodName
    absolute: float | None
    """Mean Spearman of |attribution| over the support, trained vs randomised, over the measured inputs (averaged
    over the draws)."""
    signed: float | None
    """Mean Spearman of the signed attributions over the support, over the same inputs (averaged over the draws)."""
    max_similarity: float
    inputs: int
    """Inputs the check explained."""
    measured: int
    """Of them, those whose trained and randomised maps both rank something on the support (at least two elements,
    not constant, no NaN): the pairs the figures average; with several draws, the fewest any draw measured."""
    seeds: tuple[int, ...] = (0,)
    """The seed of each randomised copy of the model."""
    draws: tuple[float | None, ...] = ()
    """Each draw's similarity (the larger of its two figures), in the order of ``seeds``; ``None``: that draw
    measured no pair."""

    @property
    def similarity(self) -> float | None:
        """The figure the flag is decided on, in [-1, 1]: the larger of :attr:`absolute` and :attr:`signed`
        (high when either is); ``None`` when no input was measured."""
        if self.absolute is None or self.signed is None:
            return None
        return max(self.absolute, self.signed)

    @property
    def spread(self) -> float | None:
        """Largest minus smallest similarity of the draws that measured a pair; ``None`` with fewer than two."""
        measured = [value for value in self.draws if value is not None]
        return max(measured) - min(measured) if len(measured) >= 2 else None

    @property
    def flagged(self) -> bool:
        """True when ``similarity`` reaches ``max_similarity``: the method is insensitive to the model."""
        return self.similarity is not None and self.similarity >= self.max_similarity


def randomisation_check(
    explainer: ExplainsModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    seeds: Sequence[int] = (0,),
    max_similarity: float = 0.5,
) -> list[RandomisationCheck]:
    """Compare each method's maps of ``inputs`` (a few recent ones) before and after re-drawing every weight, once
    per seed of ``seeds`` (each a randomised copy of the model; the trained maps are explained once). Cost: one
    explanation of ``inputs`` per method, plus one per seed."""
    if not seeds:
        raise AttributionError("the randomisation check needs at least one seed")
    trained = explainer.explain(inputs, targets)
    baseline = explainer.model.baseline
    support = (inputs.to(baseline.device) != baseline).reshape(len(inputs), -1).cpu().numpy()
    per_seed = [_compared(trained, _randomised(explainer, seed).explain(inputs, targets), support) for seed in seeds]
    checks = []
    for method in trained[0].methods:
        draws = [found[method] for found in per_seed]
        absolute = [a for a, _, _ in draws if a is not None]
        signed = [s for _, s, _ in draws if s is not None]
        checks.append(
            RandomisationCheck(
                method=method,
                absolute=float(np.mean(absolute)) if absolute else None,
                signed=float(np.mean(signed)) if signed else None,
                max_similarity=max_similarity,
                inputs=len(inputs),
                measured=min(count for _, _, count in draws),
                seeds=tuple(seeds),
                draws=tuple(None if a is None or s is None else max(a, s) for a, s, _ in draws),
            )
        )
    return checks


def _randomised(explainer: ExplainsModel, seed: int) -> ExplainsModel:
    return explainer.with_model(explainer.model.randomised(seed=seed))


def _compared(
    trained: Sequence[Explanation], randomised: Sequence[Explanation], support: NDArray[np.bool_]
) -> dict[MethodName, tuple[float | None, float | None, int]]:
    """Per method: the mean |map| and signed Spearman over the support of the measured pairs, and their number."""
    found = {}
    for method in trained[0].methods:
        before = stack_maps(trained, method).reshape(len(trained), -1).astype(np.float64)
        after = stack_maps(randomised, method).reshape(len(randomised), -1).astype(np.float64)
        absolute = _spearman_on(np.abs(before), np.abs(after), support)
        signed = _spearman_on(before, after, support)
        both = ~np.isnan(absolute) & ~np.isnan(signed)
        found[method] = (_mean_measured(absolute[both]), _mean_measured(signed[both]), int(np.count_nonzero(both)))
    return found


def _spearman_on(
    first: NDArray[np.float64], second: NDArray[np.float64], where: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Spearman of each row pair over the row's ``where`` elements; NaN where that ranks nothing."""
    return np.array(
        [
            spearman_rows(a[None, chosen], b[None, chosen], constant=np.nan)[0]
            if np.count_nonzero(chosen) >= 2
            else np.nan
            for a, b, chosen in zip(first, second, where, strict=True)
        ],
        dtype=np.float64,
    )
