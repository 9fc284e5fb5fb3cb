"""What the reference models share: a fixed stratified split, deterministic training, atomic TorchScript files."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Split:
    """One side of a data split: model-ready float32 features and int64 class labels."""

    features: NDArray[np.float32]
    """``[N, *input_shape]``."""
    labels: NDArray[np.int64]
    """``[N]``."""


@dataclass(frozen=True)
class DatasetSplit:
    """A fixed stratified train/test split; the test side is what tests and demos replay."""

    train: Split
    test: Split
    reference: Split | None = None
    """Held out of both: never trained on, never replayed. The drift reference of the demo (see ``hold_out``)."""


def hold_out(split: DatasetSplit, *, fraction: float, seed: int) -> DatasetSplit:
    """``split`` with a stratified ``fraction`` of its training side moved to ``reference``.

    A drift reference must look like clean serving traffic, which the model has never seen:
    its training data would make confident, tightly clustered embeddings that unseen data
    never matches, so clean traffic would read as drifted.
    """
    kept = stratified_split(split.train.features, split.train.labels, test_fraction=fraction, seed=seed)
    return DatasetSplit(train=kept.train, test=split.test, reference=kept.test)


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """How a reference model is trained (Adam on cross-entropy, shuffled mini-batches)."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int


def stratified_split(
    features: NDArray[np.float32], labels: NDArray[np.int64], *, test_fraction: float, seed: int
) -> DatasetSplit:
    """Split once, stratified by label, with a fixed seed so every caller sees the same test set."""
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=test_fraction, stratify=labels, random_state=seed
    )
    return DatasetSplit(
        train=Split(features=np.ascontiguousarray(train_x), labels=np.ascontiguousarray(train_y)),
        test=Split(features=np.ascontiguousarray(test_x), labels=np.ascontiguousarray(test_y)),
    )


def train(build: Callable[[], ModuleT], train_split: Split, plan: TrainingPlan) -> ModuleT:
    """Build a module and train it on the CPU; the same plan gives the same weights (on the same machine).

    Initialisation and shuffling draw from a forked, seeded RNG, so the caller's global
    random state is left as it was. The module comes back in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(plan.seed)
        module = build()
        _fit(module, train_split, plan)
    return module.eval()


def _fit(module: nn.Module, train: Split, plan: TrainingPlan) -> None:
    features = torch.from_numpy(train.features)
    labels = torch.from_numpy(train.labels)
    shuffler = torch.Generator().manual_seed(plan.seed)
    optimiser = torch.optim.Adam(module.parameters(), lr=plan.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    for _ in range(plan.epochs):
        order = torch.randperm(len(labels), generator=shuffler)
        for batch in torch.split(order, plan.batch_size):
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(module(features[batch]), labels[batch])
            loss.backward()
            optimiser.step()


def save_torchscript(module: nn.Module, path: Path) -> Path:
    """Script ``module`` and write it to ``path`` atomically (a concurrent reader never sees half a file)."""
    scripted = torch.jit.script(module.eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        torch.jit.save(scripted, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
