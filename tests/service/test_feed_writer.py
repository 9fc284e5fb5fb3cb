"""The per-replica budget of the drift feed."""

from __future__ import annotations

import random

from service.feed_records import UniformBudget


def test_within_the_budget_everything_is_kept() -> None:
    budget = UniformBudget(100, rng=random.Random(0))
    assert all(budget.admit(10.0 + i / 100) for i in range(100))


def test_beyond_the_budget_events_are_thinned_to_about_the_budget() -> None:
    budget = UniformBudget(100, rng=random.Random(0))
    kept = [sum(budget.admit(second + i / 1000) for i in range(1000)) for second in range(10, 20)]
    assert all(60 <= k <= 200 for k in kept[1:]), kept  # ~budget per second once the rate is known


def test_zero_means_no_limit() -> None:
    budget = UniformBudget(0)
    assert all(budget.admit(1.0) for _ in range(10_000))
