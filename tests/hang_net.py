"""A tiny classifier for worker tests that never returns on one marker value: a real hung batch."""

from __future__ import annotations

import threading

import torch
from torch import nn

HANG = 0.321


class HangNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == HANG).any()):
            threading.Event().wait()  # forever: only the end of the process stops it
        logits: torch.Tensor = self.linear(x.reshape(len(x), -1))
        return logits


def build() -> HangNet:
    return HangNet()
