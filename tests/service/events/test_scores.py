"""Score summaries: one event at a time and a request's events at once give the same figures."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy.special import softmax

from helpers import summarise_rows
from service.events.schemas import EventIn
from service.events.scores import MAX_MARGIN, summarise, summarise_matrix
from service.events.scores import softmax as softmax_of
from service.ingest.validation import check, summarised


def _logit_rows(rng: np.random.Generator) -> npt.NDArray[np.float64]:
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


def _independent(row: npt.NDArray[np.floating[Any]], *, from_logits: bool) -> tuple[int, float, float]:
    """Predicted class, confidence and margin the plain way, in float64 (the oracle for summarise_rows)."""
    wide = row.astype(np.float64)
    ordered = np.sort(wide)
    predicted = int(np.argmax(wide))
    if from_logits:
        return predicted, float(softmax(wide).max()), min(float(ordered[-1] - ordered[-2]), MAX_MARGIN)
    return predicted, float(ordered[-1]), float(np.log(ordered[-1]) - np.log(ordered[-2]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("from_logits", [True, False])
def test_rows_at_once_match_an_independent_computation(from_logits: bool, dtype: type[np.floating[Any]]) -> None:
    rng = np.random.default_rng(1)
    rows = (_logit_rows(rng) if from_logits else rng.dirichlet(np.ones(10), 40)).astype(dtype)
    together = summarise_rows(list(rows), from_logits=from_logits)
    expected = [_independent(row, from_logits=from_logits) for row in rows]
    assert [found[0] for found in together] == [wanted[0] for wanted in expected]
    # float32 scores: the margin is a float32 difference (rounding ~1e-7 of the logits' size)
    np.testing.assert_allclose(np.array(together)[:, 1:], np.array(expected)[:, 1:], rtol=1e-6, atol=1e-5)
    assert summarise(rows[3], from_logits=from_logits) == together[3]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probabilities"])
def test_one_row_alone_is_summarised_as_in_a_matrix_bit_for_bit(
    from_logits: bool, dtype: type[np.floating[Any]]
) -> None:
    """The single-event path (``summarise``) and the request's matrix give the very same figures, for rows
    of any spread (up to float32's range and beyond), ties and all, whatever the caller's np.errstate."""
    rng = np.random.default_rng(5)
    scales = [0.01, 1.0, 30.0, 1e5, 1e37] + ([1e300] if dtype == np.float64 else [])
    for index in range(3000):
        size = int(rng.integers(2, 60))
        if from_logits:
            row = rng.normal(0.0, scales[index % len(scales)], size).astype(dtype)
        else:
            row = rng.dirichlet(np.full(size, (0.05, 1.0, 10.0)[index % 3])).astype(dtype)
        if index % 7 == 0:
            row[rng.integers(size)] = row.max()  # the top two tied
        if index % 11 == 0 and from_logits:
            row[:] = row[0]  # all tied
        with np.errstate(all="raise"):
            alone = summarise(row, from_logits=from_logits)
            in_matrix = summarise_rows([row, row], from_logits=from_logits)[0]  # many rows: the general arithmetic
        assert alone == in_matrix == summarise_rows([row], from_logits=from_logits)[0], (row, alone, in_matrix)


def test_a_row_too_wide_for_exp_falls_back_without_floating_point_errors() -> None:
    rows = np.array([[1e308, -1e308, 0.0], [3.0, 1.0, 0.0]])
    with np.errstate(all="raise"):  # any overflow in the vectorised pass would raise here
        (predicted, confidence, margin), second = summarise_rows(list(rows), from_logits=True)
        alone = summarise(rows[0], from_logits=True)
    assert (predicted, confidence, margin) == alone == (0, 1.0, MAX_MARGIN)
    np.testing.assert_allclose(second, _independent(rows[1], from_logits=True), rtol=1e-7)


def test_a_request_of_mixed_shapes_is_summarised_per_shape() -> None:
    rng = np.random.default_rng(2)
    events = [
        EventIn(model="m", request_id=f"r{i}", logits=rng.normal(size=n))
        if i % 3
        else EventIn(model="m", request_id=f"r{i}", probabilities=rng.dirichlet(np.ones(n)))
        for i, n in enumerate([3, 10, 10, 3, 10, 7, 3])
    ]
    checked = [check(event, received_at=1.0) for event in events]
    accepted = summarised(checked, received_at=1.0)
    for prediction, item in zip(map(accepted.prediction, range(len(accepted))), checked, strict=True):
        assert prediction.request_id == item.request_id
        expected = _independent(item.scores, from_logits=item.from_logits)
        found = (prediction.predicted, prediction.confidence, prediction.margin)
        np.testing.assert_allclose(found, expected, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        (np.array([2.0, 1.0, -3.0]), softmax(np.array([2.0, 1.0, -3.0]))),
        (np.array([1e308, -1e308, 0.0]), np.array([1.0, 0.0, 0.0])),
        (np.array([800.0, 0.0, 799.0]), np.array([1.0, 0.0, np.exp(-1.0)]) / (1.0 + np.exp(-1.0))),
    ],
)
def test_softmax_of_any_finite_logits_is_a_distribution(
    logits: npt.NDArray[np.float64], expected: npt.NDArray[np.float64]
) -> None:
    with np.errstate(over="raise", invalid="raise"):
        found = softmax_of(logits)
    np.testing.assert_allclose(found, expected, rtol=1e-12)


@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probabilities"])
def test_a_matrix_is_summarised_as_its_rows_are_and_left_as_it_was(from_logits: bool) -> None:
    """A lane hands over a strided view of the body (a binary field among others): summarised as stacked rows."""
    rng = np.random.default_rng(4)
    block = rng.normal(size=(6, 24)).astype(np.float32)
    if not from_logits:
        block[:, 4:14] = rng.dirichlet(np.ones(10), size=6)
    view = block[:, 4:14]
    before = view.copy()
    found = summarise_matrix(view, from_logits=from_logits)
    np.testing.assert_array_equal(view, before)
    assert list(zip(*found, strict=True)) == summarise_rows([row.copy() for row in view], from_logits=from_logits)
