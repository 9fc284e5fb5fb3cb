"""A small MLP on scikit-learn's bundled breast-cancer table; it standardises raw features itself.

The train-split mean and standard deviation live in the model as buffers, so callers send
raw measurements and the attribution baseline (``baseline()``) is the training mean, which
is all zeros once standardised.

No ``from __future__ import annotations`` here: TorchScript must read the buffer
annotations of :class:`BreastCancerMLP` as types, not strings.
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from demo.models.training import (
    DatasetSplit,
    Split,
    TrainingPlan,
    save_torchscript,
    stratified_split,
    train,
)

NUM_FEATURES = 30
NUM_CLASSES = 2
EMBEDDING_DIM = 16
"""Width of the penultimate layer returned by ``embed``."""
FILE_NAME = "breast-cancer-mlp-v1.pt"
"""Cache file name; the version changes whenever the architecture or the training plan does."""
PLAN = TrainingPlan(epochs=40, batch_size=32, learning_rate=1e-3, seed=0)

_TEST_FRACTION = 0.25
_SPLIT_SEED = 0


class BreastCancerMLP(nn.Module):
    """standardise, dense-relu (32), dense-relu (``embed``, 16), linear classifier (malignant 0, benign 1).

    Constructed with the identity standardisation; training (or a state dict) sets
    ``mean`` and ``scale``.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(NUM_FEATURES))
        self.register_buffer("scale", torch.ones(NUM_FEATURES))
        self.dense = nn.Sequential(
            nn.Linear(NUM_FEATURES, 32),
            nn.ReLU(),
            nn.Linear(32, EMBEDDING_DIM),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(EMBEDDING_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 2]`` of raw feature rows ``[B, 30]``."""
        logits: torch.Tensor = self.classifier(self.embed(x))
        return logits

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``[B, 16]`` (what the drift monitors watch)."""
        embedding: torch.Tensor = self.dense((x - self.mean) / self.scale)
        return embedding

    @torch.jit.export
    def baseline(self) -> torch.Tensor:
        """Attribution baseline ``[30]``: the training mean of every raw feature."""
        return self.mean.clone()


def load_breast_cancer_split() -> DatasetSplit:
    """Raw features ``[N, 30]`` float32, split 75/25 stratified with a fixed seed."""
    table = load_breast_cancer()
    return stratified_split(
        table.data.astype(np.float32),
        table.target.astype(np.int64),
        test_fraction=_TEST_FRACTION,
        seed=_SPLIT_SEED,
    )


def feature_names() -> tuple[str, ...]:
    """The 30 feature names, in input order."""
    return tuple(str(name) for name in load_breast_cancer().feature_names)


def train_breast_cancer_mlp(split: DatasetSplit, *, plan: TrainingPlan = PLAN) -> BreastCancerMLP:
    """A freshly trained eager model whose standardisation uses ``split.train`` statistics only."""
    return train(lambda: _standardised_for(split.train), split.train, plan)


def ensure_breast_cancer_model(cache_dir: Path) -> Path:
    """Path of the scripted model in ``cache_dir``, training and saving it first if it is missing."""
    path = cache_dir / FILE_NAME
    if not path.exists():
        save_torchscript(train_breast_cancer_mlp(load_breast_cancer_split()), path)
    return path


def _standardised_for(train_split: Split) -> BreastCancerMLP:
    model = BreastCancerMLP()
    features = torch.from_numpy(train_split.features)
    std = features.std(dim=0)
    model.mean.copy_(features.mean(dim=0))
    model.scale.copy_(torch.where(std > 0, std, torch.ones_like(std)))
    return model
