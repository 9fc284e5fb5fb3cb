"""A small CNN on scikit-learn's bundled 8x8 digits, saved as TorchScript with Grad-CAM and embedding entry points."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

from demo.models.training import (
    DatasetSplit,
    TrainingPlan,
    hold_out,
    save_torchscript,
    stratified_split,
    train,
)

INPUT_SHAPE = (1, 8, 8)
"""One image: a single grey channel of 8x8 pixels in [0, 1]."""
NUM_CLASSES = 10
EMBEDDING_DIM = 64
"""Width of the penultimate layer returned by ``embed``."""
FILE_NAME = "digits-cnn-v1.pt"
"""Cache file name; the version changes whenever the architecture or the training plan does."""
HELD_OUT_FILE_NAME = "digits-cnn-v1-heldout.pt"
"""Cache file name of the model trained without the held-out drift reference (the demo's)."""
REFERENCE_FRACTION = 1 / 3
"""Share of the training side held out as the drift reference: 449 images, enough for the online detector
(PCA fits on half of the rows, the detector needs ``4 x window_size + 1`` of the other half)."""
FACTORY = "demo.models.digits:DigitsCNN"
"""The eager model, for a worker's ``factory`` (with :func:`ensure_digits_weights`): hooks need it."""
PLAN = TrainingPlan(epochs=20, batch_size=64, learning_rate=3e-3, seed=0)

_TEST_FRACTION = 0.25
_SPLIT_SEED = 0
_PIXEL_MAX = 16.0


class DigitsCNN(nn.Module):
    """conv-relu-pool-conv-relu (``features``, 32x4x4) then dense-relu (``embed``, 64) and a linear classifier.

    ``head(features(x)) == forward(x)``, which is what lets the loader hook Grad-CAM
    between the two even after scripting (TorchScript modules take no hooks).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, EMBEDDING_DIM), nn.ReLU())
        self.classifier = nn.Linear(EMBEDDING_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 10]`` of images ``[B, 1, 8, 8]``."""
        return self.head(self.features(x))

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last convolutional activations ``[B, 32, 4, 4]`` (the Grad-CAM layer)."""
        activations: torch.Tensor = self.conv(x)
        return activations

    @torch.jit.export
    def head(self, activations: torch.Tensor) -> torch.Tensor:
        """Logits from ``features`` activations."""
        logits: torch.Tensor = self.classifier(self.dense(activations))
        return logits

    @torch.jit.export
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``[B, 64]`` (what the drift monitors watch)."""
        embedding: torch.Tensor = self.dense(self.features(x))
        return embedding


def load_digits_split(*, hold_out_reference: bool = False) -> DatasetSplit:
    """The bundled digits as ``[N, 1, 8, 8]`` float32 in [0, 1], split 75/25 stratified with a fixed seed.

    ``hold_out_reference`` moves a third of the training side to ``reference`` (898 train, 449 reference,
    450 test); the test side is the same either way.
    """
    digits = load_digits()
    features = (digits.images / _PIXEL_MAX).astype(np.float32)[:, np.newaxis]
    split = stratified_split(features, digits.target.astype(np.int64), test_fraction=_TEST_FRACTION, seed=_SPLIT_SEED)
    return hold_out(split, fraction=REFERENCE_FRACTION, seed=_SPLIT_SEED) if hold_out_reference else split


def train_digits_cnn(split: DatasetSplit, *, plan: TrainingPlan = PLAN) -> DigitsCNN:
    """A freshly trained eager model (a few seconds on one CPU core with the default plan)."""
    return train(DigitsCNN, split.train, plan)


def ensure_digits_model(cache_dir: Path, *, hold_out_reference: bool = False) -> Path:
    """Path of the scripted digits model in ``cache_dir``, training and saving it first if it is missing.

    ``hold_out_reference``: the model trained without ``load_digits_split(hold_out_reference=True).reference``.
    """
    path = cache_dir / (HELD_OUT_FILE_NAME if hold_out_reference else FILE_NAME)
    if not path.exists():
        save_torchscript(train_digits_cnn(load_digits_split(hold_out_reference=hold_out_reference)), path)
    return path


def ensure_digits_weights(model_path: Path) -> Path:
    """The weights of the scripted model at ``model_path`` as ``.safetensors`` beside it, written once.

    A worker loads the eager :class:`DigitsCNN` (``FACTORY``) with them to inspect its layers: a scripted
    module takes no forward hooks. Taken from the scripted file, so both run exactly the same weights.
    """
    path = model_path.with_suffix(".safetensors")
    if path.exists():
        return path
    scripted: torch.nn.Module = torch.jit.load(str(model_path), map_location="cpu")  # type: ignore[no-untyped-call]
    state = {name: tensor.detach().clone().contiguous() for name, tensor in scripted.state_dict().items()}
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        save_file(state, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
