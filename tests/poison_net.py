"""A tiny classifier for worker tests that raises on one marker value: a real 'poison' input."""

from __future__ import annotations

import torch
from torch import nn

POISON = 0.123


class PoisonNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == POISON).any()):
            raise RuntimeError("poison input")
        logits: torch.Tensor = self.linear(x.reshape(len(x), -1))
        return logits


def build() -> PoisonNet:
    return PoisonNet()
