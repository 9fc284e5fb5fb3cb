"""A drift reference's probabilities meet the events' rule: a bfloat16 server's own outputs are a valid reference
for it, and rows that are no distribution are still refused."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from common.probabilities import PROBABILITY_TOLERANCE
from service.ingest.validation import PROBABILITY_TOLERANCE as EVENTS_TOLERANCE

PUT = "/v1/models/{}/reference"


def _bfloat16_softmax(rows: int, classes: int) -> NDArray[np.float32]:
    """Probability rows as a server computing its softmax in bfloat16 reports them (as float32)."""
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(rows, classes, generator=generator) * 4
    return torch.softmax(logits.to(torch.bfloat16), dim=1).to(torch.float32).numpy()


def _embeddings(rows: int) -> list[list[float]]:
    return np.random.default_rng(0).normal(size=(rows, 4)).round(3).tolist()  # type: ignore[no-any-return]


def test_events_and_references_share_one_tolerance() -> None:
    assert EVENTS_TOLERANCE is PROBABILITY_TOLERANCE


def test_a_bfloat16_softmax_is_accepted_as_a_reference(make_client: Callable[..., TestClient]) -> None:
    probabilities = _bfloat16_softmax(200, 10)
    off = np.abs(probabilities.astype(np.float64).sum(axis=1) - 1.0)
    assert off.max() > 1e-3, "bfloat16 rounding moves the sums past the former tolerance"
    body = {"embeddings": _embeddings(200), "probabilities": probabilities.tolist()}
    answer = make_client().put(PUT.format("digits"), json=body)
    assert answer.status_code == 202, answer.text


def test_reference_probabilities_that_are_not_a_distribution_are_refused(
    make_client: Callable[..., TestClient],
) -> None:
    probabilities = [[0.3, 0.3, 0.4]] * 49 + [[0.3, 0.3, 0.42]]  # one row sums to 1.02
    body = {"embeddings": _embeddings(50), "probabilities": probabilities}
    answer = make_client().put(PUT.format("digits"), json=body)
    assert answer.status_code == 422 and answer.json()["field"] == "probabilities", answer.text
    assert f"± {PROBABILITY_TOLERANCE}" in answer.json()["error"]
