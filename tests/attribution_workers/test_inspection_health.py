"""Layer-health figures on the real digits CNN and on small real torch models: what each figure rests on, and
the inputs, layers and activations where a figure cannot be measured (None rather than a misleading number)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from small_models import small_inspector
from torch import nn

from attribution_workers.config import AttributionConfig
from attribution_workers.inspection import LayerInspector
from attribution_workers.inspection_health import HealthSnapshot, LayerHealthTracker
from attribution_workers.loader import ModelSpec, load_model
from demo.models import digits
from demo.models.training import DatasetSplit
from sampler.layers import LayerHealth, LayerHealthReport

RELUS = ("conv.1", "conv.4", "dense.2")
"""The digits CNN's activations (ReLU): the layers whose dead ratio is measured."""


@pytest.fixture(scope="module")
def digits_inspector(digits_path: Path) -> LayerInspector:
    spec = ModelSpec(
        factory=digits.FACTORY,
        weights=digits.ensure_digits_weights(digits_path),
        input_shape=digits.INPUT_SHAPE,
        num_classes=digits.NUM_CLASSES,
    )
    return LayerInspector(load_model(spec, device="cpu"), config(spec))


def config(spec: ModelSpec, **fields: Any) -> AttributionConfig:
    return AttributionConfig(model=spec, methods=("saliency",), **fields)


def feed(
    tracker: LayerHealthTracker, found: LayerInspector, inputs: NDArray[np.float32] | torch.Tensor
) -> HealthSnapshot:
    batch = torch.as_tensor(inputs)
    inspection = found.inspect(batch)
    for row in range(len(batch)):
        tracker.add("v1", inspection, row)
    snapshot = tracker.snapshot("v1")
    assert snapshot is not None
    return snapshot


def by_name(snapshot: HealthSnapshot) -> dict[str, LayerHealth]:
    return {layer.name: layer for layer in snapshot.layers}


def test_an_input_whose_activations_overflow_is_kept_out_of_the_baseline_and_counted(
    digits_inspector: LayerInspector, digits_split: DatasetSplit
) -> None:
    images = digits_split.test.features
    huge = np.full_like(images[:1], 3e38)  # finite float32, as the worker accepts it; inf/NaN inside the model
    tracker = LayerHealthTracker(window=8)
    overflowed = digits_inspector.inspect(torch.from_numpy(huge))
    nonfinite = {c.layer.name for c in overflowed.captures if not np.isfinite(c.unit_means).all()}
    assert "classifier" in nonfinite

    feed(tracker, digits_inspector, np.concatenate([huge, images[:7]]))  # the huge input in the baseline
    layers = by_name(feed(tracker, digits_inspector, images[7:40]))

    for name, layer in layers.items():
        assert layer.activation_shift is not None and np.isfinite(layer.activation_shift), name
        assert layer.nonfinite_inputs == (1 if name in nonfinite else 0), name
        assert layer.inputs == 8, name


def test_the_shift_is_none_while_the_recent_window_overlaps_the_baseline(
    digits_inspector: LayerInspector, digits_split: DatasetSplit
) -> None:
    images = digits_split.test.features
    tracker = LayerHealthTracker(window=8)
    assert {layer.activation_shift for layer in feed(tracker, digits_inspector, images[:8]).layers} == {None}
    for count in range(9, 16):  # the recent window still holds baseline inputs
        snapshot = feed(tracker, digits_inspector, images[count - 1 : count])
        assert {layer.activation_shift for layer in snapshot.layers} == {None}, f"after {count} inputs"
    after = feed(tracker, digits_inspector, images[15:16])  # 16 = 2 K: the window is the 8 inputs after the baseline
    assert all(layer.activation_shift is not None and layer.activation_shift > 0 for layer in after.layers)


def test_the_dead_ratio_waits_for_a_full_window_and_each_layer_says_what_it_rests_on(
    digits_inspector: LayerInspector, digits_split: DatasetSplit
) -> None:
    images = digits_split.test.features
    tracker = LayerHealthTracker(window=8)
    for count in range(1, 8):
        layers = by_name(feed(tracker, digits_inspector, images[count - 1 : count]))
        assert {name: layer.dead_ratio for name, layer in layers.items()} == dict.fromkeys(layers, None)
        assert {layer.inputs for layer in layers.values()} == {count}
    full = by_name(feed(tracker, digits_inspector, images[7:8]))
    for name in RELUS:
        dead = full[name].dead_ratio
        assert dead is not None and 0.0 <= dead < 1.0, name
    assert {layer.inputs for layer in full.values()} == {8}
    rows = list(full.values())
    report = LayerHealthReport(worker="w", version="v1", samples=8, window=8, updated_at=1.0, layers=rows)
    assert LayerHealthReport.model_validate_json(report.model_dump_json()) == report


def test_a_report_of_an_older_worker_stays_readable() -> None:
    old = (
        '{"worker": "w", "version": "v1", "samples": 3, "window": 3, "updated_at": 1.0, "layers": [{"name": "a", '
        '"kind": "activation", "units": 4, "dead_ratio": 0.25, "saturated_ratio": null, "activation_shift": null}]}'
    )
    layer = LayerHealthReport.model_validate_json(old).layers[0]
    assert layer.dead_ratio == 0.25 and layer.inputs is None and layer.nonfinite_inputs == 0


def _stuck_half(activation: nn.Module) -> nn.Sequential:
    """Linear(4, 6) then ``activation``; units 0-2 get a bias of -1000, deep in the activation's flat region, and
    units 3-5 one of +10, in its live region."""
    linear = nn.Linear(4, 6)
    with torch.no_grad():
        linear.bias[:3] = -1e3
        linear.bias[3:] = 10.0
    return nn.Sequential(linear, activation)


@pytest.mark.parametrize(
    ("activation", "dead"),
    [
        pytest.param(nn.ReLU(), 0.5, id="relu"),
        pytest.param(nn.ReLU6(), 0.5, id="relu6"),
        pytest.param(nn.Hardswish(), 0.5, id="hardswish"),
        pytest.param(nn.LeakyReLU(), None, id="leaky-relu"),
        pytest.param(nn.SiLU(), None, id="silu"),
        pytest.param(nn.GELU(), None, id="gelu"),
        pytest.param(nn.ELU(), None, id="elu"),
        pytest.param(nn.Tanh(), None, id="tanh"),
    ],
)
def test_the_dead_ratio_is_measured_only_where_exact_zero_is_the_dead_state(
    activation: nn.Module, dead: float | None
) -> None:
    found = small_inspector(_stuck_half(activation), (4,))
    layers = by_name(feed(LayerHealthTracker(window=16), found, torch.rand(16, 4)))
    assert layers["0"].dead_ratio is None  # a linear layer's output is not exactly 0 when its unit is unused
    assert layers["1"].dead_ratio == dead
    assert layers["1"].inputs == 16


def _ramp() -> nn.Sequential:
    """``ReLU([1, x - 1])`` for a scalar input: a constant unit, and one that is 0 for x <= 1."""
    linear = nn.Linear(1, 2)
    with torch.no_grad():
        linear.weight[:] = torch.tensor([[0.0], [1.0]])
        linear.bias[:] = torch.tensor([1.0, -1.0])
    return nn.Sequential(linear, nn.ReLU())


def _step() -> nn.Sequential:
    """``ReLU(x - 1)``: 0 for every x <= 1."""
    linear = nn.Linear(1, 1)
    with torch.no_grad():
        linear.weight[:] = 1.0
        linear.bias[:] = -1.0
    return nn.Sequential(linear, nn.ReLU())


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        pytest.param(_ramp, 1e-3, id="constant-nonzero-layer: eps from the layer's scale"),
        pytest.param(_step, None, id="layer-all-zero-in-baseline: no scale, no shift"),
    ],
)
def test_the_shift_of_a_layer_constant_in_its_baseline_does_not_explode(
    model: Callable[[], nn.Module], limit: float | None
) -> None:
    found = small_inspector(model(), (1,))
    tracker = LayerHealthTracker(window=4)
    feed(tracker, found, torch.tensor([[0.1], [0.2], [0.3], [0.4]]))  # the baseline: the ReLU output is constant
    recent = feed(tracker, found, torch.tensor([[0.5], [0.5], [0.5], [1.0 + 2.0**-19]]))  # moves by ~2e-6 once
    shift = by_name(recent)["1"].activation_shift
    if limit is None:
        assert shift is None
    else:
        assert shift is not None and shift < limit


def _live_and_dead() -> nn.Sequential:
    """``ReLU(x)`` and ``ReLU(-x - 10)``: the second unit is dead for every x > -10."""
    linear = nn.Linear(1, 2)
    with torch.no_grad():
        linear.weight[:] = torch.tensor([[1.0], [-1.0]])
        linear.bias[:] = torch.tensor([0.0, -10.0])
    return nn.Sequential(linear, nn.ReLU())


def test_units_dead_through_the_baseline_and_still_dead_do_not_water_down_the_shift() -> None:
    """The mean over all units counted a dead unit's 0: a layer with 23 of 64 dead units read 0.64 of its shift."""
    found = small_inspector(_live_and_dead(), (1,))
    tracker = LayerHealthTracker(window=4)
    baseline = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    feed(tracker, found, baseline)
    layer = by_name(feed(tracker, found, baseline + 1.0))["1"]

    std = float(np.std([1.0, 2.0, 3.0, 4.0]))
    eps = 0.1 * std / 2  # a tenth of the mean std over both units (the dead one's is 0)
    assert layer.shift_units == 1
    assert layer.activation_shift == pytest.approx(1.0 / (std + eps))


def test_a_dead_unit_that_comes_alive_counts_in_the_shift() -> None:
    found = small_inspector(_live_and_dead(), (1,))
    tracker = LayerHealthTracker(window=4)
    baseline = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    feed(tracker, found, baseline)
    layer = by_name(feed(tracker, found, torch.tensor([[1.0], [2.0], [3.0], [-30.0]])))["1"]

    assert layer.shift_units == 2
    assert layer.activation_shift is not None and layer.activation_shift > 10
