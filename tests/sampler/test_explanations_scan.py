"""List requests examine a bounded number of index entries, and their cursors continue a stopped scan."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from common import keys
from common.redis import connect
from sampler.explanation_records import ExplanationQuery, ExplanationRecord, ExplanationSummary
from sampler.explanations import ExplanationStore, ScannedPage

pytestmark = pytest.mark.anyio
T0 = time.time() - 1000
BOUND = 40


@pytest.fixture
async def make_store(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[Callable[..., ExplanationStore]]:
    client = connect(redis_url, timeout_s=2.0)
    redis_client.sadd(keys.cohort_values("digits", "region"), "eu", "us", "apac")  # admitted by the fleet: indexed
    yield lambda **options: ExplanationStore(client, ttl_s=3600, **options)
    await client.aclose()


def _summary(i: int, **fields: Any) -> ExplanationSummary:
    values: dict[str, Any] = {
        "model": "digits",
        "model_version": "v1",
        "request_id": f"r{i}",
        "status": "done",
        "reasons": ("every_n",),
        "predicted": 3,
        "confidence": 0.9,
        "timestamp": T0 + 100.0 + i // 3,  # triples share a time: cursors must break ties
    }
    return ExplanationSummary.model_validate(values | fields)


async def _save_many(store: ExplanationStore, summaries: list[ExplanationSummary]) -> None:
    for summary in summaries:
        await store.save(ExplanationRecord(summary=summary))


def _commands(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT``."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


async def _follow(store: ExplanationStore, query: ExplanationQuery) -> tuple[list[str], list[ScannedPage]]:
    """Every page of ``query``, following cursors until there is none."""
    ids: list[str] = []
    pages: list[ScannedPage] = []
    for _ in range(500):
        page = await store.query(query)
        pages.append(page)
        ids += [summary.request_id for summary in page.items]
        if page.next_cursor is None:
            return ids, pages
        query = query.model_copy(update={"cursor": page.next_cursor})
    raise AssertionError("the cursors never ended")


async def test_a_filter_matching_nothing_stops_at_the_bound_and_its_cursor_finishes_the_scan(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    """The audit's request (cohort and predicted class that never meet) over indices larger than the bound."""
    store = make_store(examine_max=BOUND)
    eu = [_summary(i, cohort={"region": "eu"}, predicted=3) for i in range(150)]
    us = [_summary(1000 + i, cohort={"region": "us"}, predicted=99) for i in range(100)]
    await _save_many(store, eu + us)
    query = ExplanationQuery(model="digits", cohort=("region", "eu"), predicted=99, limit=1)

    redis_client.config_resetstat()
    first = await store.query(query)

    assert (first.items, first.examined, first.complete) == ([], BOUND, False)
    assert first.next_cursor is not None
    calls = _commands(redis_client)
    assert "hget" not in calls  # nothing failing an indexed filter is fetched, let alone parsed
    assert calls["zrevrangebyscore"] == 1 and calls["zmscore"] == 1

    ids, pages = await _follow(store, query)
    assert ids == []
    assert [page.examined for page in pages] == [BOUND, BOUND, 100 - 2 * BOUND]  # the smaller index: predicted 99
    assert [page.complete for page in pages] == [False, False, True]


async def test_an_empty_filter_index_answers_at_once(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    store = make_store(examine_max=BOUND)
    await _save_many(store, [_summary(i, cohort={"region": "eu"}) for i in range(3 * BOUND)])
    redis_client.config_resetstat()

    page = await store.query(ExplanationQuery(model="digits", cohort=("region", "eu"), predicted=99, limit=1))

    assert (page.items, page.next_cursor, page.examined, page.complete) == ([], None, 0, True)
    assert "zrevrangebyscore" not in _commands(redis_client)


def _dataset() -> list[ExplanationSummary]:
    rng = random.Random(7)
    return [
        _summary(
            i,
            cohort={"region": rng.choice(["eu", "eu", "us", "apac"])},
            predicted=rng.choice([0, 1, 1, 2, 2, 2]),
            reasons=rng.choice([("every_n",), ("low_confidence",), ("every_n", "low_confidence")]),
            model_version=rng.choice(["v1", "v1", "v2"]),
        )
        for i in range(240)
    ]


FILTERS = [
    pytest.param({}, id="no-filter"),
    pytest.param({"cohort": ("region", "eu")}, id="cohort"),
    pytest.param({"cohort": ("region", "apac"), "predicted": 0}, id="sparse-pair"),
    pytest.param({"reason": "low_confidence", "predicted": 1, "version": "v2"}, id="three-filters"),
    pytest.param({"cohort": ("region", "us"), "since": T0 + 130.0, "until": T0 + 160.0}, id="time-range"),
    pytest.param({"cohort": ("region", "mars")}, id="no-such-cohort"),
]


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("limit", [1, 4, 50])
async def test_bounded_pages_hold_exactly_the_unbounded_matches(
    make_store: Callable[..., ExplanationStore], filters: dict[str, Any], limit: int
) -> None:
    summaries = _dataset()
    unbounded, bounded = make_store(), make_store(examine_max=7)
    await _save_many(unbounded, summaries)
    query = ExplanationQuery.model_validate({"model": "digits", "limit": limit, **filters})
    expected = [
        s.request_id
        for s in sorted(summaries, key=lambda s: (s.timestamp, s.request_id), reverse=True)
        if _wanted(s, query)
    ]

    whole = await unbounded.query(query.model_copy(update={"limit": 500}))
    assert [s.request_id for s in whole.items] == expected and whole.complete

    unbounded_ids, unbounded_pages = await _follow(unbounded, query)
    assert unbounded_ids == expected
    assert all(page.complete for page in unbounded_pages)
    assert all(len(page.items) == limit for page in unbounded_pages[:-1])

    bounded_ids, bounded_pages = await _follow(bounded, query)
    assert bounded_ids == expected
    assert all(page.examined <= 7 and len(page.items) <= limit for page in bounded_pages)
    assert bounded_pages[-1].complete
    for page in bounded_pages:
        if page.complete and page.next_cursor is not None:  # a complete page is the unbounded page from there
            assert len(page.items) == limit


def _wanted(summary: ExplanationSummary, query: ExplanationQuery) -> bool:
    return (
        (query.cohort is None or summary.cohort.get(query.cohort[0]) == query.cohort[1])
        and (query.predicted is None or summary.predicted == query.predicted)
        and (query.reason is None or query.reason in summary.reasons)
        and (query.version is None or summary.model_version == query.version)
        and (query.since is None or summary.timestamp >= query.since)
        and (query.until is None or summary.timestamp <= query.until)
    )


async def test_entries_skipped_before_the_cursor_do_not_count_and_a_stopped_scan_still_advances(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    """More entries share one time than the bound allows: the scan still moves on, one bound at a time."""
    store = make_store(examine_max=5)
    index = keys.explanation_index("digits", "predicted", "99")
    redis_client.zadd(index, {f"x{i:03d}": T0 for i in range(23)})  # indexed, no record: nothing to list
    redis_client.zadd(keys.explanation_index("digits", "cohort", "region=eu"), {f"x{i:03d}": T0 for i in range(30)})

    _, pages = await _follow(store, ExplanationQuery(model="digits", cohort=("region", "eu"), predicted=99))

    assert [page.examined for page in pages] == [5, 5, 5, 5, 3]
    assert [page.complete for page in pages] == [False] * 4 + [True]
