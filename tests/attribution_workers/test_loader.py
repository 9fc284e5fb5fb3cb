from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

from attribution_workers.errors import AttributionError
from attribution_workers.loader import GradCamView, LoadedModel, ModelSpec, load_model, resolve_device
from attribution_workers.main import build_runtimes
from attribution_workers.settings import WorkerSettings
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import load_torchscript

FACTORY = "demo.models.digits:DigitsCNN"


class NotWeights:
    """Something a pickle could carry that is not a tensor."""


def _digits_spec(**fields: Any) -> ModelSpec:
    return ModelSpec(input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES, **fields)


@pytest.fixture(scope="module")
def digits_state(digits_path: Path) -> dict[str, torch.Tensor]:
    scripted: nn.Module = load_torchscript(digits_path)
    return {name: tensor.clone() for name, tensor in scripted.state_dict().items()}


@pytest.fixture(scope="module")
def digits_images(digits_batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return digits_batch[0]


def test_torchscript_model_is_ready_to_explain(digits_model: LoadedModel) -> None:
    assert isinstance(digits_model.module, GradCamView)
    assert isinstance(digits_model.gradcam_layer, nn.Identity)
    assert digits_model.device == torch.device("cpu")
    assert digits_model.input_shape == digits.INPUT_SHAPE
    assert torch.equal(digits_model.baseline, torch.zeros(digits.INPUT_SHAPE))
    assert not digits_model.module.training
    assert not any(parameter.requires_grad for parameter in digits_model.module.parameters())


@pytest.mark.parametrize(
    ("suffix", "gradcam_layer", "expected_layer"),
    [
        pytest.param(".pt", None, nn.Identity, id="torch-save-features-head"),
        pytest.param(".safetensors", None, nn.Identity, id="safetensors-features-head"),
        pytest.param(".safetensors", "conv.3", nn.Conv2d, id="safetensors-named-layer"),
    ],
)
def test_factory_with_weights_gives_the_same_logits(
    tmp_path: Path,
    digits_state: dict[str, torch.Tensor],
    digits_model: LoadedModel,
    digits_images: torch.Tensor,
    suffix: str,
    gradcam_layer: str | None,
    expected_layer: type[nn.Module],
) -> None:
    weights = tmp_path / f"digits{suffix}"
    if suffix == ".safetensors":
        save_file(digits_state, str(weights))
    else:
        torch.save(digits_state, weights)

    loaded = load_model(_digits_spec(factory=FACTORY, weights=weights, gradcam_layer=gradcam_layer), device="cpu")

    with torch.no_grad():
        assert torch.allclose(loaded.module(digits_images), digits_model.module(digits_images), atol=1e-5)
    assert isinstance(loaded.gradcam_layer, expected_layer)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(
            {"conv.0.weight": torch.zeros(1), "extra": NotWeights()}, "not a readable state dict", id="object"
        ),
        pytest.param(NotWeights(), "not a readable state dict", id="bare-object"),
        pytest.param([torch.zeros(1)], "not a mapping of names to tensors", id="list-of-tensors"),
        pytest.param({"epoch": 3}, "not a mapping of names to tensors", id="checkpoint-without-tensors"),
    ],
)
def test_factory_refuses_files_that_are_not_plain_weights(tmp_path: Path, payload: object, message: str) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(payload, weights)

    with pytest.raises(AttributionError, match=message):
        load_model(_digits_spec(factory=FACTORY, weights=weights), device="cpu")


def test_factory_refuses_weights_of_another_architecture(tmp_path: Path) -> None:
    weights = tmp_path / "other.safetensors"
    save_file({"conv.0.weight": torch.zeros(3)}, str(weights))

    with pytest.raises(AttributionError, match="do not fit"):
        load_model(_digits_spec(factory=FACTORY, weights=weights), device="cpu")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"num_classes": 3}, r"expected logits of shape \(1, 3\)", id="wrong-num-classes"),
        pytest.param({"input_shape": (1, 5)}, "does not run on one input", id="wrong-input-shape"),
    ],
)
def test_load_checks_the_model_against_the_spec(digits_path: Path, fields: dict[str, Any], message: str) -> None:
    spec = ModelSpec(**{"torchscript": digits_path, "input_shape": digits.INPUT_SHAPE, "num_classes": 10, **fields})

    with pytest.raises(AttributionError, match=message):
        load_model(spec, device="cpu")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({}, "exactly one", id="no-source"),
        pytest.param({"torchscript": Path("m.pt"), "factory": FACTORY}, "exactly one", id="two-sources"),
        pytest.param({"factory": FACTORY}, "needs 'weights'", id="factory-without-weights"),
        pytest.param({"factory": "digits.DigitsCNN", "weights": Path("w.pt")}, "package.module:callable", id="bad-ref"),
        pytest.param({"torchscript": Path("m.pt"), "gradcam_layer": "conv"}, "'factory' models only", id="ts-layer"),
    ],
)
def test_spec_rejects_inconsistent_sources(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _digits_spec(**fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"factory": "attribution_workers.nowhere:Model"}, "cannot be imported", id="missing-module"),
        pytest.param({"factory": "demo.models.digits:PLAN"}, "not a callable", id="not-callable"),
        pytest.param({"factory": FACTORY, "gradcam_layer": "conv.9"}, "not a submodule", id="missing-layer"),
        pytest.param({"torchscript": Path("/nonexistent/model.pt")}, "cannot be loaded as TorchScript", id="no-file"),
    ],
)
def test_load_explains_what_is_wrong(
    tmp_path: Path, digits_state: dict[str, torch.Tensor], fields: dict[str, Any], message: str
) -> None:
    weights = tmp_path / "digits.safetensors"
    save_file(digits_state, str(weights))
    if "factory" in fields:
        fields = {"weights": weights, **fields}

    with pytest.raises(AttributionError, match=message):
        load_model(_digits_spec(**fields), device="cpu")


def test_baseline_comes_from_the_model(tabular_model: LoadedModel, tabular_split: DatasetSplit) -> None:
    expected = torch.from_numpy(tabular_split.train.features.mean(axis=0))

    assert torch.allclose(tabular_model.baseline, expected, rtol=1e-5)
    assert tabular_model.gradcam_layer is None


def test_device_defaults_to_cuda_when_available() -> None:
    assert resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_asking_for_missing_cuda_is_an_error() -> None:
    with pytest.raises(AttributionError, match="CUDA is not available"):
        resolve_device("cuda")


def test_randomised_copy_redraws_weights_and_leaves_the_original(
    digits_model: LoadedModel, digits_images: torch.Tensor
) -> None:
    with torch.no_grad():
        before = digits_model.module(digits_images)
        randomised = digits_model.randomised(seed=1)
        after = digits_model.module(digits_images)
        random_logits = randomised.module(digits_images)

    assert torch.equal(before, after)
    assert not torch.allclose(before, random_logits)
    assert not randomised.module.training
    assert not any(parameter.requires_grad for parameter in randomised.module.parameters())
    assert isinstance(randomised.gradcam_layer, nn.Identity)
    assert randomised.gradcam_layer is not digits_model.gradcam_layer
    for (name, trained), (_, fresh) in zip(
        digits_model.module.named_parameters(), randomised.module.named_parameters(), strict=True
    ):
        assert not torch.equal(trained, fresh), name


def test_a_model_section_that_does_not_fit_its_model_stops_the_worker_naming_it(
    make_worker_settings: Callable[..., WorkerSettings], digits_path: Path
) -> None:
    """One line naming the section, not a traceback that leaves the reader to find which model it was."""
    spec = {"torchscript": str(digits_path), "input_shape": [1, 16, 16], "num_classes": 10}
    settings = make_worker_settings(models={"digits": {"attribution": {"model": spec, "methods": ["saliency"]}}})

    with pytest.raises(SystemExit, match=r"^\[models\.digits\.attribution\]: the model does not run on one input"):
        build_runtimes(settings)
