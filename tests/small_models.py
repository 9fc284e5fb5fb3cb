"""Real models for the attribution tests: a small module wrapped as a loaded model, the eager digits CNN's
model section (eager: forward hooks reach every layer, which a TorchScript file does not allow), and a sampled
event of the digits CNN."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from attribution_workers.config import AttributionConfig
from attribution_workers.inspection import LayerInspector
from attribution_workers.loader import LoadedModel, ModelSpec
from demo.models import digits
from sampler.contract import InputTensor, SampledEvent


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


def sampled_digit(
    request_id: str,
    image: npt.NDArray[np.float32],
    *,
    predicted: int = 0,
    version: str = "v1",
    label: int | None = None,
    model: str = "digits",
) -> SampledEvent:
    """A sampled event of the digits CNN carrying ``image`` as its input, as the sidecar queues it."""
    now = time.time()
    return SampledEvent(
        model=model,
        model_version=version,
        request_id=request_id,
        timestamp=now,
        received_at=now,
        reasons=("every_n",),
        predicted=predicted,
        confidence=0.9,
        margin=1.0,
        num_classes=digits.NUM_CLASSES,
        label=label,
        input=InputTensor.of(np.ascontiguousarray(image, dtype=np.float32)),
    )
