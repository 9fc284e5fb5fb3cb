"""Score summaries: one event at a time and a request's events at once give the same figures."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from service.schemas import EventIn
from service.validation import MAX_MARGIN, check, predictions, summarise, summarise_rows
from service.validation import softmax as softmax_of


def _logit_rows(rng: np.random.Generator) -> np.ndarray:
    rows = rng.normal(0.0, 3.0, (40, 10))
    rows[0] = 1.0  # all tied
    rows[1, [2, 7]] = 50.0  # top two tied
    rows[2, 4] = 200.0  # near-certain
    return rows


def test_logit_summary_matches_an_independent_computation() -> None:
    rows = _logit_rows(np.random.default_rng(0))
    for row, (predicted, confidence, margin) in zip(rows, summarise_rows(list(rows), from_logits=True), strict=True):
        ordered = np.sort(row)
        assert row[predicted] == ordered[-1]
        assert confidence == pytest.approx(softmax(row).max(), rel=1e-7)  # exponentials in float32
        assert margin == pytest.approx(ordered[-1] - ordered[-2], abs=1e-9)


@pytest.mark.parametrize("from_logits", [True, False])
def test_rows_at_once_equal_one_at_a_time(from_logits: bool) -> None:
    rng = np.random.default_rng(1)
    rows = _logit_rows(rng) if from_logits else rng.dirichlet(np.ones(10), 40)
    together = summarise_rows(list(rows), from_logits=from_logits)
    alone = [summarise(row, from_logits=from_logits) for row in rows]
    np.testing.assert_allclose(np.array(together), np.array(alone), rtol=1e-12, atol=1e-12)


def test_a_row_too_wide_for_exp_falls_back_without_floating_point_errors() -> None:
    rows = np.array([[1e308, -1e308, 0.0], [3.0, 1.0, 0.0]])
    with np.errstate(all="raise"):  # any overflow in the vectorised pass would raise here
        (predicted, confidence, margin), second = summarise_rows(list(rows), from_logits=True)
    assert (predicted, confidence, margin) == (0, 1.0, MAX_MARGIN)
    np.testing.assert_allclose(second, summarise(rows[1], from_logits=True), rtol=1e-12)


def test_a_request_of_mixed_shapes_is_summarised_per_shape() -> None:
    rng = np.random.default_rng(2)
    events = [
        EventIn(model="m", request_id=f"r{i}", logits=rng.normal(size=n))
        if i % 3
        else EventIn(model="m", request_id=f"r{i}", probabilities=rng.dirichlet(np.ones(n)))
        for i, n in enumerate([3, 10, 10, 3, 10, 7, 3])
    ]
    checked = [check(event, received_at=1.0) for event in events]
    for prediction, item in zip(predictions(checked, received_at=1.0), checked, strict=True):
        assert prediction.request_id == item.request_id
        expected = summarise(item.scores, from_logits=item.from_logits)
        found = (prediction.predicted, prediction.confidence, prediction.margin)
        np.testing.assert_allclose(found, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        (np.array([2.0, 1.0, -3.0]), softmax(np.array([2.0, 1.0, -3.0]))),
        (np.array([1e308, -1e308, 0.0]), np.array([1.0, 0.0, 0.0])),
        (np.array([800.0, 0.0, 799.0]), np.array([1.0, 0.0, np.exp(-1.0)]) / (1.0 + np.exp(-1.0))),
    ],
)
def test_softmax_of_any_finite_logits_is_a_distribution(logits: np.ndarray, expected: np.ndarray) -> None:
    with np.errstate(over="raise", invalid="raise"):
        found = softmax_of(logits)
    np.testing.assert_allclose(found, expected, rtol=1e-12)
