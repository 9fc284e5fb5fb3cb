"""The digits CNN trained without its held-out third, and its outputs on clean and corrupted images.

The held-out images (``split.reference``) are clean labelled data the model never saw, the test images
are unseen traffic, corrupted as in the demo's drift phase (:func:`demo.corruptions.corrupt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from demo.corruptions import Corruption, corrupt
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import load_torchscript

TORCHSCRIPT_WARNINGS = [
    pytest.mark.filterwarnings(f"ignore:`torch.jit.{verb}` is deprecated:DeprecationWarning")
    for verb in ("script", "save", "load")
]
"""torch deprecates TorchScript, the demo's model format (as pytest.ini says); the tests of ``monitors`` turn
every other warning into an error. Use as ``pytestmark`` of a module that loads the model."""


@dataclass(frozen=True)
class HeldOutDigits:
    module: torch.jit.ScriptModule
    split: DatasetSplit

    def probabilities(self, images: NDArray[np.float32]) -> NDArray[np.float64]:
        with torch.no_grad():
            logits = self.module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
            return torch.softmax(logits.double(), dim=1).numpy()

    def held_out(self) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Probabilities and labels of the clean held-out images."""
        assert self.split.reference is not None
        return self.probabilities(self.split.reference.features), self.split.reference.labels

    def traffic(
        self, *, severity: float, seed: int, kinds: tuple[Corruption, ...] = ("noise", "blur", "occlusion")
    ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        """Probabilities and labels of the test images, corrupted as in the demo's drift phase."""
        images, _ = corrupt(self.split.test.features, seed=seed, severity=severity, kinds=kinds)
        return self.probabilities(images), self.split.test.labels


def load_held_out_digits(model_dir: Path) -> HeldOutDigits:
    path = digits.ensure_digits_model(model_dir, hold_out_reference=True)
    module = load_torchscript(path)
    module.eval()
    return HeldOutDigits(module=module, split=digits.load_digits_split(hold_out_reference=True))
