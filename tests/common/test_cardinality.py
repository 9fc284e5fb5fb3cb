from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from common.cardinality import OTHER, BoundedLabel, ReleasableLabel, cohort_key_problem
from monitors.fleet.settings import MonitorSettings
from service.settings import SidecarSettings


def test_first_values_pass_and_later_ones_become_other() -> None:
    label = BoundedLabel(2)
    assert [label(v) for v in ("eu", "us", "ap", "eu", "us", "ap")] == ["eu", "us", OTHER, "eu", "us", OTHER]


def test_literal_other_is_never_kept_as_a_value() -> None:
    label = BoundedLabel(2)
    assert label(OTHER) == OTHER
    assert label("eu") == "eu"
    assert label("us") == "us", "the literal did not take a place"
    assert label("ap") == OTHER


@pytest.mark.parametrize("limit", [pytest.param(0, id="zero"), pytest.param(-1, id="negative")])
def test_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedLabel(limit)


def test_concurrent_first_sightings_keep_exactly_the_limit() -> None:
    label = BoundedLabel(5)
    start = threading.Barrier(8)
    seen: list[set[str]] = [set() for _ in range(8)]

    def admit(worker: int) -> None:
        start.wait()
        for value in range(200):
            seen[worker].add(label(f"{worker}-{value}"))

    threads = [threading.Thread(target=admit, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = set().union(*seen) - {OTHER}
    assert len(kept) == 5
    assert all(label(value) == value for value in kept)


def test_values_decided_elsewhere_are_kept_within_the_limit() -> None:
    label = BoundedLabel(2)
    assert label.known("eu") is None, "undecided while a slot is free"
    label.keep([OTHER, "us", "eu", "ap"])
    assert sorted(label.kept) == ["eu", "us"], "the literal is never kept; past the limit nothing is"
    assert [label.known(v) for v in ("us", "eu", "ap", OTHER)] == ["us", "eu", OTHER, OTHER]
    assert label("ap") == OTHER and label("eu") == "eu", "the process rule agrees with what was kept"


def test_a_kept_value_stays_kept_whatever_is_kept_later() -> None:
    label = BoundedLabel(2)
    label.keep(["eu"])
    assert label.known("us") is None
    label.keep(["ap", "us"])  # another judge's later answer: the slot left goes to its first value
    assert sorted(label.kept) == ["ap", "eu"]
    assert label.known("us") == OTHER


@pytest.mark.parametrize("key", ["all", "", "region=eu"])
def test_a_key_that_cannot_name_a_cohort_slice_is_refused_by_every_role_at_start(key: str) -> None:
    """``all`` names the whole-model slice (``cohort="all", value="all"``) and ``=`` separates a slice's key from
    its value: a sidecar or monitor started with such a key would export series that cannot be told apart."""
    assert cohort_key_problem(key) is not None
    for role in (SidecarSettings, MonitorSettings):
        with pytest.raises(ValidationError, match="cohort_keys") as refused:
            role(cohort_keys=("region", key))
        assert repr(key) in str(refused.value)
    assert SidecarSettings(cohort_keys=("region", "device")).cohort_keys == ("region", "device")
    assert cohort_key_problem("allregions") is None


def test_a_value_let_go_frees_its_slot_for_the_next_new_value() -> None:
    now = [0.0]
    label = ReleasableLabel(2, clock=lambda: now[0])
    assert [label("v1"), label("v2"), label("v3")] == ["v1", "v2", OTHER]
    now[0] = 10.0
    label("v2")
    assert label.release(unused_since=5.0) == ["v1"], "only the value unused since then"
    assert label("v3") == "v3" and label("v4") == OTHER, "the freed slot is the next value's, and one only"
    assert label.release({"v2", "v3"}, unused_since=100.0) == [], "values kept on purpose stay"
    assert label.release(unused_since=100.0) == ["v2", "v3"]
    assert label("v1") == "v1", "a value let go and seen again is a new admission"
