"""Real models for the attribution tests: a small module wrapped as a loaded model, the eager digits CNN's
model section (eager: forward hooks reach every layer, which a TorchScript file does not allow), a sampled
event of the digits CNN, and the logits a server running a model returns for inputs."""

from __future__ import annotations

import functools
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
from helpers import load_torchscript
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


CHECK_METHODS = ["saliency", "integrated_gradients"]
"""Two quick methods, for tests of what the worker checks around the maps rather than of the maps."""


def quick_digits_section(digits_path: Path) -> dict[str, Any]:
    """An ``[models.digits.attribution]`` section of the scripted digits CNN with :data:`CHECK_METHODS` and the
    fewest steps that still give every figure (deletion, agreement, convergence)."""
    return {
        "model": {"torchscript": str(digits_path), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10},
        "methods": CHECK_METHODS,
        "ig_steps": 16,
        "fidelity_steps": 4,
        "fidelity_random_orders": 1,
        "inspect_layers": [],
    }


def served_logits(model: Path | nn.Module, inputs: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The logits ``[N, classes]`` a server running ``model`` (a TorchScript file, or a module) returns for
    ``inputs`` ``[N, ...]``: what tests post for real inputs that a real worker explains. Made-up logits (one
    class at 3.0, the rest at -2.0: confidence 0.943) tell the worker that the server's model is less sure than
    its own (0.99 and more on most test digits), and its confidence check rightly makes every map not trusted."""
    module = _scripted(model) if isinstance(model, Path) else model
    batch = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    with torch.no_grad():
        logits: npt.NDArray[np.float32] = module(batch).float().numpy()
    return logits


def served_confidences(logits: npt.NDArray[np.float32], classes: npt.ArrayLike) -> list[float]:
    """The probability of ``classes[i]`` under the softmax of ``logits[i]`` (float64): the ``confidence`` the
    sidecar takes from those logits when the class is the top one."""
    wide = logits.astype(np.float64)
    weights = np.exp(wide - wide.max(axis=1, keepdims=True))
    probabilities = weights / weights.sum(axis=1, keepdims=True)
    return [float(p) for p in probabilities[np.arange(len(wide)), np.asarray(classes)]]


@functools.cache
def _scripted(path: Path) -> torch.jit.ScriptModule:
    module = load_torchscript(path)
    module.eval()
    return module


def sampled_digit(
    request_id: str,
    image: npt.NDArray[np.float32],
    *,
    predicted: int = 0,
    confidence: float = 0.9,
    version: str = "v1",
    label: int | None = None,
    model: str = "digits",
) -> SampledEvent:
    """A sampled event of the digits CNN carrying ``image`` as its input, as the sidecar queues it. ``confidence``
    is the server's reported probability of ``predicted``, which the worker's confidence check compares with its
    own model's (:func:`served_confidences` gives the one a server running the worker's model reports)."""
    now = time.time()
    return SampledEvent(
        model=model,
        model_version=version,
        request_id=request_id,
        timestamp=now,
        received_at=now,
        reasons=("every_n",),
        predicted=predicted,
        confidence=confidence,
        margin=1.0,
        num_classes=digits.NUM_CLASSES,
        label=label,
        input=InputTensor.of(np.ascontiguousarray(image, dtype=np.float32)),
    )
