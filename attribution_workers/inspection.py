"""What happens inside the model on each explained input: forward hooks for one extra forward pass per batch.

Which layers: ``inspect_layers`` of the model's attribution config, dotted names in the model the
config loads (for a ``features``/``head`` model, in the model itself, not in the loader's
:class:`~attribution_workers.loader.GradCamView`). By default, every convolution, linear and
activation module (``torch.nn.modules.activation``), at most ``inspect_max_layers`` of them spread
evenly from first to last.

TorchScript: a scripted module takes no Python hooks, and its compiled ``forward`` never calls its
submodules through Python, so nothing inside it can be observed. Load the model from a factory and
its weights to inspect it (the demo does). A TorchScript model with ``features``/``head`` still
shows one layer, ``features``: the loader's ``cam`` identity between the two, which takes hooks.

When: :meth:`LayerInspector.inspect` registers the hooks, runs one no-grad forward pass on the
batch, and removes them in ``finally``, also when that pass fails. So the attribution methods'
own forward passes are never observed, and no hook outlives a batch.

Per input and layer (:class:`~sampler.layers.LayerStats`): mean and population std of the output,
share of elements exactly 0, and for bounded activations (sigmoid, tanh, hardtanh, ReLU6,
hardsigmoid, softsign) the share within 1% of the output range of a bound (ReLU6: of 6 only;
its 0 is counted by ``zero_share``). Units, for the health figures: the channels of a per-sample
output with 3 or more axes (and of a convolution's), else the features of the last axis.
Feature maps of ``(C, H, W)`` outputs keep the ``feature_map_channels`` channels of the highest mean
|activation| for that input, as float16.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from attribution_workers.config import AttributionConfig
from attribution_workers.errors import AttributionError
from attribution_workers.loader import GradCamView, LoadedModel
from sampler.layers import FeatureMaps, LayerKind, LayerStats

SATURATION_TOLERANCE = 0.01
"""Share of a bounded activation's output range, next to a bound, that counts as saturated."""
FEATURES = "features"
"""Name of the one inspectable point of a TorchScript ``features``/``head`` model."""
_Hook = Callable[[nn.Module, tuple[object, ...], object], None]


@dataclass(frozen=True, eq=False)
class InspectedLayer:
    name: str
    kind: LayerKind
    module: nn.Module
    bounds: tuple[float | None, float | None] | None
    """Saturation bounds (low, high) of a bounded activation; None for unbounded layers."""
    keep_maps: bool


@dataclass(frozen=True, eq=False)
class LayerCapture:
    """One layer's output on a batch, summarised per row (numpy, on the CPU)."""

    layer: InspectedLayer
    shape: tuple[int, ...]
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    zero_share: npt.NDArray[np.float64]
    saturated_share: npt.NDArray[np.float64] | None
    unit_means: npt.NDArray[np.float64]
    """``[B, units]``: each unit's mean output per row."""
    unit_active: npt.NDArray[np.bool_]
    """``[B, units]``: whether the unit was non-zero anywhere in the row's output."""
    maps: npt.NDArray[np.float32] | None
    """``[B, k, H, W]`` strongest channels, or None."""
    map_channels: npt.NDArray[np.int64] | None


@dataclass(frozen=True)
class BatchInspection:
    captures: tuple[LayerCapture, ...]

    def stats(self, row: int) -> list[LayerStats]:
        return [_stats(capture, row) for capture in self.captures]

    def feature_maps(self, row: int) -> dict[str, FeatureMaps]:
        return {
            capture.layer.name: FeatureMaps.from_array(
                capture.maps[row], tuple(int(c) for c in capture.map_channels[row])
            )
            for capture in self.captures
            if capture.maps is not None and capture.map_channels is not None
        }


class LayerInspector:
    """Hooks the configured layers of one loaded model for the length of one forward pass."""

    def __init__(self, model: LoadedModel, config: AttributionConfig) -> None:
        self._model = model
        self._map_channels = config.feature_map_channels
        found = _choose(model.module, config.inspect_layers, config.inspect_max_layers)
        wanted_maps = config.feature_map_layers
        unknown = sorted(set(wanted_maps or ()) - {name for name, _ in found})
        if unknown:
            raise AttributionError(f"feature_map_layers {unknown} are not among the inspected layers")
        self.layers = tuple(
            InspectedLayer(
                name=name,
                kind=_kind(module),
                module=module,
                bounds=_bounds(module),
                keep_maps=config.feature_map_channels > 0
                and (name in wanted_maps if wanted_maps is not None else _kind(module) == "conv"),
            )
            for name, module in found
        )

    @contextlib.contextmanager
    def hooked(self) -> Iterator[dict[str, LayerCapture]]:
        """The layers' hooks, removed on leaving (also on an error); captures fill the dict as layers run."""
        captures: dict[str, LayerCapture] = {}
        handles = []
        try:
            for layer in self.layers:
                handles.append(layer.module.register_forward_hook(self._hook(layer, captures)))
            yield captures
        finally:
            for handle in handles:
                handle.remove()

    def inspect(self, inputs: torch.Tensor) -> BatchInspection:
        """One no-grad forward pass on ``inputs`` with the hooks in place; a layer that did not run is left out."""
        with torch.no_grad(), self.hooked() as captures:
            self._model.module(inputs)
        return BatchInspection(tuple(captures[layer.name] for layer in self.layers if layer.name in captures))

    def _hook(self, layer: InspectedLayer, captures: dict[str, LayerCapture]) -> _Hook:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 1 and layer.name not in captures:
                captures[layer.name] = capture(layer, output, self._map_channels)  # now: a later in-place op changes it

        return hook


def capture(layer: InspectedLayer, output: torch.Tensor, map_channels: int) -> LayerCapture:
    """Per-row figures of one layer's batch output (see the module docstring)."""
    values = output.detach().float()
    rows = values.flatten(1)
    sat = None
    if layer.bounds is not None:
        low, high = layer.bounds
        span = (high if high is not None else 0.0) - (low if low is not None else 0.0)
        edge = SATURATION_TOLERANCE * span
        hit = torch.zeros_like(rows, dtype=torch.bool)
        if low is not None:
            hit |= rows <= low + edge
        if high is not None:
            hit |= rows >= high - edge
        sat = hit.float().mean(1).double().cpu().numpy()
    units = _units(values, layer.kind)
    maps, channels = _top_maps(values, map_channels) if layer.keep_maps else (None, None)
    return LayerCapture(
        layer=layer,
        shape=tuple(values.shape[1:]),
        mean=rows.double().mean(1).cpu().numpy(),
        std=rows.double().std(1, correction=0).cpu().numpy(),
        zero_share=(rows == 0).double().mean(1).cpu().numpy(),
        saturated_share=sat,
        unit_means=units.double().mean(2).cpu().numpy(),
        unit_active=(units != 0).any(2).cpu().numpy(),
        maps=maps,
        map_channels=channels,
    )


def _units(values: torch.Tensor, kind: LayerKind) -> torch.Tensor:
    """``[B, units, positions]``: channels first for maps (and convolutions), else the last axis."""
    batch = values.shape[0]
    if values.dim() == 1:
        return values.reshape(batch, 1, 1)
    if values.dim() >= 4 or (kind == "conv" and values.dim() == 3):
        return values.flatten(2)
    return values.reshape(batch, -1, values.shape[-1]).transpose(1, 2)


def _top_maps(values: torch.Tensor, count: int) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.int64] | None]:
    if values.dim() != 4 or count <= 0:
        return None, None
    strength = values.abs().mean(dim=(2, 3))
    top = strength.topk(min(count, values.shape[1]), dim=1).indices
    index = top[:, :, None, None].expand(-1, -1, values.shape[2], values.shape[3])
    return values.gather(1, index).cpu().numpy(), top.cpu().numpy()


def _stats(capture: LayerCapture, row: int) -> LayerStats:
    mean, std = float(capture.mean[row]), float(capture.std[row])
    finite = math.isfinite(mean) and math.isfinite(std)
    channels = () if capture.map_channels is None else tuple(int(c) for c in capture.map_channels[row])
    return LayerStats(
        name=capture.layer.name,
        kind=capture.layer.kind,
        shape=capture.shape,
        mean=mean if finite else None,
        std=std if finite else None,
        zero_share=float(capture.zero_share[row]),
        saturated_share=None if capture.saturated_share is None else float(capture.saturated_share[row]),
        feature_map_channels=channels,
    )


def _root(module: nn.Module) -> nn.Module:
    """The model as its config names it (the loader may have wrapped it for Grad-CAM)."""
    return module.model if isinstance(module, GradCamView) else module


def _choose(module: nn.Module, names: tuple[str, ...] | None, cap: int) -> list[tuple[str, nn.Module]]:
    root = _root(module)
    scripted = isinstance(root, torch.jit.ScriptModule)
    if names is not None:
        return [(name, _named(module, root, name, scripted)) for name in dict.fromkeys(names)]
    if scripted:
        return [(FEATURES, module.cam)] if isinstance(module, GradCamView) else []
    found = [(name, m) for name, m in _eager_modules(root) if name and _kind(m) != "other"]
    if len(found) <= cap:
        return found
    picks = sorted({round(i) for i in np.linspace(0, len(found) - 1, cap)})
    return [found[i] for i in picks]


def _named(module: nn.Module, root: nn.Module, name: str, scripted: bool) -> nn.Module:
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


def _eager_modules(root: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` in order, not descending into scripted submodules (they take no hooks)."""
    yield prefix, root
    for name, child in root.named_children():
        if not isinstance(child, torch.jit.ScriptModule):
            yield from _eager_modules(child, f"{prefix}.{name}" if prefix else name)


def _kind(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear | nn.Bilinear):
        return "linear"
    if type(module).__module__ == nn.modules.activation.__name__ and not isinstance(module, nn.MultiheadAttention):
        return "activation"
    return "other"


def _bounds(module: nn.Module) -> tuple[float | None, float | None] | None:
    if isinstance(module, nn.ReLU6):
        return None, 6.0
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    if isinstance(module, nn.Sigmoid | nn.Hardsigmoid):
        return 0.0, 1.0
    if isinstance(module, nn.Tanh | nn.Softsign):
        return -1.0, 1.0
    return None
