from __future__ import annotations

import threading

import pytest

from common.cardinality import OTHER
from monitors.cohorts import ALL, CohortGuard
from monitors.records import LabelledPrediction
from monitors.series import SeriesKey
from monitors.window import WindowStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(i: int, *, version: str = "1", cohort: dict[str, str] | None = None, model: str = "m") -> LabelledPrediction:
    return LabelledPrediction(
        model=model, version=version, predicted=i % 3, confidence=0.8, label=0, time_s=float(i), cohort=cohort or {}
    )


def labels(store: WindowStore, cohort: str = ALL, version: str = "1") -> list[float]:
    wanted = SeriesKey("m", version, cohort)
    return [r.time_s for snapshot in store.snapshots("m") if snapshot.key == wanted for r in snapshot.records]


def make_store(
    *, max_items: int = 10_000, horizon_s: float = 3600.0, keys: tuple[str, ...] = ()
) -> tuple[WindowStore, FakeClock]:
    clock = FakeClock()
    guard = CohortGuard(keys=keys, max_values_per_key=2)
    return WindowStore(guard=guard, horizon_s=horizon_s, max_items=max_items, clock=clock), clock


def test_evicts_by_count_oldest_first() -> None:
    store, _ = make_store(max_items=3)
    for i in range(5):
        store.append(record(i))
    assert labels(store) == [2.0, 3.0, 4.0]


def test_evicts_by_time() -> None:
    store, clock = make_store(horizon_s=60.0)
    store.append(record(0))
    clock.now += 30
    store.append(record(1))
    clock.now += 31  # the first is now 61 s old, the second 31 s
    assert labels(store) == [1.0]
    clock.now += 30
    assert labels(store) == []
    assert store.snapshots("m") == []  # an emptied window is forgotten


def test_cohort_slices_are_cut_to_the_span_of_all() -> None:
    """The ``all`` window takes every event, so its cap shortens its span first: a slice reaching further back
    would be compared with ``all`` over another period."""
    store, clock = make_store(max_items=5, keys=("region",))
    store.append(record(0, cohort={"region": "ap"}))
    for i in range(1, 20):
        clock.now += 1
        store.append(record(i, cohort={"region": "eu"}))
    assert labels(store) == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert labels(store, "region=eu") == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert labels(store, "region=ap") == [], "an ap label older than every label of all"
    clock.now += 1
    store.append(record(20, cohort={"region": "ap"}))
    assert labels(store, "region=ap") == [20.0]
    assert labels(store) == [16.0, 17.0, 18.0, 19.0, 20.0]


def test_slices_are_cut_per_version() -> None:
    store, clock = make_store(max_items=2, keys=("region",))
    store.append(record(0, version="1", cohort={"region": "ap"}))
    for i in range(1, 4):
        clock.now += 1
        store.append(record(i, version="2", cohort={"region": "eu"}))
    assert labels(store, "region=ap", version="1") == [0.0], "version 2 does not cut version 1"
    assert labels(store, "region=eu", version="2") == [2.0, 3.0]


def test_snapshots_are_of_one_model() -> None:
    store, _ = make_store()
    store.append(record(0))
    store.append(record(1, model="other"))
    assert [s.key.model for s in store.snapshots("other")] == ["other"]
    assert [s.key.model for s in store.snapshots("m")] == ["m"]
    assert store.snapshots("none") == []


def test_an_append_with_an_age_is_stamped_and_evicted_on_it() -> None:
    """A label replayed by a new owner keeps the time it arrived at, so the window keeps its horizon."""
    store, clock = make_store(horizon_s=60.0)
    store.append(record(0), age_s=90.0)
    store.append(record(1), age_s=50.0)
    store.append(record(2))
    assert labels(store) == [1.0, 2.0]
    clock.now += 11
    assert labels(store) == [2.0]


def test_versions_have_separate_windows() -> None:
    store, _ = make_store()
    store.append(record(0, version="1"))
    store.append(record(1, version="2"))
    assert [s.key.version for s in store.snapshots("m")] == ["1", "2"]


def test_labelled_total_outlives_eviction() -> None:
    store, _ = make_store(max_items=2)
    for i in range(7):
        store.append(record(i))
    (snapshot,) = store.snapshots("m")
    assert len(snapshot.records) == 2
    assert snapshot.labelled_total == 7


def test_guard_caps_values_per_model_and_key_and_ignores_other_keys() -> None:
    guard = CohortGuard(keys=["region"], max_values_per_key=2)
    assert guard.slices("m", {"region": "eu", "user": "42"}) == (ALL, "region=eu")
    assert guard.slices("m", {"region": "us"}) == (ALL, "region=us")
    assert guard.slices("m", {"region": "ap"}) == (ALL, f"region={OTHER}")
    assert guard.slices("m", {"region": "eu"}) == (ALL, "region=eu")
    assert guard.slices("m", {}) == (ALL,)
    assert guard.slices("other", {"region": "ap"}) == (ALL, "region=ap"), "one model's values take no other's slots"
    guard.forget("m")
    assert guard.slices("m", {"region": "ap"}) == (ALL, "region=ap"), "a model forgotten admits values anew"


@pytest.mark.parametrize(
    ("keys", "limit"),
    [pytest.param(["a=b"], 3, id="equals-in-key"), pytest.param(["region"], 0, id="zero-values")],
)
def test_guard_rejects_bad_settings(keys: list[str], limit: int) -> None:
    with pytest.raises(ValueError):
        CohortGuard(keys=keys, max_values_per_key=limit)


def test_concurrent_appends_all_counted() -> None:
    store, _ = make_store(max_items=100_000, keys=("region",))
    start = threading.Barrier(4)

    def writer(region: str) -> None:
        start.wait()
        for i in range(2_000):
            store.append(record(i, cohort={"region": region}))

    threads = [threading.Thread(target=writer, args=(r,)) for r in ("a", "b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = {s.key.cohort: len(s.records) for s in store.snapshots("m")}
    # Which two regions win the two admitted values depends on scheduling; the counts do not.
    assert totals.pop(ALL) == 8_000
    assert totals.pop(f"region={OTHER}") == 4_000
    assert sorted(totals.values()) == [2_000, 2_000]
