"""Which modules of a model the layer inspector hooks, and what kind of layer each is (see
:mod:`attribution_workers.inspection`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from attribution_workers.errors import AttributionError
from attribution_workers.loader import GradCamView
from sampler.layers import LayerKind

FEATURES = "features"
"""Name of the one inspectable point of a TorchScript ``features``/``head`` model."""
_ZERO_DEAD = (nn.ReLU, nn.Hardswish, nn.Hardsigmoid, nn.Hardshrink, nn.Softshrink)


def root_of(module: nn.Module) -> nn.Module:
    """The model as its config names it (the loader may have wrapped it for Grad-CAM)."""
    return module.model if isinstance(module, GradCamView) else module


def choose(module: nn.Module, names: tuple[str, ...] | None, cap: int) -> list[tuple[str, nn.Module]]:
    root = root_of(module)
    scripted = isinstance(root, torch.jit.ScriptModule)
    if names is not None:
        return [(name, named(module, root, name, scripted)) for name in dict.fromkeys(names)]
    if scripted:
        return [(FEATURES, module.cam)] if isinstance(module, GradCamView) else []
    found = [(name, m) for name, m in eager_modules(root) if name and kind_of(m) != "other"]
    if len(found) <= cap:
        return found
    picks = sorted({round(i) for i in np.linspace(0, len(found) - 1, cap)})
    return [found[i] for i in picks]


def named(module: nn.Module, root: nn.Module, name: str, scripted: bool) -> nn.Module:
    if scripted:
        if name == FEATURES and isinstance(module, GradCamView):
            return module.cam
        raise AttributionError(
            f"inspect_layers: {name!r} is inside a TorchScript model, which takes no hooks; load the model "
            f"from 'factory' and 'weights' to inspect its layers (only {FEATURES!r} works on a scripted "
            "features/head model)"
        )
    try:
        return root.get_submodule(name)
    except AttributeError as error:
        raise AttributionError(f"inspect_layers: {name!r} is not a submodule of the model: {error}") from None


def eager_modules(root: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` in order, not descending into scripted submodules (they take no hooks)."""
    yield prefix, root
    for name, child in root.named_children():
        if not isinstance(child, torch.jit.ScriptModule):
            yield from eager_modules(child, f"{prefix}.{name}" if prefix else name)


_LAYOUT_KEEPERS = (nn.modules.pooling.__name__, nn.modules.upsampling.__name__, nn.modules.padding.__name__)
"""Modules whose output keeps its input's channels-first layout (the channels, on other positions)."""


def keeps_layout(module: nn.Module) -> bool:
    """Pooling, upsampling and padding modules: a convolution's channels stay the channels of their output."""
    return type(module).__module__ in _LAYOUT_KEEPERS


def layout_modules(module: nn.Module) -> Iterator[nn.Module]:
    """The convolutions, and the modules that keep their layout, of an eager model (see :func:`keeps_layout`)."""
    root = root_of(module)
    if not isinstance(root, torch.jit.ScriptModule):
        yield from (m for _, m in eager_modules(root) if isinstance(m, nn.modules.conv._ConvNd) or keeps_layout(m))


def kind_of(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear | nn.Bilinear):
        return "linear"
    if type(module).__module__ == nn.modules.activation.__name__ and not isinstance(module, nn.MultiheadAttention):
        return "activation"
    return "other"


def bounds_of(module: nn.Module) -> tuple[float | None, float | None] | None:
    """Saturation bounds (low, high). The low bound of a ReLU-like activation is its dead state, exact 0, counted
    by the zero share and the dead ratio instead (:func:`zero_is_dead`): it is None, so that ReLU6, Hardtanh(0, 6)
    and hardsigmoid's 0 read alike (the span a 1% tolerance is taken of stays the full output range)."""
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        low, high = float(module.min_val), float(module.max_val)
        return None if zero_is_dead(module) else low, high
    if isinstance(module, nn.Hardsigmoid):
        return None, 1.0
    if isinstance(module, nn.Sigmoid):
        return 0.0, 1.0
    if isinstance(module, nn.Tanh | nn.Softsign):
        return -1.0, 1.0
    return None


def zero_is_dead(module: nn.Module) -> bool:
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        return float(module.min_val) == 0.0
    if isinstance(module, nn.Threshold):
        return float(module.value) == 0.0
    return isinstance(module, _ZERO_DEAD)
