from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from attribution_workers.errors import AttributionError
from attribution_workers.explainer import Explainer, stack_maps
from attribution_workers.loader import GradCamView, LoadedModel, ModelSpec, load_model
from attribution_workers.methods import METHOD_NAMES, MethodName
from demo.models import digits

Batch = tuple[torch.Tensor, torch.Tensor]
FAST: dict[str, Any] = {"ig_steps": 16, "shap_samples": 8}
KERNEL_SHAP = {"shap_samples": 96}


class ExplodingHead(nn.Module):
    """A features/head model whose head fails after the Grad-CAM hooks have fired."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def head(self, activations: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"head exploded on {tuple(activations.shape)}")


def _hook_count(module: nn.Module) -> int:
    return sum(
        len(sub._forward_hooks) + len(sub._forward_pre_hooks) + len(sub._backward_hooks) + len(sub._backward_pre_hooks)
        for sub in module.modules()
    )


@pytest.mark.parametrize("method", [pytest.param(method, id=method) for method in METHOD_NAMES])
def test_every_method_maps_each_digit_to_a_finite_input_shaped_array(
    digits_model: LoadedModel, digits_batch: Batch, method: MethodName
) -> None:
    images, targets = digits_batch[0][:4], digits_batch[1][:4]
    settings = KERNEL_SHAP if method == "kernel_shap" else FAST

    explanations = Explainer(digits_model, methods=[method], **settings).explain(images, targets)

    maps = stack_maps(explanations, method)
    assert [explanation.target for explanation in explanations] == targets.tolist()
    assert maps.shape == (len(images), *digits_model.input_shape)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert np.abs(maps).max() > 0


@pytest.mark.parametrize("method", [pytest.param(method, id=method) for method in METHOD_NAMES if method != "gradcam"])
def test_every_method_but_gradcam_explains_table_rows(
    tabular_model: LoadedModel, tabular_batch: Batch, method: MethodName
) -> None:
    rows, targets = tabular_batch
    settings = KERNEL_SHAP if method == "kernel_shap" else {**FAST, "shap_stdev": 0.0}

    explanations = Explainer(tabular_model, methods=[method], occlusion_window=1, **settings).explain(rows, targets)

    maps = stack_maps(explanations, method)
    assert maps.shape == (len(rows), *tabular_model.input_shape)
    assert np.isfinite(maps).all()


def test_default_methods_include_gradcam_only_where_possible(
    digits_model: LoadedModel, tabular_model: LoadedModel
) -> None:
    assert Explainer(digits_model).methods == (
        "gradcam",
        "integrated_gradients",
        "occlusion",
        "saliency",
        "gradient_shap",
        "lime",
    )
    assert "gradcam" not in Explainer(tabular_model).methods


def test_integrated_gradients_deltas_are_small_against_the_logit_change(
    digits_model: LoadedModel, digits_batch: Batch
) -> None:
    images, targets = digits_batch

    explanations = Explainer(digits_model, methods=["integrated_gradients"]).explain(images, targets)

    with torch.no_grad():
        change = digits_model.module(images) - digits_model.module(digits_model.baseline.unsqueeze(0))
    deltas = np.array([explanation["integrated_gradients"].convergence_delta for explanation in explanations])
    relative = np.abs(deltas) / change.gather(1, targets.unsqueeze(1)).squeeze(1).abs().numpy()
    assert relative.max() < 0.05


@pytest.mark.parametrize("method", [pytest.param(m, id=m) for m in ("gradcam", "integrated_gradients", "occlusion")])
def test_a_row_gets_the_same_map_alone_as_in_a_batch(
    digits_model: LoadedModel, digits_batch: Batch, method: MethodName
) -> None:
    images, targets = digits_batch
    explainer = Explainer(digits_model, methods=[method], **FAST)

    in_batch = explainer.explain(images[:6], targets[:6])[4][method].values
    alone = explainer.explain(images[4:5], targets[4:5])[0][method].values

    assert np.allclose(in_batch, alone, atol=1e-5)


@pytest.mark.parametrize("method", [pytest.param(m, id=m) for m in ("gradcam", "saliency", "integrated_gradients")])
def test_hooks_are_removed_when_a_method_raises(method: MethodName) -> None:
    module = GradCamView(ExplodingHead())
    model = LoadedModel(
        module=module,
        device=torch.device("cpu"),
        input_shape=(1, 4, 4),
        num_classes=2,
        baseline=torch.zeros(1, 4, 4),
        gradcam_layer_name="cam",
    )

    with pytest.raises(AttributionError, match=f"{method} failed on a batch of 2: head exploded"):
        Explainer(model, methods=[method]).explain(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))

    assert _hook_count(module) == 0


def test_hooks_are_removed_after_a_successful_explanation(digits_model: LoadedModel, digits_batch: Batch) -> None:
    Explainer(digits_model, methods=["gradcam", "saliency"]).explain(*digits_batch)

    assert _hook_count(digits_model.module) == 0


@pytest.mark.parametrize(
    ("inputs", "targets", "message"),
    [
        pytest.param(torch.rand(2, 8, 8), torch.tensor([0, 1]), r"inputs must be \[B >= 1, 1, 8, 8\]", id="no-channel"),
        pytest.param(torch.rand(0, 1, 8, 8), torch.tensor([]), "inputs must be", id="empty"),
        pytest.param(torch.ones(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), "floating point", id="uint8"),
        pytest.param(torch.rand(2, 1, 8, 8), torch.tensor([0.0, 1.0]), "2 class indices", id="float-targets"),
        pytest.param(torch.rand(2, 1, 8, 8), torch.tensor([1]), "2 class indices", id="too-few-targets"),
        pytest.param(torch.rand(2, 1, 8, 8), torch.tensor([0, 10]), r"targets must lie in \[0, 10\)", id="bad-class"),
    ],
)
def test_explain_rejects_a_malformed_batch(
    digits_model: LoadedModel, inputs: torch.Tensor, targets: torch.Tensor, message: str
) -> None:
    with pytest.raises(AttributionError, match=message):
        Explainer(digits_model, methods=["saliency"]).explain(inputs, targets)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"methods": ["deeplift"]}, "distinct names", id="unknown-method"),
        pytest.param({"methods": []}, "distinct names", id="no-method"),
        pytest.param({"methods": ["saliency", "saliency"]}, "distinct names", id="duplicate"),
        pytest.param({"ig_steps": 0}, r"counts must be >= 1 .*'ig_steps': 0", id="zero-steps"),
        pytest.param({"shap_stdev": -1.0}, "shap_stdev >= 0, got -1.0", id="negative-noise"),
    ],
)
def test_explainer_rejects_bad_settings(digits_model: LoadedModel, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(AttributionError, match=message):
        Explainer(digits_model, **settings)


def test_gradcam_needs_a_gradcam_layer(tabular_model: LoadedModel) -> None:
    with pytest.raises(AttributionError, match="gradcam needs a Grad-CAM layer"):
        Explainer(tabular_model, methods=["gradcam"])


def test_explanation_names_its_methods(digits_model: LoadedModel, digits_batch: Batch) -> None:
    explainer = Explainer(digits_model, methods=["saliency", "gradcam"])
    explanation = explainer.explain(digits_batch[0][:1], digits_batch[1][:1])[0]

    assert explanation.methods == ("saliency", "gradcam")
    assert explanation["saliency"].convergence_delta is None
    with pytest.raises(KeyError, match="no 'occlusion' attribution"):
        explanation["occlusion"]
    assert explainer.with_model(digits_model.randomised(seed=0)).methods == explainer.methods


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_maps_match_the_cpu_ones(digits_path: Path, digits_model: LoadedModel, digits_batch: Batch) -> None:
    spec = ModelSpec(torchscript=digits_path, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES)
    on_cuda = load_model(spec, device="cuda")
    methods: list[MethodName] = ["gradcam", "integrated_gradients", "occlusion", "saliency"]

    cuda_maps = Explainer(on_cuda, methods=methods).explain(*digits_batch)
    cpu_maps = Explainer(digits_model, methods=methods).explain(*digits_batch)

    for method in methods:
        assert np.allclose(stack_maps(cuda_maps, method), stack_maps(cpu_maps, method), atol=1e-3), method
