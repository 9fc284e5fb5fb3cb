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
own forward passes are never observed, and no hook outlives a batch. A module called more than once
in the pass (one ``nn.ReLU`` shared by several layers) is captured at each call, the k-th as
``name#k`` (k >= 2), up to ``MAX_CALLS`` calls (a recurrent cell stepping over a long sequence).
Summarising a call cannot fail the batch: a call whose figures raise (an output shape nobody
foresaw) is left out of that batch's inspection, named in :attr:`BatchInspection.failed`, and
logged once per layer; the forward pass, and so the attributions, go on.

Per input and layer (:class:`~sampler.layers.LayerStats`): mean and population std of the output,
share of elements exactly 0, and for bounded activations (sigmoid, tanh, hardtanh, ReLU6,
hardsigmoid, softsign) the share within 1% of the output range of a bound. A bound at 0 of a
ReLU-like activation (ReLU6, Hardtanh to 0, hardsigmoid) is not a saturation bound: its 0 is the
dead state, counted by ``zero_share``, so only the top bound counts (ReLU6 and Hardtanh(0, 6) give
the same figures). Units, for the health figures: the features of the last axis, except for
channels-first outputs of 3 or more axes, whose units are their channels: a convolution's, and
that of any other layer but a linear one whose per-sample output has the shape of the last
convolution's output in the pass (Conv1d, maybe a norm, then ReLU: the ReLU's units are the conv's
channels, not its positions). Pooling, upsampling and padding modules keep that layout: their
output counts as the convolution's when their input did (conv, max-pool, ReLU). A Linear or an
activation on a channels-last ``(H, W, C)`` output (ConvNeXt, Swin) has ``C`` units. A per-sample
output of one number (``[B]``: a scalar gate) has one unit. Exact 0 is the dead state
(:attr:`InspectedLayer.zero_is_dead`) only of ReLU-like activations: ReLU, ReLU6, Hardtanh and
Threshold to 0, hardswish, hardsigmoid and the shrinks; other layers never output exact zeros when
a unit goes unused, so their dead ratio is None.
Feature maps of ``(C, H, W)`` outputs keep the ``feature_map_channels`` channels of the highest mean
|activation| for that input, as float16; a map with a side above ``MAX_MAP_SIDE`` is averaged down
by ``f = ceil(longest side / MAX_MAP_SIDE)`` and stored at ``ceil(H / f) x ceil(W / f)``, with
adaptive average pooling: stored pixel ``i`` of a side of ``n`` averages input rows ``floor(i n / m)``
to ``ceil((i + 1) n / m) - 1`` (``m`` the stored side): windows of about ``f`` rows, which overlap
their neighbours by a row or column where ``m`` does not divide ``n`` (200 x 130 is stored at 50 x 33:
along the 130 side, windows of 4 or 5 rows, 0-3, 3-7, 7-11...), not smaller blocks at an edge.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from attribution_workers.config import AttributionConfig
from attribution_workers.errors import AttributionError
from attribution_workers.inspection_layers import bounds_of, choose, keeps_layout, kind_of, layout_modules, zero_is_dead
from attribution_workers.loader import LoadedModel
from sampler.layers import FeatureMaps, LayerKind, LayerStats

log = logging.getLogger(__name__)

SATURATION_TOLERANCE = 0.01
"""Share of a bounded activation's output range, next to a bound, that counts as saturated."""
MAX_CALLS = 8
"""Calls of one module captured per forward pass; later calls are not inspected."""
MAX_MAP_SIDE = 64
"""Longest side of a stored feature map; larger maps are averaged down (see the module docstring)."""
_Hook = Callable[[nn.Module, tuple[object, ...], object], None]


@dataclass(frozen=True, eq=False)
class InspectedLayer:
    name: str
    kind: LayerKind
    module: nn.Module
    bounds: tuple[float | None, float | None] | None
    """Saturation bounds (low, high) of a bounded activation; None for unbounded layers."""
    keep_maps: bool
    zero_is_dead: bool = False
    """Whether a unit that gives up outputs exactly 0 (ReLU-like activations): the dead ratio is measured."""


@dataclass(frozen=True, eq=False)
class LayerCapture:
    """One call of a layer on a batch, summarised per row (numpy, on the CPU)."""

    name: str
    """The layer's name; ``name#k`` for its k-th call in the pass."""
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
    outputs: torch.Tensor | None = None
    """The model's outputs of the inspected pass (the runtime checks them: no second forward pass)."""
    failed: tuple[str, ...] = ()
    """Layers (``name#k`` for a later call) whose figures could not be taken on this batch: left out of it."""

    def stats(self, row: int) -> list[LayerStats]:
        return [_stats(capture, row) for capture in self.captures]

    def feature_maps(self, row: int) -> dict[str, FeatureMaps]:
        return {
            capture.name: FeatureMaps.from_array(capture.maps[row], tuple(int(c) for c in capture.map_channels[row]))
            for capture in self.captures
            if capture.maps is not None and capture.map_channels is not None
        }


class _Pass:
    """What one hooked forward pass saw: each inspected layer's captures in call order, the last conv's shape."""

    def __init__(self) -> None:
        self.captures: dict[str, list[LayerCapture]] = {}
        self.calls: dict[str, int] = {}
        """Calls of each inspected layer so far (a call whose figures failed counts: the next is still ``#k``)."""
        self.failed: dict[str, str] = {}
        """Per call name, why its figures could not be taken."""
        self.conv_shape: torch.Size | None = None
        """Per-row output shape of the last convolution that ran (inspected or not), or of a pooling, upsampling
        or padding module on it: the channels-first layout."""

    def layout(self, module: nn.Module, args: tuple[object, ...], output: object) -> None:
        """Follow the channels-first layout: a convolution sets it; a module that keeps it carries it on."""
        if not isinstance(output, torch.Tensor) or output.dim() < 1:
            return
        if isinstance(module, nn.modules.conv._ConvNd):
            self.conv_shape = output.shape[1:]
            return
        given = args[0] if args else None
        on_conv = isinstance(given, torch.Tensor) and given.dim() == output.dim() and given.shape[1:] == self.conv_shape
        if on_conv and keeps_layout(module):  # the conv's channels stay the channels
            self.conv_shape = output.shape[1:]


class LayerInspector:
    """Hooks the configured layers of one loaded model for the length of one forward pass."""

    def __init__(self, model: LoadedModel, config: AttributionConfig, *, name: str = "model") -> None:
        self._model = model
        self._name = name
        self._logged: set[str] = set()
        """Layers whose failure was logged (once per layer: it would fail again on every batch)."""
        self._map_channels = config.feature_map_channels
        found = choose(model.module, config.inspect_layers, config.inspect_max_layers)
        wanted_maps = config.feature_map_layers
        unknown = sorted(set(wanted_maps or ()) - {name for name, _ in found})
        if unknown:
            raise AttributionError(f"feature_map_layers {unknown} are not among the inspected layers")
        self.layers = tuple(
            InspectedLayer(
                name=name,
                kind=kind_of(module),
                module=module,
                bounds=bounds_of(module),
                keep_maps=config.feature_map_channels > 0
                and (name in wanted_maps if wanted_maps is not None else kind_of(module) == "conv"),
                zero_is_dead=zero_is_dead(module),
            )
            for name, module in found
        )
        inspected = {id(layer.module) for layer in self.layers}
        self._layouts = tuple(module for module in layout_modules(model.module) if id(module) not in inspected)
        """Convolutions (and pooling, upsampling, padding modules) that are not inspected: hooked too, for the
        channels-first layout they give the layers after them."""

    @contextlib.contextmanager
    def hooked(self, failed: dict[str, str] | None = None) -> Iterator[dict[str, list[LayerCapture]]]:
        """The layers' hooks, removed on leaving (also on an error); each layer's captures fill the dict as it runs,
        and ``failed``, when given, the calls whose figures could not be taken (with why)."""
        state = _Pass()
        handles = []
        try:
            for layer in self.layers:
                handles.append(layer.module.register_forward_hook(self._hook(layer, state)))
            for module in self._layouts:
                handles.append(module.register_forward_hook(state.layout))
            yield state.captures
        finally:
            for handle in handles:
                handle.remove()
            if failed is not None:
                failed.update(state.failed)
            self._report(state.failed)

    def inspect(self, inputs: torch.Tensor) -> BatchInspection:
        """One no-grad forward pass on ``inputs`` with the hooks in place; a layer that did not run, or whose
        figures failed, is left out (the latter named in ``failed``)."""
        failed: dict[str, str] = {}
        with torch.no_grad(), self.hooked(failed) as captures:
            outputs = self._model.module(inputs)
        found = tuple(capture for layer in self.layers for capture in captures.get(layer.name, ()))
        return BatchInspection(found, outputs if isinstance(outputs, torch.Tensor) else None, tuple(failed))

    def _report(self, failed: dict[str, str]) -> None:
        for name, why in failed.items():
            if name not in self._logged:
                self._logged.add(name)
                log.warning(
                    "%s: layer %s is left out of the inspection of each batch its figures fail on (logged once): %s",
                    self._name,
                    name,
                    why,
                )

    def _hook(self, layer: InspectedLayer, state: _Pass) -> _Hook:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 1:
                return
            state.layout(module, args, output)
            calls = state.calls[layer.name] = state.calls.get(layer.name, 0) + 1
            if calls > MAX_CALLS:
                return
            name = f"{layer.name}#{calls}" if calls > 1 else layer.name
            try:  # now: a later in-place op changes the output
                found = capture(
                    layer, output, self._map_channels, name=name, channels_first=_channels_first(layer, output, state)
                )
            except Exception as error:  # never fail the batch: leave this layer out of it
                state.failed.setdefault(name, f"{type(error).__name__}: {error}"[:300])
                return
            state.captures.setdefault(layer.name, []).append(found)

        return hook


def _channels_first(layer: InspectedLayer, output: torch.Tensor, state: _Pass) -> bool:
    """Whether the output's units are its channels (axis 1): a convolution's, and a non-linear layer's on the
    layout of the last convolution (see the module docstring); else the last axis."""
    if output.dim() < 3:
        return False
    return layer.kind == "conv" or (layer.kind != "linear" and output.shape[1:] == state.conv_shape)


def capture(
    layer: InspectedLayer, output: torch.Tensor, map_channels: int, *, name: str, channels_first: bool
) -> LayerCapture:
    """Per-row figures of one call of a layer (see the module docstring)."""
    values = output.detach().float()
    rows = values.reshape(values.shape[0], -1)  # flatten(1) refuses a [B] output (one number per row)
    units = _units(values, channels_first)
    maps, channels = _top_maps(values, map_channels) if layer.keep_maps else (None, None)
    return LayerCapture(
        name=name,
        layer=layer,
        shape=tuple(values.shape[1:]),
        mean=rows.double().mean(1).cpu().numpy(),
        std=rows.double().std(1, correction=0).cpu().numpy(),
        zero_share=(rows == 0).double().mean(1).cpu().numpy(),
        saturated_share=None if layer.bounds is None else _saturated(rows, layer.bounds),
        unit_means=units.double().mean(2).cpu().numpy(),
        unit_active=(units != 0).any(2).cpu().numpy(),
        maps=maps,
        map_channels=channels,
    )


def _saturated(rows: torch.Tensor, bounds: tuple[float | None, float | None]) -> npt.NDArray[np.float64]:
    low, high = bounds
    span = (high if high is not None else 0.0) - (low if low is not None else 0.0)
    edge = SATURATION_TOLERANCE * span
    hit = torch.zeros_like(rows, dtype=torch.bool)
    if low is not None:
        hit |= rows <= low + edge
    if high is not None:
        hit |= rows >= high - edge
    return hit.float().mean(1).double().cpu().numpy()


def _units(values: torch.Tensor, channels_first: bool) -> torch.Tensor:
    """``[B, units, positions]``: channels first, or the last axis as the units."""
    batch = values.shape[0]
    if values.dim() == 1:
        return values.reshape(batch, 1, 1)
    if channels_first:
        return values.flatten(2)
    return values.reshape(batch, -1, values.shape[-1]).transpose(1, 2)


def _top_maps(values: torch.Tensor, count: int) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.int64] | None]:
    if values.dim() != 4 or count <= 0:
        return None, None
    strength = values.abs().mean(dim=(2, 3))
    top = strength.topk(min(count, values.shape[1]), dim=1).indices
    index = top[:, :, None, None].expand(-1, -1, values.shape[2], values.shape[3])
    return _shrunk(values.gather(1, index)).cpu().numpy(), top.cpu().numpy()


def _shrunk(maps: torch.Tensor) -> torch.Tensor:
    """``[B, k, H, W]`` maps with no side above ``MAX_MAP_SIDE``: averaged over ``f x f`` blocks when larger."""
    height, width = maps.shape[2], maps.shape[3]
    factor = math.ceil(max(height, width) / MAX_MAP_SIDE)
    if factor <= 1:
        return maps
    return functional.adaptive_avg_pool2d(maps, (math.ceil(height / factor), math.ceil(width / factor)))


def _stats(capture: LayerCapture, row: int) -> LayerStats:
    mean, std = float(capture.mean[row]), float(capture.std[row])
    finite = math.isfinite(mean) and math.isfinite(std)
    channels = () if capture.map_channels is None else tuple(int(c) for c in capture.map_channels[row])
    return LayerStats(
        name=capture.name,
        kind=capture.layer.kind,
        shape=capture.shape,
        mean=mean if finite else None,
        std=std if finite else None,
        zero_share=float(capture.zero_share[row]),
        saturated_share=None if capture.saturated_share is None else float(capture.saturated_share[row]),
        feature_map_channels=channels,
    )
