"""Probabilities from a half-precision server: its softmax's rounding is within the sum's tolerance."""

from __future__ import annotations

import base64

import numpy as np
import torch
from fastapi.testclient import TestClient
from numpy.typing import NDArray

from helpers import event
from service.ingest.validation import PROBABILITY_TOLERANCE


def _bfloat16_softmax(rows: int, classes: int) -> NDArray[np.float32]:
    """Probability rows as a server computing its softmax in bfloat16 reports them (as float32)."""
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(rows, classes, generator=generator) * 4
    return torch.softmax(logits.to(torch.bfloat16), dim=1).to(torch.float32).numpy()


def _compact(row: NDArray[np.float32]) -> dict[str, object]:
    data = np.ascontiguousarray(row, dtype="<f4")
    return {"dtype": "float32", "shape": [int(data.size)], "data": base64.b64encode(data.tobytes()).decode()}


def test_a_bfloat16_softmax_is_accepted_as_lists_and_as_tensors(client: TestClient) -> None:
    rows = _bfloat16_softmax(200, 10)
    off = np.abs(rows.astype(np.float64).sum(axis=1) - 1.0)
    assert off.max() > 1e-3, "bfloat16 rounding moves the sums past the former tolerance"
    assert off.max() < 2.0**-8 < PROBABILITY_TOLERANCE, "within bfloat16's unit roundoff"
    for form, encode in (("list", lambda row: row.tolist()), ("tensor", _compact)):
        events = [event(f"{form}{i}", logits=None, probabilities=encode(row)) for i, row in enumerate(rows)]
        response = client.post("/v1/events", json={"events": events})
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == len(rows)


def test_probabilities_that_are_not_a_distribution_are_still_refused(client: TestClient) -> None:
    scores = [0.3, 0.3, 0.42]  # sums to 1.02: a sigmoid per class, or a softmax over another axis
    response = client.post("/v1/events", json=event("sigmoid", logits=None, probabilities=scores))
    assert response.status_code == 422
    (rejection,) = response.json()["rejected"]
    assert rejection["field"] == "probabilities" and f"± {PROBABILITY_TOLERANCE}" in rejection["error"]
