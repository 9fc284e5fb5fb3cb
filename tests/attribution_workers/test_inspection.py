"""Layer inspection on the real digits CNN: hooks only for one pass, statistics as a direct forward pass gives them,
health windows that see the demo's corruptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from small_models import sampled_digit, small_inspector
from torch import nn
from torch.utils.hooks import RemovableHandle

from attribution_workers.config import AttributionConfig
from attribution_workers.errors import AttributionError
from attribution_workers.inspection import LayerInspector
from attribution_workers.inspection_health import LayerHealthTracker
from attribution_workers.loader import GradCamView, ModelSpec, load_model
from attribution_workers.runtime import ModelRuntime
from demo.corruptions import corrupt
from demo.models import digits
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent

DIGITS_LAYERS = ["conv.0", "conv.1", "conv.3", "conv.4", "dense.1", "dense.2", "classifier"]


@pytest.fixture(scope="module")
def eager_spec(digits_path: Path) -> ModelSpec:
    weights = digits.ensure_digits_weights(digits_path)
    return ModelSpec(
        factory=digits.FACTORY, weights=weights, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES
    )


def config(spec: ModelSpec, **fields: Any) -> AttributionConfig:
    values: dict[str, Any] = {"methods": ("saliency", "gradcam"), "fidelity_steps": 2, "fidelity_random_orders": 1}
    values.update(fields)
    return AttributionConfig(model=spec, **values)


def events(images: NDArray[np.float32], *, prefix: str, version: str = "v1") -> list[SampledEvent]:
    return [sampled_digit(f"{prefix}{index}", image, version=version) for index, image in enumerate(images)]


def hook_counts(runtime: ModelRuntime) -> dict[str, int]:
    return {layer.name: len(layer.module._forward_hooks) for layer in runtime.inspector.layers}


def test_default_layers_are_the_convolutions_linears_and_activations(eager_spec: ModelSpec) -> None:
    inspector = LayerInspector(load_model(eager_spec, device="cpu"), config(eager_spec))
    assert [layer.name for layer in inspector.layers] == DIGITS_LAYERS
    assert [layer.kind for layer in inspector.layers] == [
        "conv", "activation", "conv", "activation", "linear", "activation", "linear"
    ]  # fmt: skip
    assert [layer.name for layer in inspector.layers if layer.keep_maps] == ["conv.0", "conv.3"]
    capped = LayerInspector(load_model(eager_spec, device="cpu"), config(eager_spec, inspect_max_layers=3))
    assert [layer.name for layer in capped.layers] == ["conv.0", "conv.4", "classifier"]  # spread first to last


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"inspect_layers": ("conv.9",)}, "not a submodule", id="unknown-layer"),
        pytest.param({"inspect_layers": ("conv.0",), "feature_map_layers": ("conv.3",)}, "not among", id="maps"),
    ],
)
def test_bad_layer_names_are_refused_with_the_name(eager_spec: ModelSpec, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(AttributionError, match=message):
        LayerInspector(load_model(eager_spec, device="cpu"), config(eager_spec, **fields))


def test_a_scripted_model_shows_only_its_features_output(digits_path: Path) -> None:
    spec = ModelSpec(torchscript=digits_path, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES)
    model = load_model(spec, device="cpu")
    assert [layer.name for layer in LayerInspector(model, config(spec)).layers] == ["features"]
    with pytest.raises(AttributionError, match="TorchScript"):
        LayerInspector(model, config(spec, inspect_layers=("conv.0",)))


def test_hooks_are_there_for_one_pass_of_a_batch_and_gone_after_it(
    eager_spec: ModelSpec, digits_split: DatasetSplit
) -> None:
    runtime = ModelRuntime("digits", config(eager_spec), device="cpu")
    seen: list[dict[str, int]] = []
    spy = runtime.model.module.register_forward_pre_hook(lambda module, args: seen.append(hook_counts(runtime)))
    try:
        result = runtime.explain(events(digits_split.test.features[:4], prefix="a"))
    finally:
        spy.remove()
    assert all(outcome.ok for outcome in result.outcomes)
    everywhere = dict.fromkeys(DIGITS_LAYERS, 1)
    assert seen.count(everywhere) == 1, "hooked for exactly one forward pass of the batch"
    assert len(seen) > 2 and all(counts in (everywhere, dict.fromkeys(DIGITS_LAYERS, 0)) for counts in seen)
    assert hook_counts(runtime) == dict.fromkeys(DIGITS_LAYERS, 0)


def test_hooks_are_removed_when_the_batch_fails(eager_spec: ModelSpec, digits_split: DatasetSplit) -> None:
    runtime = ModelRuntime("digits", config(eager_spec), device="cpu")
    classifier = runtime.model.module.get_submodule("model.classifier")
    assert isinstance(runtime.model.module, GradCamView)

    def poison(module: nn.Module, args: object, output: object) -> None:
        raise RuntimeError("poisoned layer")

    handle: RemovableHandle = classifier.register_forward_hook(poison)
    try:
        with pytest.raises(RuntimeError, match="poisoned"):
            runtime.inspector.inspect(torch.from_numpy(digits_split.test.features[:2]))
        assert hook_counts(runtime) == {**dict.fromkeys(DIGITS_LAYERS, 0), "classifier": 1}  # the poison only
        result = runtime.explain(events(digits_split.test.features[:3], prefix="p"))
        assert [outcome.retry for outcome in result.outcomes] == [True] * 3
        assert all("poisoned" in (outcome.record.detail.error or "") for outcome in result.outcomes)
        assert hook_counts(runtime) == {**dict.fromkeys(DIGITS_LAYERS, 0), "classifier": 1}
        with pytest.raises(KeyError), runtime.inspector.hooked():
            raise KeyError("fails inside the hooked block")
        assert hook_counts(runtime) == {**dict.fromkeys(DIGITS_LAYERS, 0), "classifier": 1}
    finally:
        handle.remove()
    assert all(outcome.ok for outcome in runtime.explain(events(digits_split.test.features[:2], prefix="q")).outcomes)


def test_layer_statistics_equal_a_direct_forward_pass_with_own_hooks(
    eager_spec: ModelSpec, digits_split: DatasetSplit
) -> None:
    runtime = ModelRuntime("digits", config(eager_spec, feature_map_channels=5), device="cpu")
    images = digits_split.test.features[:6]
    outcomes = runtime.explain(events(images, prefix="s")).outcomes

    twin = load_model(eager_spec, device="cpu").module.get_submodule("model")
    outputs: dict[str, NDArray[np.float64]] = {}
    handles = [
        twin.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: outputs.__setitem__(name, out.detach().numpy().astype(np.float64).copy())
        )
        for name in DIGITS_LAYERS
    ]
    try:
        with torch.no_grad():
            twin(torch.from_numpy(images))
    finally:
        for handle in handles:
            handle.remove()

    for row, outcome in enumerate(outcomes):
        detail = outcome.record.detail
        assert [layer.name for layer in detail.layers] == DIGITS_LAYERS
        for layer in detail.layers:
            direct = outputs[layer.name][row]
            assert layer.shape == direct.shape
            assert layer.mean == pytest.approx(direct.mean(), rel=1e-5, abs=1e-6)
            assert layer.std == pytest.approx(direct.std(), rel=1e-5, abs=1e-6)
            assert layer.zero_share == pytest.approx(float((direct == 0).mean()))
            assert layer.saturated_share is None  # ReLU and linear layers are unbounded
        for name in ("conv.0", "conv.3"):
            direct = outputs[name][row]
            strength = np.abs(direct).mean(axis=(1, 2))
            expected = tuple(int(c) for c in np.argsort(-strength, kind="stable")[:5])
            stored = detail.feature_maps[name]
            assert stored.channels == expected
            assert next(layer for layer in detail.layers if layer.name == name).feature_map_channels == expected
            np.testing.assert_allclose(stored.to_array(), direct[list(expected)], rtol=2e-3, atol=2e-3 * stored.scale)
        assert set(detail.feature_maps) == {"conv.0", "conv.3"}


def test_saturation_is_counted_for_bounded_activations(eager_spec: ModelSpec, digits_split: DatasetSplit) -> None:
    model = load_model(eager_spec, device="cpu")
    root = model.module.get_submodule("model")
    dense = root.get_submodule("dense")
    assert isinstance(dense, nn.Sequential)
    dense[2] = nn.Hardtanh(0.0, 1.0)  # bounded in [0, 1]: saturated above 0.99; its 0 is dead, as ReLU6's
    inspector = LayerInspector(model, config(eager_spec, inspect_layers=("dense.1", "dense.2")))
    images = torch.from_numpy(digits_split.test.features[:3])
    found = inspector.inspect(images)
    with torch.no_grad():
        direct = dense[1](root.get_submodule("conv")(images).flatten(1)).numpy()
    for row in range(3):
        pre, post = found.stats(row)
        assert pre.saturated_share is None
        clipped = np.clip(direct[row], 0.0, 1.0)
        assert post.saturated_share == pytest.approx(float((clipped >= 0.99).mean()))
        assert post.zero_share == pytest.approx(float((clipped == 0).mean()))


def test_corrupted_digits_raise_the_activation_shift_well_above_its_clean_value(
    eager_spec: ModelSpec, digits_split: DatasetSplit
) -> None:
    runtime = ModelRuntime("digits", config(eager_spec, inspect_window=32, methods=("saliency",)), device="cpu")
    clean = digits_split.test.features

    def feed(images: NDArray[np.float32], prefix: str) -> dict[str, float | None]:
        snapshot = None
        for start in range(0, len(images), 16):
            (snapshot,) = runtime.explain(events(images[start : start + 16], prefix=f"{prefix}{start}-")).layer_health
        assert snapshot is not None
        return {layer.name: layer.activation_shift for layer in snapshot.layers}

    assert feed(clean[:16], "b") == dict.fromkeys(DIGITS_LAYERS, None)  # baseline not complete
    assert feed(clean[16:32], "c") == dict.fromkeys(DIGITS_LAYERS, None)  # the window is the baseline
    assert feed(clean[32:48], "c") == dict.fromkeys(DIGITS_LAYERS, None)  # the window overlaps the baseline
    clean_shift = feed(clean[48:96], "d")
    drifted, _ = corrupt(clean[96:128], seed=7)
    drift_shift = feed(drifted, "e")
    for name in ("conv.0", "conv.1", "conv.3", "conv.4"):
        before, after = clean_shift[name], drift_shift[name]
        assert before is not None and after is not None
        assert after > 3 * before and after > 0.4, f"{name}: shift {before:.3f} clean, {after:.3f} corrupted"


def test_each_model_version_has_its_own_baseline(eager_spec: ModelSpec, digits_split: DatasetSplit) -> None:
    runtime = ModelRuntime("digits", config(eager_spec, inspect_window=4, methods=("saliency",)), device="cpu")
    images = digits_split.test.features
    (first,) = runtime.explain(events(images[:8], prefix="a", version="v1")).layer_health
    (second,) = runtime.explain(events(images[8:10], prefix="b", version="v2")).layer_health
    assert first.version == "v1" and first.samples == 8 and first.window == 4
    assert second.version == "v2" and second.samples == 2 and second.window == 2
    assert all(layer.activation_shift is None for layer in second.layers)
    dead = {layer.name: layer.dead_ratio for layer in first.layers}
    ratios = [dead[name] for name in ("conv.1", "conv.4", "dense.2")]
    assert all(ratio is not None and 0.0 <= ratio <= 1.0 for ratio in ratios), dead
    assert all(layer.dead_ratio is None for layer in second.layers)  # 2 inputs: no full window yet


def health(found: LayerInspector, inputs: torch.Tensor) -> dict[str, tuple[int, float | None]]:
    """``(units, dead ratio)`` of each layer over ``inputs``, one window."""
    tracker = LayerHealthTracker(window=len(inputs))
    inspection = found.inspect(inputs)
    for row in range(len(inputs)):
        tracker.add("v1", inspection, row)
    snapshot = tracker.snapshot("v1")
    assert snapshot is not None
    return {layer.name: (layer.units, layer.dead_ratio) for layer in snapshot.layers}


def _conv1d(*, norm: bool) -> nn.Sequential:
    """Conv1d(4 -> 8 channels), optionally a batch norm, then ReLU; channel 3 is 0 at every position."""
    conv = nn.Conv1d(4, 8, 3, padding=1)
    assert conv.bias is not None
    with torch.no_grad():
        conv.bias[3] = -1e3
    return nn.Sequential(conv, nn.BatchNorm1d(8), nn.ReLU()) if norm else nn.Sequential(conv, nn.ReLU())


@pytest.mark.parametrize(
    ("norm", "relu"),
    [pytest.param(False, "1", id="conv1d-relu"), pytest.param(True, "2", id="conv1d-batchnorm-relu")],
)
def test_the_units_of_an_activation_after_a_conv1d_are_its_channels(norm: bool, relu: str) -> None:
    torch.manual_seed(0)
    found = health(small_inspector(_conv1d(norm=norm), (4, 50)), torch.randn(32, 4, 50))
    assert found["0"][0] == 8
    units, dead = found[relu]
    assert units == 8 and dead == pytest.approx(1 / 8)  # channel 3 is dead; the 50 positions are not units


def test_the_units_of_an_activation_over_a_sequence_are_its_features() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    with torch.no_grad():
        linear.bias[0] = -1e3
    found = health(small_inspector(nn.Sequential(linear, nn.ReLU()), (7, 6)), torch.randn(16, 7, 6))
    units, dead = found["1"]
    assert units == 5 and dead == pytest.approx(1 / 5)  # (tokens, features): the features are the units


class _Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def test_the_units_of_a_channels_last_linear_and_its_activation_are_the_last_axis() -> None:
    """A ConvNeXt/Swin-style MLP on ``(H, W, C)`` after a convolution: its units are the 6 features, 3 of them
    dead (channels-first whatever the layer read H = 5 units and no dead one)."""
    torch.manual_seed(0)
    linear = nn.Linear(8, 6)
    with torch.no_grad():
        linear.bias[:3] = -1e3
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _Permute(0, 2, 3, 1), linear, nn.ReLU(), _Permute(0, 3, 1, 2))
    found = health(small_inspector(block, (3, 5, 7)), torch.randn(16, 3, 5, 7))
    assert found == {"0": (8, None), "2": (6, None), "3": (6, 0.5)}


def test_the_units_of_an_activation_after_a_conv_and_a_pooling_are_its_channels() -> None:
    """Pooling keeps the conv's channels first (conv, max-pool, ReLU): the ReLU's units are the 8 channels."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert conv.bias is not None
    with torch.no_grad():
        conv.bias[3] = -1e3
    block = nn.Sequential(conv, nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    found = health(small_inspector(block, (3, 8, 8)), torch.randn(16, 3, 8, 8))
    assert found["2"] == (8, 1 / 8) and found["4"] == (5, None)


def test_relu6_and_hardtanh_to_0_and_6_give_the_same_figures() -> None:
    """Hardtanh(0, 6) is ReLU6: its 0 is the dead state (zero share, dead ratio), not a saturation; only 6 is."""
    torch.manual_seed(0)
    linear = nn.Linear(4, 8)
    found = small_inspector(nn.Sequential(linear, nn.ReLU6(), nn.Hardtanh(0.0, 6.0)), (4,))
    assert [layer.bounds for layer in found.layers[1:]] == [(None, 6.0), (None, 6.0)]
    assert [layer.zero_is_dead for layer in found.layers[1:]] == [True, True]
    inputs = torch.randn(16, 4) * 10  # outputs at 0, in between and at 6
    stats = {s.name: s for s in found.inspect(inputs).stats(3)}
    with torch.no_grad():
        capped = linear(inputs[3]).clamp(0.0, 6.0)
    expected = float((capped >= 6.0 * 0.99).float().mean())
    assert 0.0 < expected < 1.0 and stats["1"].zero_share > 0.0
    assert stats["1"].saturated_share == stats["2"].saturated_share == pytest.approx(expected)
    assert stats["1"].zero_share == stats["2"].zero_share
    hardsigmoid = small_inspector(nn.Sequential(nn.Linear(4, 8), nn.Hardsigmoid()), (4,)).layers[1]
    assert (hardsigmoid.bounds, hardsigmoid.zero_is_dead) == ((None, 1.0), True)
    assert small_inspector(nn.Sequential(nn.Hardtanh(-1.0, 1.0)), (4,)).layers[0].bounds == (-1.0, 1.0)


class _SharedAct(nn.Module):
    """One ReLU module used after two layers; the second use has units 0-7 of 16 dead."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 32)
        self.fc2 = nn.Linear(32, 16)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.fc1.bias[:] = 10.0
            self.fc2.bias[:8] = -1e3
            self.fc2.bias[8:] = 1e3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.fc2(self.act(self.fc1(x))))
        return out


def test_each_call_of_a_module_used_twice_is_inspected() -> None:
    found = small_inspector(_SharedAct(), (10,), inspect_layers=("act", "fc2"))
    inputs = torch.rand(16, 10)
    inspection = found.inspect(inputs)
    assert [stats.name for stats in inspection.stats(0)] == ["act", "act#2", "fc2"]
    assert [stats.shape for stats in inspection.stats(0)] == [(32,), (16,), (16,)]
    assert {name: figures for name, figures in health(found, inputs).items() if name != "fc2"} == {
        "act": (32, 0.0),
        "act#2": (16, 0.5),
    }


@pytest.mark.parametrize(
    ("side", "stored"),
    [
        pytest.param((64, 40), (64, 40), id="64x40-kept"),
        pytest.param((200, 130), (50, 33), id="200x130-averaged-over-4x4"),
        pytest.param((65, 65), (33, 33), id="65x65-averaged-over-2x2"),
    ],
)
def test_feature_maps_above_the_maximum_side_are_averaged_down(side: tuple[int, int], stored: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    found = small_inspector(nn.Sequential(conv, nn.ReLU()), (1, *side), feature_map_channels=2)
    inputs = torch.rand(2, 1, *side)
    maps = found.inspect(inputs).feature_maps(1)["0"]
    assert maps.shape == (2, *stored) and max(maps.shape[1:]) <= 64
    with torch.no_grad():
        direct = nn.functional.adaptive_avg_pool2d(conv(inputs[1:]), stored)[0].numpy()
    np.testing.assert_allclose(maps.to_array(), direct[list(maps.channels)], rtol=2e-3, atol=2e-3 * maps.scale)
