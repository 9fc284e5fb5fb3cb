"""Real models for the attribution tests: a small module wrapped as a loaded model, and the eager digits CNN's
model section (eager: forward hooks reach every layer, which a TorchScript file does not allow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from attribution_workers.config import AttributionConfig
from attribution_workers.inspection import LayerInspector
from attribution_workers.loader import LoadedModel, ModelSpec
from demo.models import digits


def small_inspector(module: nn.Module, input_shape: tuple[int, ...], **fields: Any) -> LayerInspector:
    """An inspector of a small real model (eval mode, on the CPU); ``fields`` of its attribution config."""
    spec = ModelSpec(factory="tests.unused:model", weights=Path("unused.pt"), input_shape=input_shape, num_classes=2)
    loaded = LoadedModel(
        module=module.eval(),
        device=torch.device("cpu"),
        input_shape=input_shape,
        num_classes=2,
        baseline=torch.zeros(input_shape),
        gradcam_layer_name=None,
    )
    return LayerInspector(loaded, AttributionConfig(model=spec, **{"methods": ("saliency",), **fields}))


def eager_digits(digits_path: Path) -> dict[str, Any]:
    """The ``model`` section of the digits CNN built from its factory and the weights of the scripted file."""
    return {
        "factory": digits.FACTORY,
        "weights": str(digits.ensure_digits_weights(digits_path)),
        "input_shape": list(digits.INPUT_SHAPE),
        "num_classes": digits.NUM_CLASSES,
    }
