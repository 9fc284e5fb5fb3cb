"""A fleet cohort guard (values decided for the whole fleet, handed in): undecided values, and the windows
holding what carries one until the decision."""

from __future__ import annotations

import pytest

from common.cardinality import OTHER
from monitors.cohorts import ALL, UNDECIDED_PER_KEY, CohortGuard
from monitors.prediction_window import PredictionWindow
from monitors.records import LabelledPrediction
from monitors.series import SeriesKey
from monitors.window import WindowStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(i: int, region: str | None = None, *, model: str = "m") -> LabelledPrediction:
    return LabelledPrediction(
        model=model,
        version="1",
        predicted=0,
        confidence=0.5 + i / 100,
        label=0,
        time_s=float(i),
        cohort={} if region is None else {"region": region},
    )


def test_a_value_waits_for_the_fleet_and_is_noted_once_in_the_order_first_seen() -> None:
    guard = CohortGuard(keys=["region", "tier"], max_values_per_key=2, fleet=True)
    assert guard.values("m", {"region": "us", "tier": "free"}) == [("region", None), ("tier", None)]
    assert guard.values("m", {"region": "eu"}) == [("region", None)]
    assert guard.values("m", {"region": "us"}) == [("region", None)]
    assert guard.slices("m", {"region": "us"}) is None
    assert guard.slices("m", {"region": "us"}, give_up=True) == (ALL, f"region={OTHER}")
    assert guard.values("m", {"region": OTHER}) == [("region", OTHER)], "the literal is never a value"
    assert guard.undecided() == {("m", "region"): ["us", "eu"], ("m", "tier"): ["free"]}

    guard.admit("m", "region", ["eu"])  # the fleet admitted eu; one slot is left, so us still waits
    assert guard.undecided() == {("m", "region"): ["us"], ("m", "tier"): ["free"]}
    assert guard.values("m", {"region": "eu"}) == [("region", "eu")]
    guard.admit("m", "region", ["eu", "ap"])  # full: every other value is refused, here too
    assert guard.undecided() == {("m", "tier"): ["free"]}
    assert guard.slices("m", {"region": "us"}) == (ALL, f"region={OTHER}")
    assert guard.slices("m", {"region": "ap"}) == (ALL, "region=ap")
    assert {pair: sorted(values) for pair, values in guard.kept().items()} == {("m", "region"): ["ap", "eu"]}
    assert guard.slices("other", {"region": "us"}) is None, "each model is decided on its own"


def test_undecided_values_past_the_bound_are_other_at_once() -> None:
    guard = CohortGuard(keys=["user"], max_values_per_key=2, fleet=True)
    for i in range(UNDECIDED_PER_KEY):
        assert guard.values("m", {"user": str(i)}) == [("user", None)]
    assert guard.values("m", {"user": "one more"}) == [("user", OTHER)]
    assert guard.values("m", {"user": "0"}) == [("user", None)], "a value already waiting still waits"
    assert len(guard.undecided()[("m", "user")]) == UNDECIDED_PER_KEY


def test_forgetting_a_model_drops_its_decisions_and_what_waits() -> None:
    guard = CohortGuard(keys=["region"], max_values_per_key=1, fleet=True)
    guard.admit("m", "region", ["eu"])
    guard.values("m", {"region": "us"})
    guard.forget("m")
    assert guard.undecided() == {} and guard.kept() == {}
    assert guard.slices("m", {"region": "eu"}) is None, "learnt from the fleet again"


def test_a_held_prediction_joins_all_and_its_slice_together_at_its_own_time() -> None:
    clock = Clock()
    guard = CohortGuard(keys=["region"], max_values_per_key=2, fleet=True)
    store = WindowStore(guard=guard, horizon_s=100.0, clock=clock)
    store.append(record(0))  # no cohort: nothing to wait for
    clock.now += 1
    store.append(record(1, "eu"))
    clock.now += 1
    store.append(record(2))
    assert [s.key.cohort for s in store.snapshots("m")] == [ALL]
    assert [r.time_s for s in store.snapshots("m") for r in s.records] == [0.0, 2.0], "held: in no window yet"
    store.release(give_up=False)
    assert [r.time_s for s in store.snapshots("m") for r in s.records] == [0.0, 2.0], "still undecided"

    guard.admit("m", "region", ["eu"])
    store.release(give_up=False)
    found = {s.key: [r.time_s for r in s.records] for s in store.snapshots("m")}
    assert found == {SeriesKey("m", "1", ALL): [0.0, 1.0, 2.0], SeriesKey("m", "1", "region=eu"): [1.0]}
    clock.now += 99.5  # the held one leaves when it would have: 100 s after it was appended
    found = {s.key: [r.time_s for r in s.records] for s in store.snapshots("m")}
    assert found == {SeriesKey("m", "1", ALL): [2.0]}


def test_giving_up_places_what_waits_under_other_without_deciding_it() -> None:
    guard = CohortGuard(keys=["region"], max_values_per_key=2, fleet=True)
    store = WindowStore(guard=guard)
    store.append(record(1, "eu"))
    store.release(give_up=True)
    assert {s.key.cohort: len(s.records) for s in store.snapshots("m")} == {ALL: 1, f"region={OTHER}": 1}
    assert guard.undecided() == {("m", "region"): ["eu"]}, "asked again once Redis answers"


def test_forgetting_a_model_drops_its_held_predictions() -> None:
    guard = CohortGuard(keys=["region"], max_values_per_key=2, fleet=True)
    store = WindowStore(guard=guard)
    store.append(record(1, "eu"))
    store.forget("m")
    guard.admit("m", "region", ["eu"])
    store.release(give_up=True)
    assert store.snapshots("m") == []


@pytest.mark.parametrize(
    ("capacity", "whole", "eu"),
    [
        pytest.param(3, [0.2, 0.3, 0.4], [0.3], id="full-ring"),  # the slice cut to the span of the whole
        pytest.param(10, [0.0, 0.1, 0.2, 0.3, 0.4], [0.1, 0.3], id="room-left"),
    ],
)
def test_held_confidences_take_their_place_in_time_order(capacity: int, whole: list[float], eu: list[float]) -> None:
    clock = Clock()
    guard = CohortGuard(keys=["region"], max_values_per_key=2, fleet=True)
    window = PredictionWindow(guard=guard, max_items=capacity, horizon_s=100.0, clock=clock)
    for i, region in enumerate([None, "eu", None, "eu", None]):
        window.append("m", "1", {} if region is None else {"region": region}, i / 10)
        clock.now += 1
    guard.admit("m", "region", ["eu"])
    window.release(give_up=False)
    found = {s.key.cohort: s.confidence.tolist() for s in window.snapshots("m")}
    assert found == {ALL: whole, "region=eu": eu}
