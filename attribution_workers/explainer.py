"""Explain a batch of predictions with several attribution methods at once: one typed result per row."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from attribution_workers.errors import AttributionError
from attribution_workers.lime import LimeSettings
from attribution_workers.loader import LoadedModel
from attribution_workers.methods import METHOD_NAMES, METHODS, MethodName, MethodOutput, MethodSettings

DEFAULT_METHODS: tuple[MethodName, ...] = (
    "gradcam",
    "integrated_gradients",
    "occlusion",
    "saliency",
    "gradient_shap",
    "lime",
)
"""What an explainer runs unless told otherwise (``gradcam`` only where the model has a Grad-CAM layer)."""
_INDEX_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})


@dataclass(frozen=True)
class Attribution:
    """One method's map for one input."""

    method: MethodName
    values: NDArray[np.float32]
    """Same shape as the input (without the batch dimension)."""
    convergence_delta: float | None = None
    """Integrated Gradients only: sum of attributions minus the change in target logit from the baseline."""

    @property
    def relative_delta(self) -> float | None:
        """Integrated Gradients only: ``|convergence_delta| / |f(x) - f(baseline)|``, the change read back from the
        map (its sum minus the delta); ``inf`` for a non-finite delta; ``None`` for the other methods and where the
        logit did not change (no scale to judge the delta by)."""
        if self.convergence_delta is None:
            return None
        if not math.isfinite(self.convergence_delta):
            return math.inf
        change = float(self.values.sum(dtype=np.float64)) - self.convergence_delta
        if not math.isfinite(change):
            return math.inf
        return abs(self.convergence_delta) / abs(change) if change != 0 else None


@dataclass(frozen=True)
class Explanation:
    """Every requested method's attribution for one input, towards ``target``."""

    target: int
    attributions: tuple[Attribution, ...]

    @property
    def methods(self) -> tuple[MethodName, ...]:
        return tuple(attribution.method for attribution in self.attributions)

    def __getitem__(self, method: MethodName) -> Attribution:
        for attribution in self.attributions:
            if attribution.method == method:
                return attribution
        raise KeyError(f"no {method!r} attribution here; this explanation has {list(self.methods)}")


def stack_maps(explanations: Sequence[Explanation], method: MethodName) -> NDArray[np.float32]:
    """One method's maps of several explanations as ``[B, *input_shape]``."""
    return np.stack([explanation[method].values for explanation in explanations])


class Explainer:
    """Runs Captum attribution methods on whole batches of one model.

    ``explain`` is blocking torch work: call it from a worker thread, not an event loop.
    Maps stay on the model's device until the end, then come back as float32 numpy.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        methods: Sequence[MethodName] | None = None,
        ig_steps: int = 32,
        occlusion_window: int = 2,
        occlusion_stride: int = 1,
        shap_samples: int = 16,
        shap_stdev: float = 0.1,
        rows_per_pass: int = 4096,
        lime: LimeSettings | None = None,
    ) -> None:
        """Check the settings against ``model``; raises ``AttributionError``.

        ``methods``: defaults to :data:`DEFAULT_METHODS` that the model supports.
        ``ig_steps``: Integrated Gradients integration points.
        ``occlusion_window`` / ``occlusion_stride``: occluding window edge and step, in
        input elements, along every dimension but an image's channels.
        ``shap_samples``: Gradient SHAP draws, or Kernel SHAP coalitions (use at least
        twice the input size), per input.
        ``shap_stdev``: Gradient SHAP input noise, in input units (0 for raw-scale tables).
        ``rows_per_pass``: most model rows per forward pass; bounds memory.
        ``lime``: LIME's samples, superpixel edge and seed (default :class:`LimeSettings`).
        """
        self._model = model
        self._methods = self._checked_methods(model, methods)
        self._settings = MethodSettings(
            ig_steps=ig_steps,
            occlusion_window=occlusion_window,
            occlusion_stride=occlusion_stride,
            shap_samples=shap_samples,
            shap_stdev=float(shap_stdev),
            rows_per_pass=rows_per_pass,
            lime=lime or LimeSettings(),
        )

    @property
    def model(self) -> LoadedModel:
        return self._model

    @property
    def methods(self) -> tuple[MethodName, ...]:
        return self._methods

    def with_model(self, model: LoadedModel) -> Explainer:
        """The same methods and settings on another model (e.g. a randomised copy)."""
        settings = {field.name: getattr(self._settings, field.name) for field in dataclasses.fields(self._settings)}
        return Explainer(model, methods=self._methods, **settings)

    def explain(self, inputs: torch.Tensor, targets: torch.Tensor) -> list[Explanation]:
        """Attribute ``targets`` ``[B]`` (class indices) of ``inputs`` ``[B, *input_shape]``, every method at once."""
        inputs, targets = self._checked_batch(inputs, targets)
        per_method = [_per_row(method, self._run(method, inputs, targets)) for method in self._methods]
        return [
            Explanation(target=target, attributions=row)
            for target, row in zip(targets.cpu().tolist(), zip(*per_method, strict=True), strict=True)
        ]

    def _run(self, method: MethodName, inputs: torch.Tensor, targets: torch.Tensor) -> MethodOutput:
        try:
            output = METHODS[method](self._model, inputs, targets, self._settings)
        except AttributionError:
            raise
        except Exception as error:
            raise AttributionError(f"{method} failed on a batch of {len(inputs)}: {error}") from error
        if output.values.shape != inputs.shape:
            raise AttributionError(
                f"{method} gave maps of shape {tuple(output.values.shape)} for {tuple(inputs.shape)}"
            )
        return output

    def _checked_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape, classes = self._model.input_shape, self._model.num_classes
        if inputs.dim() != len(shape) + 1 or tuple(inputs.shape[1:]) != shape or len(inputs) == 0:
            raise AttributionError(f"inputs must be [B >= 1, {', '.join(map(str, shape))}], got {tuple(inputs.shape)}")
        if not inputs.is_floating_point():
            raise AttributionError(f"inputs must be floating point, got {inputs.dtype}")
        if targets.shape != (len(inputs),) or targets.dtype not in _INDEX_DTYPES:
            raise AttributionError(
                f"targets must be {len(inputs)} class indices, got {targets.dtype} {tuple(targets.shape)}"
            )
        if bool(((targets < 0) | (targets >= classes)).any()):
            raise AttributionError(f"targets must lie in [0, {classes}), got {targets.tolist()}")
        device = self._model.device
        return inputs.to(device=device, dtype=torch.float32), targets.to(device=device, dtype=torch.int64)

    @staticmethod
    def _checked_methods(model: LoadedModel, methods: Sequence[MethodName] | None) -> tuple[MethodName, ...]:
        if methods is None:
            return tuple(m for m in DEFAULT_METHODS if m != "gradcam" or model.gradcam_layer_name is not None)
        unknown = [method for method in methods if method not in METHOD_NAMES]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise AttributionError(f"methods must be distinct names from {list(METHOD_NAMES)}, got {list(methods)}")
        if "gradcam" in methods and model.gradcam_layer_name is None:
            raise AttributionError(
                "gradcam needs a Grad-CAM layer: give the model features()/head() methods or set gradcam_layer"
            )
        return tuple(methods)


def _per_row(method: MethodName, output: MethodOutput) -> list[Attribution]:
    values = output.values.to(torch.float32).cpu().numpy()
    deltas: list[float | None] = [None] * len(values) if output.deltas is None else output.deltas.cpu().tolist()
    return [
        Attribution(method=method, values=row, convergence_delta=delta)
        for row, delta in zip(values, deltas, strict=True)
    ]
