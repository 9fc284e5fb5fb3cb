"""Fixtures of the attribution-worker tests: batches of the demo models (the models are in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from attribution_workers.loader import LoadedModel
from demo.models.training import DatasetSplit


@pytest.fixture(scope="session")
def digits_batch(digits_model: LoadedModel, digits_split: DatasetSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 16 test images and the model's predicted classes."""
    return _predicted(digits_model, torch.from_numpy(digits_split.test.features[:16]))


@pytest.fixture(scope="session")
def tabular_batch(tabular_model: LoadedModel, tabular_split: DatasetSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 test rows and the model's predicted classes."""
    return _predicted(tabular_model, torch.from_numpy(tabular_split.test.features[:8]))


def _predicted(model: LoadedModel, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return inputs, model.module(inputs).argmax(dim=1)
