"""The per-replica budget of the drift feed."""

from __future__ import annotations

import numpy as np

from service.feed.records import UniformBudget


def test_within_the_budget_everything_is_kept() -> None:
    budget = UniformBudget(100, rng=np.random.default_rng(0))
    assert all(budget.admit_many(10.0 + i / 100, 1)[0] for i in range(100))


def test_beyond_the_budget_events_are_thinned_to_about_the_budget() -> None:
    budget = UniformBudget(100, rng=np.random.default_rng(0))
    kept = [sum(budget.admit_many(second + i / 1000, 1)[0] for i in range(1000)) for second in range(10, 20)]
    assert all(60 <= k <= 200 for k in kept[1:]), kept  # ~budget per second once the rate is known


def test_zero_means_no_limit() -> None:
    budget = UniformBudget(0)
    assert all(budget.admit_many(1.0, 1)[0] for _ in range(10_000))


def test_a_request_s_events_are_drawn_as_one_by_one() -> None:
    """A request's events are drawn as if one by one: the k-th event of a second at the rate its count has
    reached. The first ``budget`` of a second are kept, then each with probability budget / count, and the next
    second starts from the previous one's rate."""
    budget = UniformBudget(100, rng=np.random.default_rng(1))
    first = budget.admit_many(10.0, 100)
    assert first == [True] * 100  # within the budget
    later = np.concatenate([budget.admit_many(10.5, 100) for _ in range(99)])  # 9,900 more in the same second
    counts = np.arange(101, 10_001)
    expected = float(np.sum(100 / counts))  # sum of the keep probabilities, ~230
    assert abs(int(later.sum()) - expected) < 5 * expected**0.5, (int(later.sum()), expected)
    next_second = budget.admit_many(11.2, 1_000)  # the rate is already 10,000: each kept with p = 0.01
    assert 0 < sum(next_second) < 30
    assert UniformBudget(100).admit_many(12.0, 0) == []
    assert UniformBudget(0).admit_many(12.0, 5) == [True] * 5  # no limit
