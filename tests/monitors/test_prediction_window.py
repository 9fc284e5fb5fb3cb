"""The window of recent confidences behind the accuracy estimates: bounded, expiring, sliced like the labelled
windows (one guard, so both agree on which values share ``__other__``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from monitors.cohorts import ALL, CohortGuard
from monitors.prediction_window import PredictionWindow, WindowCopy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_slices_bound_and_order() -> None:
    clock = Clock()
    window = PredictionWindow(guard=CohortGuard(keys=["region"], max_values_per_key=1), max_items=3, clock=clock)
    for i, region in enumerate(["eu", "us", "eu", "eu", "us"]):
        clock.now = float(i)
        window.append("m", "v1", {"region": region, "ignored": "x"}, i / 10)
    window.append("other", "v1", {}, 0.9)
    found = {s.key.cohort: s.confidence.tolist() for s in window.snapshots("m")}
    assert found == {
        "all": pytest.approx([0.2, 0.3, 0.4]),  # the last three, oldest first
        "region=eu": pytest.approx([0.2, 0.3]),  # no further back than all's window: the parts of the whole
        "region=__other__": pytest.approx([0.4]),  # one value per key allowed: us shares __other__
    }
    assert [s.key.model for s in window.snapshots("other")] == ["other"]


def test_expired_predictions_go_and_empty_slices_with_them() -> None:
    clock = Clock()
    window = PredictionWindow(guard=CohortGuard(keys=["region"], max_values_per_key=5), horizon_s=10, clock=clock)
    window.append("m", "v1", {"region": "eu"}, 0.5)
    clock.now = 6.0
    window.append("m", "v1", {}, 0.7)
    clock.now = 12.0
    assert {s.key.cohort: s.confidence.tolist() for s in window.snapshots("m")} == {"all": [0.7]}
    clock.now = 17.0
    assert window.snapshots("m") == []


def test_the_ring_wraps_many_times_and_forget_drops_a_model() -> None:
    window = PredictionWindow(guard=CohortGuard(keys=[], max_values_per_key=1), max_items=7)
    values = np.linspace(0, 1, 53)
    for value in values:
        window.append("m", "v", {}, float(value))
    (snapshot,) = window.snapshots("m")
    np.testing.assert_array_equal(snapshot.confidence, values[-7:])
    window.forget("m")
    assert window.snapshots("m") == []


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="max_items"):
        PredictionWindow(guard=CohortGuard(keys=[], max_values_per_key=1), max_items=0)


def test_a_window_exported_and_restored_elsewhere_keeps_each_prediction_its_age() -> None:
    """What a new owner restores (``PredictionWindow.export`` → ``restore``): every ring with its confidences, each
    prediction aged as it was, so it leaves the window when it would have; those already past it are left out."""
    guard = CohortGuard(keys=["region"], max_values_per_key=5)
    old_clock, new_clock = Clock(), Clock()
    old = PredictionWindow(guard=guard, horizon_s=100, clock=old_clock)
    for i, region in enumerate(["eu", "us", "eu", "eu"]):
        old_clock.now = 10.0 * i
        old.append("m", "v1", {"region": region}, 0.5 + i / 10)
    old_clock.now = 95.0  # ages 95, 85, 75, 65
    exported = old.export("m")

    new_clock.now = 5_000.0  # another process's clock
    new = PredictionWindow(guard=guard, horizon_s=100, clock=new_clock)
    series = [replace(s, ages_s=s.ages_s + 10.0) for s in exported.series]  # restored 10 s later: the oldest is past
    assert new.restore("m", WindowCopy(series), version=lambda v: f"{v}!") == 3 + 2 + 1  # all: 3, eu: 2, us: 1
    confidences = {(s.key.version, s.key.cohort): s.confidence.tolist() for s in new.snapshots("m")}
    assert confidences == {
        ("v1!", "all"): [0.6, 0.7, 0.8],
        ("v1!", "region=eu"): [0.7, 0.8],
        ("v1!", "region=us"): [0.6],
    }
    new_clock.now += 6  # the one restored 95 s old leaves 5 s on, not 100 s after the restore
    assert [s.confidence.tolist() for s in new.snapshots("m") if s.key.cohort == "all"] == [[0.7, 0.8]]


def _window() -> PredictionWindow:
    return PredictionWindow(guard=CohortGuard(keys=["region"], max_values_per_key=2, fleet=True))


def _count(window: PredictionWindow) -> int:
    return sum(s.confidence.size for s in window.snapshots("m") if s.key.cohort == ALL)


def _take(window: PredictionWindow, ids: range, *, cohort: dict[str, str] | None = None) -> None:
    """Feed entries ``ids`` read (or claimed again): each counted unless the window counted it already."""
    for i in ids:
        window.append("m", "v1", cohort or {}, 0.5, entry=f"{i}-0".encode())


def _ids(ids: range) -> frozenset[bytes]:
    return frozenset(f"{i}-0".encode() for i in ids)


def test_a_chain_of_owners_counts_each_prediction_once() -> None:
    """Owners killed one after the other, each claiming every entry its predecessors left unacknowledged: each
    prediction is counted once, whether the owner stored its window before or after its claim."""
    first = _window()
    _take(first, range(30))
    first.settle("m", _ids(range(10)))  # examined and acknowledged: never delivered again
    stored = first.export("m")
    assert (_count(first), stored.entries) == (30, _ids(range(10, 30)))
    _take(first, range(30, 40))  # read after the window was stored
    # The second owner restores the first's window, stores its own before its claim, then claims 10…39.
    second = _window()
    assert second.restore("m", stored) == 30
    early = second.export("m")
    assert early.entries == _ids(range(10, 30)), "not claimed yet: a third owner must not count them either"
    _take(second, range(10, 40))
    assert _count(second) == 40
    second.claimed("m")
    assert second.export("m").entries == _ids(range(10, 40)), "claimed, unacknowledged: this owner's to pass on"
    # A third owner restores either of the second's windows and claims the same entries from the second.
    for passed_on in (early, second.export("m")):
        third = _window()
        third.restore("m", passed_on)
        _take(third, range(10, 40))
        assert _count(third) == 40
    # Acknowledged, the entries are forgotten; the claim over, so are the restored ones never delivered.
    third.settle("m", _ids(range(10, 40)))
    assert third.export("m").entries == frozenset()
    fourth = _window()
    fourth.restore("m", WindowCopy(early.series, early.entries | _ids(range(90, 95))))
    fourth.claimed("m")
    assert fourth.export("m").entries == frozenset()


def test_a_prediction_waiting_for_a_cohort_decision_is_left_for_the_next_owner_to_count() -> None:
    """Not in the rings at the export, an entry held for a cohort decision is not among those counted: the next owner
    counts it. Released, it is; acknowledged while held, it is not remembered."""
    window = _window()
    _take(window, range(3), cohort={"region": "eu"})  # the fleet has not decided "eu" yet
    stored = window.export("m")
    assert (_count(window), stored.entries) == (0, frozenset())
    window.settle("m", _ids(range(1)))
    window.release(give_up=True)
    assert (_count(window), window.export("m").entries) == (3, _ids(range(1, 3)))
    successor = _window()
    successor.restore("m", stored)
    _take(successor, range(1, 3), cohort={"region": "eu"})
    successor.release(give_up=True)
    assert _count(successor) == 2


def test_forget_drops_a_models_entries() -> None:
    window = _window()
    _take(window, range(3))
    window.restore("m", WindowCopy([], _ids(range(5, 8))))
    window.forget("m")
    assert window.export("m") == WindowCopy([], frozenset())
    _take(window, range(5, 8))
    assert _count(window) == 3
