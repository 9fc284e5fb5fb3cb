"""LIME (Ribeiro et al. 2016) over superpixels: its settings, its feature mask, and the Captum call.

LIME switches groups of input elements ("superpixels") off, i.e. to the model's baseline, in
``samples`` random coalitions, and fits a weighted linear model from the coalitions to the
target logit; each group's coefficient is its attribution, spread over the group's elements.

Feature mask. An image's groups are a regular grid of square patches over the spatial
dimensions, every channel of a patch together (as occlusion covers channels whole). SLIC
superpixels would follow edges better, but need scikit-image, which the worker does not
depend on, and on small inputs (the digits are 8x8) a grid is as good as any segmentation.
The patch edge is sized from the input and the sample budget: the smallest edge that leaves
at most ``samples // 4`` patches, so the linear fit has at least four coalitions per
unknown (64 samples: 2x2 patches on an 8x8 image, 56x56 on a 224x224 one, 16 groups each;
256 samples on a 28x28 image: 4x4 patches, 49 groups). Flat (rank-1) inputs are tables:
every feature is its own group, since adjacent columns share no meaning; give at least four
samples per feature there.

Sampling is seeded: every row draws the same coalitions from a private generator, so a map
is the same alone or in any batch and does not depend on the process-wide RNG (which Captum's
surrogate still advances, initialising weights that the fit then overwrites).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr import Lime

from attribution_workers.errors import AttributionError
from attribution_workers.loader import LoadedModel

SAMPLES_PER_GROUP = 4
"""Coalitions per superpixel that the automatic patch edge leaves the linear fit, at least."""
RIDGE_ALPHA = 1.0
"""L2 penalty of the surrogate: keeps the fit defined when samples are few, shrinks coefficients a few percent.

(Captum's default, Lasso with alpha 0.01, zeroes every coefficient when the logit barely moves, e.g.
on a randomised model, which would make the sanity check pass for the wrong reason.)"""


@dataclass(frozen=True, kw_only=True)
class LimeSettings:
    """How LIME samples and groups one input."""

    samples: int = 64
    """Perturbed copies per input, each one model row: the cost, and the fit's data."""
    patch: int | None = None
    """Superpixel edge in input elements; ``None``: sized from the input and ``samples`` (module docstring)."""
    seed: int = 0
    """Seed of the coalitions (the same for every row)."""

    def __post_init__(self) -> None:
        if self.samples < 1 or (self.patch is not None and self.patch < 1):
            raise AttributionError(f"lime needs samples >= 1 and patch >= 1 or None, got {self.samples}, {self.patch}")

    def patch_edge(self, input_shape: tuple[int, ...]) -> int:
        """Edge of the square patches for inputs ``[C, *spatial]`` (1 for flat inputs)."""
        if len(input_shape) < 2:
            return 1
        spatial = input_shape[1:]
        if self.patch is not None:
            return min(self.patch, max(spatial))
        most = max(1, self.samples // SAMPLES_PER_GROUP)
        edge = 1
        while math.prod(math.ceil(size / edge) for size in spatial) > most and edge < max(spatial):
            edge += 1
        return edge

    def feature_mask(self, input_shape: tuple[int, ...]) -> torch.Tensor:
        """Group index of every input element, ``[1, *input_shape]`` int64, groups numbered from 0."""
        if len(input_shape) < 2:
            return torch.arange(math.prod(input_shape)).reshape(1, *input_shape)
        edge = self.patch_edge(input_shape)
        spatial = input_shape[1:]
        blocks = [torch.arange(size) // edge for size in spatial]
        counts = [math.ceil(size / edge) for size in spatial]
        index = torch.zeros(spatial, dtype=torch.int64)
        for axis, block in enumerate(blocks):
            view = [1] * len(spatial)
            view[axis] = len(block)
            index = index * counts[axis] + block.reshape(view)
        return index.expand(input_shape).reshape(1, *input_shape).contiguous()


def lime_maps(
    model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: LimeSettings, *, rows_per_pass: int
) -> torch.Tensor:
    """LIME maps ``[B, *input_shape]`` of ``inputs`` towards ``targets``, one surrogate fit per row."""
    mask = settings.feature_mask(model.input_shape).to(inputs.device)
    maps = []
    for row, target in zip(torch.split(inputs, 1), torch.split(targets, 1), strict=True):
        surrogate = SkLearnRidge(alpha=RIDGE_ALPHA)
        explainer = Lime(model.module, interpretable_model=surrogate, perturb_func=_coalitions(settings.seed))
        maps.append(
            explainer.attribute(
                row,
                baselines=model.baseline.unsqueeze(0),
                target=target,
                feature_mask=mask,
                n_samples=settings.samples,
                perturbations_per_eval=max(1, min(settings.samples, rows_per_pass)),
            )
        )
    return torch.cat(maps).detach()


def _coalitions(seed: int) -> Callable[..., Iterator[torch.Tensor]]:
    """Captum's perturbation function (a generator function): each group kept with probability 1/2, seeded."""

    def draw(original: torch.Tensor, **kwargs: Any) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        halves = torch.full((1, int(kwargs["num_interp_features"])), 0.5)
        while True:
            yield torch.bernoulli(halves, generator=generator).long().to(original.device)

    return draw
