"""The explanation store against a real Redis: idempotent writes, indices, filters, pages, TTLs."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis

from common import keys
from common.errors import InvalidInput
from common.redis import connect
from helpers import hash_field
from sampler.explanation_records import (
    ExplanationDetail,
    ExplanationQuery,
    ExplanationRecord,
    ExplanationSummary,
    SanityFigure,
    StoredAttribution,
)
from sampler.explanations import ExplanationStore

pytestmark = pytest.mark.anyio
T0 = time.time() - 1000  # index entries older than the retention are trimmed on write


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[ExplanationStore]:
    client = connect(redis_url, timeout_s=1.0)
    yield ExplanationStore(client, ttl_s=3600)
    await client.aclose()


def admit_regions(client: redis.Redis, *values: str) -> None:
    """The fleet's decision that these ``region`` values of ``digits`` are labelled (``monitors.cohort_admission``,
    which gives the set a TTL): only those are indexed."""
    client.sadd(keys.cohort_values("digits", "region"), *values)
    client.expire(keys.cohort_values("digits", "region"), 3600)


def summary(request_id: str, timestamp: float, **fields: object) -> ExplanationSummary:
    values: dict[str, object] = {
        "model": "digits",
        "model_version": "v1",
        "request_id": request_id,
        "status": "done",
        "reasons": ("every_n",),
        "predicted": 3,
        "confidence": 0.9,
        "timestamp": T0 + timestamp,
    }
    values.update(fields)
    return ExplanationSummary.model_validate(values)


def test_attribution_round_trip_keeps_relative_precision() -> None:
    values = np.random.default_rng(0).normal(0, 1e-6, (1, 8, 8)).astype(np.float32)
    stored = StoredAttribution.from_array(values, target=3)
    np.testing.assert_allclose(stored.to_array(), values, atol=1e-6 * 2e-3 * 8)


async def test_done_record_is_never_overwritten(store: ExplanationStore) -> None:
    done = ExplanationRecord(summary=summary("a", 10.0, methods=("saliency",)), detail=ExplanationDetail(agreement=0.5))
    assert await store.save(done)
    assert not await store.save(
        ExplanationRecord(summary=summary("a", 10.0, status="failed"), detail=ExplanationDetail(error="late duplicate"))
    )
    stored = await store.get("digits", "a")
    assert stored is not None and stored.summary.status == "done" and stored.detail.agreement == 0.5
    again = ExplanationRecord(
        summary=summary("a", 11.0, methods=("saliency",)), detail=ExplanationDetail(agreement=0.9)
    )
    assert not await store.save(again), "a redelivered entry explained again is a duplicate, not a new result"
    stored = await store.get("digits", "a")
    assert stored is not None and stored.summary == done.summary and stored.detail.agreement == 0.5


async def test_failed_record_is_replaced_by_a_later_success(store: ExplanationStore) -> None:
    await store.save(
        ExplanationRecord(summary=summary("a", 10.0, status="failed"), detail=ExplanationDetail(error="boom"))
    )
    assert await store.save(ExplanationRecord(summary=summary("a", 10.0)))
    stored = await store.get("digits", "a")
    assert stored is not None and stored.summary.status == "done" and stored.detail.error is None


async def test_filters_and_pages_newest_first(store: ExplanationStore, redis_client: redis.Redis) -> None:
    admit_regions(redis_client, "eu", "us")
    for i in range(10):
        await store.save(
            ExplanationRecord(
                summary=summary(
                    f"r{i}",
                    100.0 + i // 2,  # pairs share a timestamp: the cursor must break ties
                    reasons=("low_confidence",) if i % 2 else ("every_n",),
                    cohort={"region": "eu" if i < 5 else "us"},
                    predicted=i % 3,
                )
            )
        )
    everything = await store.query(ExplanationQuery(model="digits", limit=100))
    assert [s.request_id for s in everything.items] == [f"r{i}" for i in (9, 8, 7, 6, 5, 4, 3, 2, 1, 0)]
    assert everything.next_cursor is None

    seen, cursor = [], None
    while True:
        page = await store.query(ExplanationQuery(model="digits", limit=3, cursor=cursor))
        seen += [s.request_id for s in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [s.request_id for s in everything.items]

    async def ids(**filters: object) -> list[str]:
        page = await store.query(ExplanationQuery.model_validate({"model": "digits", **filters}))
        return [s.request_id for s in page.items]

    assert await ids(reason="low_confidence") == ["r9", "r7", "r5", "r3", "r1"]
    assert await ids(cohort=("region", "eu"), reason="every_n") == ["r4", "r2", "r0"]
    assert await ids(predicted=0) == ["r9", "r6", "r3", "r0"]
    assert await ids(since=T0 + 102.0, until=T0 + 103.0) == ["r7", "r6", "r5", "r4"]
    assert await ids(version="v2") == []


async def test_entries_older_than_the_retention_are_trimmed(store: ExplanationStore) -> None:
    await store.save(ExplanationRecord(summary=summary("old", -10_000.0)))
    await store.save(ExplanationRecord(summary=summary("new", 0.0)))
    page = await store.query(ExplanationQuery(model="digits"))
    assert [s.request_id for s in page.items] == ["new"]


async def test_every_key_has_a_ttl(store: ExplanationStore, redis_client: redis.Redis) -> None:
    admit_regions(redis_client, "eu")
    await store.save(ExplanationRecord(summary=summary("a", 10.0, cohort={"region": "eu"})))
    for key in redis_client.keys("vai:*"):
        if key != b"vai:expl-models":
            assert 0 < redis_client.ttl(key) <= 3600, key


async def test_latest_done_finds_finished_explanations_behind_a_backlog_of_queued_ones(store: ExplanationStore) -> None:
    # Ten finished explanations, then 2,000 newer events still queued (workers behind): the finished ones
    # are still found, newest first, and a queued record finished later joins them.
    for i in range(10):
        await store.save(ExplanationRecord(summary=summary(f"done-{i}", float(i))))
    for i in range(2000):
        await store.save(ExplanationRecord(summary=summary(f"queued-{i}", 100.0 + i / 10, status="queued")))
    found = await store.latest_done("digits", limit=5)
    assert [s.request_id for s in found] == [f"done-{i}" for i in (9, 8, 7, 6, 5)]
    await store.save(ExplanationRecord(summary=summary("queued-1999", 100.0 + 199.9)))
    assert [s.request_id for s in await store.latest_done("digits", limit=2)] == ["queued-1999", "done-9"]
    assert len(await store.latest_done("digits", limit=50)) == 11


async def test_an_unreadable_summary_is_skipped_and_logged_once(
    store: ExplanationStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    for name, at in (("before", 10.0), ("bad", 20.0), ("after", 30.0)):
        await store.save(ExplanationRecord(summary=summary(name, at)))
    # What an infinite event time stored as JSON looks like: pydantic writes it as null.
    broken = summary("bad", 20.0).model_dump(mode="json") | {"timestamp": None}
    redis_client.hset(keys.explanation("digits", "bad"), "summary", json.dumps(broken))
    caplog.set_level(logging.WARNING, logger="sampler.explanations")

    for _ in range(2):
        page = await store.query(ExplanationQuery(model="digits"))
        assert [s.request_id for s in page.items] == ["after", "before"]
        assert [s.request_id for s in await store.latest_done("digits", limit=10)] == ["after", "before"]
        assert await store.get("digits", "bad") is None
    warnings = [r.getMessage() for r in caplog.records if "unreadable stored" in r.getMessage()]
    assert len(warnings) == 2, warnings  # the summary (in lists) and the record (by id), once each
    assert all("vai:expl:digits:bad" in w and "timestamp" in w for w in warnings)


async def test_a_stored_nan_confidence_is_unreadable(store: ExplanationStore, redis_client: redis.Redis) -> None:
    await store.save(ExplanationRecord(summary=summary("nan", 10.0)))
    stored = hash_field(redis_client, keys.explanation("digits", "nan"), "summary")
    assert stored is not None
    redis_client.hset(
        keys.explanation("digits", "nan"), "summary", stored.replace(b'"confidence":0.9', b'"confidence":NaN')
    )
    assert (await store.query(ExplanationQuery(model="digits"))).items == []


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"timestamp": math.nan}, id="nan-timestamp"),
        pytest.param({"timestamp": math.inf}, id="inf-timestamp"),
        pytest.param({"confidence": math.nan}, id="nan-confidence"),
    ],
)
async def test_a_non_finite_record_is_refused_before_anything_is_written(
    store: ExplanationStore, redis_client: redis.Redis, fields: dict[str, float]
) -> None:
    record = ExplanationRecord(summary=summary("odd", 10.0).model_copy(update=fields))  # copies skip validation
    with pytest.raises(InvalidInput) as refused:
        await store.save(record)
    assert refused.value.field == next(iter(fields))
    assert redis_client.keys("vai:*") == []


async def test_a_script_error_leaves_no_record_behind(store: ExplanationStore, redis_client: redis.Redis) -> None:
    """Redis scripts do not roll back: the indices go first, so a refused index write leaves no record."""
    redis_client.set(keys.explanation_index("digits", "predicted", "3"), "not a sorted set")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        await store.save(ExplanationRecord(summary=summary("a", 10.0)))
    assert not redis_client.exists(keys.explanation("digits", "a"))


async def test_an_unreadable_sanity_figure_is_left_out_and_logged_once(
    store: ExplanationStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = SanityFigure(similarity=0.1, flagged=False, samples=16, checked_at=T0)
    await store.save_sanity("digits", "gradcam", good)
    redis_client.hset(keys.sanity("digits"), "saliency", '{"similarity":"high","flagged":false}')
    caplog.set_level(logging.WARNING, logger="sampler.explanations")
    for _ in range(3):
        assert await store.sanity("digits") == {"gradcam": good}
    warnings = [r.getMessage() for r in caplog.records if "unreadable stored" in r.getMessage()]
    assert len(warnings) == 1 and "saliency" in warnings[0] and "vai:sanity:digits" in warnings[0], warnings
