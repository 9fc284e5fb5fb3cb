"""Fixtures of the drift tests: one intra-op torch thread and a seeded torch generator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """alibi-detect runs many tiny tensor ops; extra intra-op threads only contend on a small CI box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """alibi-detect draws its bootstrap and permutation samples from torch's global generator."""
    torch.manual_seed(0)
