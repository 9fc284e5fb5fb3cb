"""Fixtures of the attribution-worker tests: the reference models, trained once per session into a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attribution_workers.loader import LoadedModel, ModelSpec, load_model
from attribution_workers.models import digits, tabular
from attribution_workers.models.training import DatasetSplit

HERE = Path(__file__).parent

TORCHSCRIPT_DEPRECATIONS = tuple(
    f"ignore:`torch.jit.{name}` is deprecated:DeprecationWarning" for name in ("script", "save", "load")
)
"""torch 2.13 warns on every TorchScript call; the models are TorchScript by design, so only these are let through."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            for warning in TORCHSCRIPT_DEPRECATIONS:
                item.add_marker(pytest.mark.filterwarnings(warning))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and spinning OpenMP threads crawl on a busy 2-core runner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def digits_split() -> DatasetSplit:
    return digits.load_digits_split()


@pytest.fixture(scope="session")
def digits_path(model_dir: Path) -> Path:
    return digits.ensure_digits_model(model_dir)


@pytest.fixture(scope="session")
def digits_model(digits_path: Path) -> LoadedModel:
    spec = ModelSpec(torchscript=digits_path, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES)
    return load_model(spec, device="cpu")


@pytest.fixture(scope="session")
def digits_batch(digits_model: LoadedModel, digits_split: DatasetSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 16 test images and the model's predicted classes."""
    return _predicted(digits_model, torch.from_numpy(digits_split.test.features[:16]))


@pytest.fixture(scope="session")
def tabular_split() -> DatasetSplit:
    return tabular.load_breast_cancer_split()


@pytest.fixture(scope="session")
def tabular_path(model_dir: Path) -> Path:
    return tabular.ensure_breast_cancer_model(model_dir)


@pytest.fixture(scope="session")
def tabular_model(tabular_path: Path) -> LoadedModel:
    spec = ModelSpec(torchscript=tabular_path, input_shape=(tabular.NUM_FEATURES,), num_classes=tabular.NUM_CLASSES)
    return load_model(spec, device="cpu")


@pytest.fixture(scope="session")
def tabular_batch(tabular_model: LoadedModel, tabular_split: DatasetSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 test rows and the model's predicted classes."""
    return _predicted(tabular_model, torch.from_numpy(tabular_split.test.features[:8]))


def _predicted(model: LoadedModel, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return inputs, model.module(inputs).argmax(dim=1)
