"""Fixtures of the attribution-worker tests: batches of the demo models (the models are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from small_models import served_confidences, served_logits

from attribution_workers.loader import LoadedModel
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent

Served = Callable[[Sequence[SampledEvent]], list[SampledEvent]]


@pytest.fixture(scope="session")
def digits_batch(digits_model: LoadedModel, digits_split: DatasetSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 16 test images and the model's predicted classes."""
    return _predicted(digits_model, torch.from_numpy(digits_split.test.features[:16]))


@pytest.fixture(scope="session")
def tabular_batch(tabular_model: LoadedModel, tabular_split: DatasetSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 test rows and the model's predicted classes."""
    return _predicted(tabular_model, torch.from_numpy(tabular_split.test.features[:8]))


@pytest.fixture(scope="session")
def as_served(digits_model: LoadedModel) -> Served:
    """Digits events with the ``confidence`` a server running the worker's very model reports: its softmax
    probability of the reported class. ``sampled_digit`` reports 0.9 by default whatever the digit, which the
    worker's confidence check rightly takes for another model's figure (the model gives most test digits 0.99
    and more)."""

    def served(events: Sequence[SampledEvent]) -> list[SampledEvent]:
        inputs = [event.input.decode().reshape(digits_model.input_shape) for event in events if event.input]
        assert len(inputs) == len(events), "every event carries its input"
        logits = served_logits(digits_model.module, np.stack(inputs))
        confidences = served_confidences(logits, [event.predicted for event in events])
        return [
            event.model_copy(update={"confidence": confidence})
            for event, confidence in zip(events, confidences, strict=True)
        ]

    return served


def _predicted(model: LoadedModel, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return inputs, model.module(inputs).argmax(dim=1)
