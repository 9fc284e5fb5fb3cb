"""Cohort values admitted once for the fleet, in a real Redis: first come, first admitted, the same answer for
every process (and for a new owner), the set's TTL and its restoration, and an unreachable Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis

from common import keys
from common.cardinality import OTHER
from common.embedded_redis import free_port
from common.redis import connect
from monitors.cohort_admission import TTL_S, CohortAdmission
from monitors.cohorts import ALL, CohortGuard
from monitors.records import LabelledPrediction
from monitors.window import WindowStore

pytestmark = pytest.mark.anyio
SET = keys.cohort_values("m", "region")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Process:
    """What one process holds: a fleet guard, a window store waiting on it, and their admission."""

    def __init__(self, admission: Callable[[CohortGuard, WindowStore], CohortAdmission], *, cap: int = 2) -> None:
        self.guard = CohortGuard(keys=["region"], max_values_per_key=cap, fleet=True)
        self.windows = WindowStore(guard=self.guard)
        self.admission = admission(self.guard, self.windows)

    def see(self, *regions: str) -> None:
        for i, region in enumerate(regions):
            record = LabelledPrediction(
                model="m", version="1", predicted=0, confidence=0.9, label=0, time_s=float(i), cohort={"region": region}
            )
            self.windows.append(record)

    def slices(self) -> dict[str, int]:
        return {s.key.cohort: len(s.records) for s in self.windows.snapshots("m")}


@asynccontextmanager
async def processes(url: str, **options: Any) -> AsyncIterator[Callable[..., Process]]:
    """Make processes (``cap=2`` values per key) whose admissions share one Redis client of ``url`` (``options``:
    the admission's)."""
    client = connect(url, timeout_s=0.5)
    try:
        yield lambda cap=2: Process(
            lambda guard, windows: CohortAdmission(client, guard, [windows], **options), cap=cap
        )
    finally:
        await client.aclose()


async def test_processes_that_see_values_in_opposite_orders_admit_the_same(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async with processes(redis_url) as process:
        first, second = process(), process()
        first.see("eu", "us", "ap")
        second.see("ap", "us", "eu")  # on its own, it would keep ap and us
        assert first.slices() == second.slices() == {}, "nothing is sliced before its values are decided"
        await first.admission.settle()
        await second.admission.settle()
        expected = {ALL: 3, "region=eu": 1, "region=us": 1, f"region={OTHER}": 1}
        assert first.slices() == second.slices() == expected
        assert redis_client.smembers(SET) == {b"eu", b"us"}
        assert 0 < redis_client.ttl(SET) <= TTL_S

        third = process()  # a value the fleet admitted is learnt with the first answer
        third.see("us")
        await third.admission.settle()
        assert third.slices() == {ALL: 1, "region=us": 1}


async def test_a_new_owner_gets_the_decisions_of_the_previous_one(redis_url: str) -> None:
    async with processes(redis_url) as process:
        sidecar, owner = process(), process()
        sidecar.see("eu", "us")
        await sidecar.admission.settle()
        owner.see("ap", "us")
        await owner.admission.settle()
        assert owner.slices() == {ALL: 2, "region=us": 1, f"region={OTHER}": 1}

        owner.windows.forget("m")  # handed over: what it decided is dropped with its windows
        await owner.admission.load("m")  # the new owner asks before its labels replay
        owner.see("ap", "us", "eu")
        assert owner.slices() == {ALL: 3, "region=eu": 1, "region=us": 1, f"region={OTHER}": 1}


async def test_a_process_with_a_lower_cap_than_the_fleets_says_so_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every role must run with the same VAI_MAX_COHORT_VALUES: one with a lower cap keeps fewer of the admitted
    values than the others (their labels differ), and warns."""
    async with processes(redis_url) as process:
        wider = process(cap=3)
        wider.see("eu", "us", "ap")
        await wider.admission.settle()
        narrower = process(cap=2)
        narrower.see("us", "eu")
        with caplog.at_level(logging.WARNING, logger="monitors.cohort_admission"):
            await narrower.admission.settle()
            await narrower.admission.load("m")  # asks again: no second warning
        narrower.see("ap")
        assert [r.getMessage() for r in caplog.records if "VAI_MAX_COHORT_VALUES" in r.getMessage()] == [
            "the fleet admitted 3 values of cohort key region of model m, more than VAI_MAX_COHORT_VALUES=2 here: "
            "this process labels the rest as __other__ where other processes do not; give every role the same "
            "VAI_MAX_COHORT_VALUES"
        ]
        assert wider.slices() == {ALL: 3, "region=eu": 1, "region=us": 1, "region=ap": 1}
        assert narrower.slices() == {ALL: 3, "region=ap": 1, "region=eu": 1, f"region={OTHER}": 1}


async def test_a_missing_set_starts_from_what_a_process_keeps(redis_url: str, redis_client: redis.Redis) -> None:
    """Redis restarted empty (or the set expired): the next ask restores the values the asking process keeps
    first, so a new value does not take a slot the fleet already gave."""
    async with processes(redis_url) as process:
        old = process()
        old.see("eu")
        await old.admission.settle()
        redis_client.delete(SET)
        old.see("us")
        await old.admission.settle()
        assert redis_client.smembers(SET) == {b"eu", b"us"}
        new = process()
        new.see("ap", "eu")
        await new.admission.settle()
        assert new.slices() == {ALL: 2, "region=eu": 1, f"region={OTHER}": 1}


async def test_the_ttl_is_refreshed_and_the_set_restored_with_nothing_to_decide(
    redis_url: str, redis_client: redis.Redis
) -> None:
    clock = Clock()
    async with processes(redis_url, refresh_s=60.0, clock=clock) as process:
        kept = process()
        kept.see("eu")
        await kept.admission.settle()
        redis_client.delete(SET)
        await kept.admission.settle()
        assert not redis_client.exists(SET), "not yet due"
        clock.now += 60
        await kept.admission.settle()
        assert redis_client.smembers(SET) == {b"eu"} and 0 < redis_client.ttl(SET) <= TTL_S


async def test_an_unreachable_redis_holds_values_a_bounded_time_then_they_count_as_other(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    async with processes(f"redis://127.0.0.1:{free_port()}", give_up_s=2.0, retry_s=0.5, clock=clock) as process:
        cut_off = process()
        cut_off.see("eu")
        for _ in range(3):
            await cut_off.admission.settle()
        assert cut_off.slices() == {}, "held while the wait lasts"
        clock.now += 2
        await cut_off.admission.settle()
        assert cut_off.slices() == {ALL: 1, f"region={OTHER}": 1}
        cut_off.see("us")  # past the wait: counted at the next round, without waiting again
        clock.now += 0.5
        await cut_off.admission.settle()
        assert cut_off.slices() == {ALL: 2, f"region={OTHER}": 2}
        assert cut_off.guard.undecided() == {("m", "region"): ["eu", "us"]}, "not decided: asked again later"
    warnings = [r for r in caplog.records if r.name == "monitors.cohort_admission" and r.levelname == "WARNING"]
    assert len(warnings) == 1, "one warning per outage, not one per value or round"
