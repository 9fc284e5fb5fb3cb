"""The attribution methods: each runs Captum on a whole batch and returns maps shaped like the inputs.

Every function takes inputs ``[B, *input_shape]`` and int64 targets ``[B]`` on the model's
device and returns detached tensors on that device. ``gradient_shap`` and ``kernel_shap``
sample at random and are not seeded here (seeding would mean swapping process-wide RNG
state under other threads), so two runs differ by sampling noise. ``lime`` draws its
coalitions from a private seeded generator instead (:mod:`attribution_workers.lime`): deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from captum.attr import (
    GradientShap,
    IntegratedGradients,
    KernelShap,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
)

from attribution_workers.errors import AttributionError
from attribution_workers.lime import LimeSettings, lime_maps
from attribution_workers.loader import LoadedModel

MethodName = Literal["gradcam", "integrated_gradients", "occlusion", "saliency", "gradient_shap", "kernel_shap", "lime"]
METHOD_NAMES: tuple[MethodName, ...] = get_args(MethodName)

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}
"""Upsampling mode for Grad-CAM maps by number of spatial dimensions."""


@dataclass(frozen=True, kw_only=True)
class MethodSettings:
    """Knobs of the methods; see :class:`attribution_workers.explainer.Explainer` for each one's meaning."""

    ig_steps: int
    occlusion_window: int
    occlusion_stride: int
    shap_samples: int
    shap_stdev: float
    rows_per_pass: int
    lime: LimeSettings = field(default_factory=LimeSettings)
    """LIME's own settings (validated there)."""

    def __post_init__(self) -> None:
        counts = {name: value for name, value in vars(self).items() if isinstance(value, int)}
        too_small = {name: value for name, value in counts.items() if value < 1}
        if too_small or self.shap_stdev < 0:
            raise AttributionError(f"counts must be >= 1 and shap_stdev >= 0, got {too_small or self.shap_stdev}")


@dataclass(frozen=True)
class MethodOutput:
    """One method's maps for a batch."""

    values: torch.Tensor
    """``[B, *input_shape]``, detached, on the model's device."""
    deltas: torch.Tensor | None = None
    """Integrated Gradients' convergence delta ``[B]``, else None."""


Method = Callable[[LoadedModel, torch.Tensor, torch.Tensor, MethodSettings], MethodOutput]


def gradcam(model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: MethodSettings) -> MethodOutput:
    """Grad-CAM (ReLU of the gradient-weighted layer activations), upsampled to the input and copied over channels.

    A map is all zero where no region carries positive weighted evidence for the target
    (about one digits test image in six with the reference CNN).
    """
    layer = model.gradcam_layer
    spatial = tuple(inputs.shape[2:])
    if layer is None or len(spatial) not in _INTERPOLATION:
        raise AttributionError("gradcam needs a model with a Grad-CAM layer and inputs [B, C, *1-3 spatial dims]")
    cams = [
        LayerGradCam(model.module, layer).attribute(_needing_grad(part), target=part_targets, relu_attributions=True)
        for part, part_targets in _chunks(inputs, targets, settings.rows_per_pass)
    ]
    upsampled = LayerAttribution.interpolate(torch.cat(cams), spatial, interpolate_mode=_INTERPOLATION[len(spatial)])
    return MethodOutput(upsampled.detach().expand_as(inputs).contiguous())


def integrated_gradients(
    model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: MethodSettings
) -> MethodOutput:
    """Integrated Gradients from the model's baseline (Gauss-Legendre, ``ig_steps`` points) with convergence deltas."""
    values, deltas = IntegratedGradients(model.module).attribute(
        _needing_grad(inputs),
        baselines=model.baseline.unsqueeze(0),
        target=targets,
        n_steps=settings.ig_steps,
        internal_batch_size=max(settings.rows_per_pass, len(inputs)),
        return_convergence_delta=True,
    )
    return MethodOutput(values.detach(), deltas.detach())


def occlusion(
    model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: MethodSettings
) -> MethodOutput:
    """Drop in target score when a sliding window is set to the baseline.

    Rank-1 inputs are feature vectors and the window slides along them; otherwise the
    first dimension is channels, covered whole, and the window slides over the rest.
    """
    shape = model.input_shape
    spatial = shape if len(shape) == 1 else shape[1:]
    windows = tuple(min(settings.occlusion_window, size) for size in spatial)
    strides = tuple(min(settings.occlusion_stride, size) for size in spatial)
    if len(shape) > 1:
        windows, strides = (shape[0], *windows), (shape[0], *strides)
    values = Occlusion(model.module).attribute(
        inputs,
        sliding_window_shapes=windows,
        strides=strides,
        baselines=model.baseline.unsqueeze(0),
        target=targets,
        perturbations_per_eval=max(1, settings.rows_per_pass // len(inputs)),
    )
    return MethodOutput(values.detach())


def saliency(model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: MethodSettings) -> MethodOutput:
    """Absolute gradient of the target logit with respect to each input element."""
    values = [
        Saliency(model.module).attribute(_needing_grad(part), target=part_targets, abs=True)
        for part, part_targets in _chunks(inputs, targets, settings.rows_per_pass)
    ]
    return MethodOutput(torch.cat(values).detach())


def gradient_shap(
    model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: MethodSettings
) -> MethodOutput:
    """Expected gradients between the baseline and noisy inputs (``shap_samples`` draws, noise ``shap_stdev``)."""
    rows = max(1, settings.rows_per_pass // settings.shap_samples)
    values = [
        GradientShap(model.module).attribute(
            _needing_grad(part),
            baselines=model.baseline.unsqueeze(0),
            n_samples=settings.shap_samples,
            stdevs=settings.shap_stdev,
            target=part_targets,
        )
        for part, part_targets in _chunks(inputs, targets, rows)
    ]
    return MethodOutput(torch.cat(values).detach())


def kernel_shap(
    model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: MethodSettings
) -> MethodOutput:
    """Kernel SHAP with every input element a player, absent ones set to the baseline (one fit per row)."""
    explainer = KernelShap(model.module)
    values = [
        explainer.attribute(
            row,
            baselines=model.baseline.unsqueeze(0),
            target=row_target,
            n_samples=settings.shap_samples,
            perturbations_per_eval=max(1, min(settings.shap_samples, settings.rows_per_pass)),
        )
        for row, row_target in _chunks(inputs, targets, 1)
    ]
    return MethodOutput(torch.cat(values).detach())


def lime(model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, settings: MethodSettings) -> MethodOutput:
    """LIME over superpixels (a grid of patches; features of flat inputs), seeded; one ridge fit per row."""
    return MethodOutput(lime_maps(model, inputs, targets, settings.lime, rows_per_pass=settings.rows_per_pass))


METHODS: dict[MethodName, Method] = {
    "gradcam": gradcam,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
    "saliency": saliency,
    "gradient_shap": gradient_shap,
    "kernel_shap": kernel_shap,
    "lime": lime,
}


def _needing_grad(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf copy that requires grad (Captum warns when it has to switch that on itself)."""
    return inputs.detach().clone().requires_grad_(True)


def _chunks(inputs: torch.Tensor, targets: torch.Tensor, rows: int) -> zip[tuple[torch.Tensor, torch.Tensor]]:
    size = max(1, rows)
    return zip(torch.split(inputs, size), torch.split(targets, size), strict=True)
