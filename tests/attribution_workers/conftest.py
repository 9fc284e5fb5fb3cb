"""Fixtures of the attribution-worker tests: the reference models, trained once per session into a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attribution_workers.loader import LoadedModel, ModelSpec, load_model
from attribution_workers.models import digits, tabular
from attribution_workers.models.training import DatasetSplit


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
