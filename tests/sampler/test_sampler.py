"""Sampling reasons and the budget, on known inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sampler.policy import SamplingPolicy
from sampler.sampler import Sampler


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_sampler(*, clock: FakeClock | None = None, **policy: Any) -> Sampler:
    base = SamplingPolicy.model_validate(policy)
    return Sampler(lambda model: base, clock=clock or FakeClock())


def decide(
    sampler: Sampler,
    *,
    confidence: float = 0.9,
    margin: float = 5.0,
    cohort: dict[str, str] | None = None,
    has_input: bool = True,
    model: str = "m",
) -> tuple[str, ...]:
    found = sampler.reasons_many(model, [confidence], [margin], [cohort or {}], [has_input])
    return found[0][1] if found else ()


def test_every_n_picks_exactly_the_nth_events_per_model() -> None:
    sampler = make_sampler(every_n=10, confidence_below=None)
    picked = [i for i in range(1, 101) if decide(sampler)]
    assert picked == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [decide(sampler, model="other") for _ in range(3)] == [(), (), ()]


@pytest.mark.parametrize(
    ("policy", "inputs", "expected"),
    [
        pytest.param({"confidence_below": 0.5}, {"confidence": 0.49}, ("low_confidence",), id="below-confidence"),
        pytest.param({"confidence_below": 0.5}, {"confidence": 0.5}, (), id="at-confidence-threshold"),
        pytest.param({"margin_below": 1.0}, {"margin": 0.99}, ("low_margin",), id="below-margin"),
        pytest.param({"margin_below": None}, {"margin": 0.0}, (), id="margin-disabled"),
        pytest.param(
            {"flagged_cohorts": [{"region": "eu"}]},
            {"cohort": {"region": "eu", "device": "x"}},
            ("flagged_cohort",),
            id="cohort-match",
        ),
        pytest.param(
            {"flagged_cohorts": [{"region": "eu", "device": "mobile"}]},
            {"cohort": {"region": "eu", "device": "web"}},
            (),
            id="cohort-partial-match",
        ),
        pytest.param(
            {"confidence_below": 0.5, "margin_below": 1.0, "flagged_cohorts": [{"a": "b"}]},
            {"confidence": 0.3, "margin": 0.2, "cohort": {"a": "b"}},
            ("low_confidence", "low_margin", "flagged_cohort"),
            id="several-reasons",
        ),
        pytest.param(
            {"confidence_below": 0.5, "require_input": True},
            {"confidence": 0.1, "has_input": False},
            (),
            id="require-input-without-input",
        ),
    ],
)
def test_reasons(policy: dict[str, Any], inputs: dict[str, object], expected: tuple[str, ...]) -> None:
    sampler = make_sampler(every_n=None, **{"confidence_below": None, **policy})
    assert decide(sampler, **inputs) == expected  # type: ignore[arg-type]


def test_require_input_still_counts_events_for_every_n() -> None:
    sampler = make_sampler(every_n=2, confidence_below=None, require_input=True)
    assert decide(sampler, has_input=True) == ()
    assert decide(sampler, has_input=False) == ()
    assert decide(sampler, has_input=True) == ()
    assert decide(sampler, has_input=True) == ("every_n",)


def test_budget_admits_rate_per_second_after_the_burst() -> None:
    clock = FakeClock()
    sampler = make_sampler(clock=clock, max_per_second=5)
    assert sum(sampler.admit("m") for _ in range(20)) == 5
    clock.now += 1.0
    assert sum(sampler.admit("m") for _ in range(20)) == 5
    clock.now += 0.2
    assert sum(sampler.admit("m") for _ in range(20)) == 1


def test_zero_budget_admits_nothing() -> None:
    sampler = make_sampler(max_per_second=0)
    assert not any(sampler.admit("m") for _ in range(5))


def test_overrides_change_the_policy_and_the_budget() -> None:
    clock = FakeClock()
    sampler = make_sampler(clock=clock, max_per_second=1)
    assert sum(sampler.admit("m") for _ in range(5)) == 1
    sampler.set_overrides("m", {"max_per_second": 100.0, "every_n": 1})
    clock.now += 1.0
    assert sum(sampler.admit("m") for _ in range(200)) == 100
    assert decide(sampler) == ("every_n",)
    assert sampler.policy("other").every_n == 100


def test_sync_ignores_invalid_stored_overrides(caplog: pytest.LogCaptureFixture) -> None:
    sampler = make_sampler(every_n=5)
    sampler.sync_overrides({"m": {"every_n": 0}, "n": {"every_n": 2}})
    assert sampler.policy("m").every_n == 5
    assert sampler.policy("n").every_n == 2
    assert "invalid stored sampling policy" in caplog.text


def _held(sampler: Sampler) -> dict[str, set[str]]:
    """The models each of the sampler's per-model dicts holds."""
    return {name: set(getattr(sampler, name)) for name in ("_policies", "_overrides", "_seen", "_buckets")}


def test_policy_of_unknown_models_creates_no_state() -> None:
    sampler = make_sampler(every_n=7)
    for i in range(2000):
        assert sampler.policy(f"unknown-{i}").every_n == 7
    assert sampler.set_overrides("unknown-0", {}).every_n == 7
    assert _held(sampler) == {name: set() for name in _held(sampler)}


def test_models_with_events_or_overrides_keep_their_state() -> None:
    sampler = make_sampler(every_n=2, confidence_below=None)
    assert [decide(sampler) for _ in range(2)] == [(), ("every_n",)]
    assert sampler.admit("m")
    sampler.set_overrides("tuned", {"every_n": 5})
    assert sampler.policy("tuned").every_n == 5
    assert _held(sampler) == {
        "_policies": {"m", "tuned"},
        "_overrides": {"tuned"},
        "_seen": {"m"},
        "_buckets": {"m", "tuned"},
    }
    sampler.set_overrides("m", {})  # a reset keeps the counter of a model with events
    assert decide(sampler) == ()
    assert decide(sampler) == ("every_n",)
    sampler.set_overrides("tuned", {})
    assert _held(sampler)["_policies"] == {"m"}
    assert _held(sampler)["_buckets"] == {"m"}


def _expected_reasons(
    policy: SamplingPolicy, seen: int, confidence: float, margin: float, cohort: dict[str, str], has_input: bool
) -> tuple[str, ...]:
    """The policy's rules written out on their own, for one event that is the model's ``seen``-th."""
    if policy.require_input and not has_input:
        return ()
    found = []
    if policy.every_n is not None and seen % policy.every_n == 0:
        found.append("every_n")
    if policy.confidence_below is not None and confidence < policy.confidence_below:
        found.append("low_confidence")
    if policy.margin_below is not None and margin < policy.margin_below:
        found.append("low_margin")
    if any(all(cohort.get(key) == value for key, value in matcher.items()) for matcher in policy.flagged_cohorts):
        found.append("flagged_cohort")
    return tuple(found)


@pytest.mark.parametrize(
    "policy",
    [
        {"every_n": 7, "confidence_below": 0.4, "margin_below": 1.0},
        {"every_n": 3, "confidence_below": None, "flagged_cohorts": [{"region": "eu"}], "require_input": True},
        {"every_n": None, "confidence_below": 0.6, "margin_below": None},
        {"every_n": 1, "confidence_below": 0.5, "margin_below": 2.0, "flagged_cohorts": [{"region": "us"}]},
    ],
)
def test_a_request_s_decisions_at_once_follow_the_rules_event_by_event(policy: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    sampler, rules = make_sampler(**policy), SamplingPolicy.model_validate(policy)
    seen = 0
    for size in (1, 5, 100, 2, 33):
        confidences = rng.uniform(0.2, 1.0, size).tolist()
        margins = rng.uniform(0.0, 3.0, size).tolist()
        cohorts = [{"region": str(rng.choice(["eu", "us"]))} if rng.random() < 0.8 else {} for _ in range(size)]
        inputs = (rng.random(size) < 0.5).tolist()
        expected = [
            (i, reasons)
            for i in range(size)
            if (reasons := _expected_reasons(rules, seen + i + 1, confidences[i], margins[i], cohorts[i], inputs[i]))
        ]
        assert sampler.reasons_many("m", confidences, margins, cohorts, inputs) == expected
        seen += size


def test_an_event_gives_every_reason_it_meets_in_one_order() -> None:
    sampler = make_sampler(every_n=1, confidence_below=0.5, margin_below=2.0, flagged_cohorts=[{"region": "us"}])
    reasons = decide(sampler, confidence=0.1, margin=0.5, cohort={"region": "us"})
    assert reasons == ("every_n", "low_confidence", "low_margin", "flagged_cohort")
