"""The explanation store keeps at most ``max_per_model`` records per model: a save past it removes the oldest (by event
time) from their hashes and from every index, a few a save, and a ``done`` record stays final (real Redis)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from common import keys
from common.redis import connect
from sampler.explanation_records import ExplanationDetail, ExplanationQuery, ExplanationRecord, ExplanationSummary
from sampler.explanations import INDICES_FIELD, REMOVED_PER_SAVE, ExplanationStore

pytestmark = pytest.mark.anyio
T0 = time.time() - 1000  # index entries older than the retention are trimmed on write


@pytest.fixture
async def make_store(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[Callable[..., ExplanationStore]]:
    client = connect(redis_url, timeout_s=2.0)
    redis_client.sadd(keys.cohort_values("digits", "region"), "eu", "us")  # admitted by the fleet: indexed
    yield lambda **options: ExplanationStore(client, ttl_s=3600, **options)
    await client.aclose()


def _record(i: int, status: str = "done", **fields: Any) -> ExplanationRecord:
    """Record ``r{i:03d}`` at time ``T0 + i``, its facets varying with ``i`` so that many indices hold it."""
    values: dict[str, Any] = {
        "model": "digits",
        "model_version": f"v{i % 2}",
        "request_id": f"r{i:03d}",
        "status": status,
        "reasons": ("every_n", "low_margin") if i % 3 == 0 else ("every_n",),
        "predicted": i % 4,
        "confidence": 0.9,
        "timestamp": T0 + i,
        "cohort": {"region": "eu" if i % 2 else "us"},
    }
    values.update(fields)
    return ExplanationRecord(summary=ExplanationSummary.model_validate(values))


def _indices(client: redis.Redis) -> dict[str, set[str]]:
    """Every index of ``digits`` and its members."""
    found: dict[str, set[str]] = {}
    for name in client.scan_iter(match=keys.explanation_index("digits", "") + "*"):  # every facet's
        members: list[bytes] = client.zrange(name, 0, -1)  # type: ignore[assignment]
        found[name.decode()] = {member.decode() for member in members}
    return found


def _stored(client: redis.Redis) -> set[str]:
    """The request ids of ``digits`` whose hash exists."""
    prefix = keys.explanation("digits", "")
    return {name.decode()[len(prefix) :] for name in client.scan_iter(match=prefix + "*")}


def _assert_only(client: redis.Redis, kept: set[str]) -> None:
    """``kept`` are the records stored, in the time index, and the only members of any index."""
    assert _stored(client) == kept
    indices = _indices(client)
    assert set(indices[keys.explanation_index("digits")]) == kept
    assert keys.explanation_index("digits", "cohort", "region=eu") in indices  # facets' indices read too
    strays = {name: sorted(members - kept)[:3] for name, members in indices.items() if members - kept}
    assert not strays, f"indices still point at removed records, e.g. {strays}"


@pytest.mark.parametrize(
    "order",
    [
        pytest.param("oldest-first", id="saved-in-time-order"),
        pytest.param("shuffled", id="saved-out-of-order"),
    ],
)
async def test_saving_past_the_cap_keeps_the_newest_and_removes_the_rest_from_every_index(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis, order: str
) -> None:
    store = make_store(max_per_model=20)
    numbers = list(range(30))
    if order == "shuffled":
        random.Random(7).shuffle(numbers)

    for i in numbers:
        assert await store.save(_record(i))

    _assert_only(redis_client, {f"r{i:03d}" for i in range(10, 30)})
    assert store.removed_by_cap == {"digits": 10}
    page = await store.query(ExplanationQuery(model="digits", limit=100))
    assert [item.request_id for item in page.items] == [f"r{i:03d}" for i in reversed(range(10, 30))]
    assert page.complete


async def test_a_record_is_removed_from_the_indices_of_all_its_saves(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    """A record is saved ``queued`` by the sidecar, then ``done`` by a worker, which adds the index of finished ones
    and the cohort index of a value the fleet admitted in between, but not the index of a value whose admission has
    expired since: the cap removes it from the indices of both saves."""
    store = make_store(max_per_model=5)
    cohort = {"region": "eu", "zone": "z1"}
    for i in range(5):
        assert await store.save(_record(i, status="queued", cohort=cohort))
    redis_client.sadd(keys.cohort_values("digits", "zone"), "z1")
    redis_client.delete(keys.cohort_values("digits", "region"))
    for i in range(5):
        assert await store.save(_record(i, cohort=cohort))
    for index in ("status:done", "cohort:zone=z1", "cohort:region=eu"):
        assert redis_client.zcard(keys.explanation_index("digits", *index.split(":", 1))) == 5
    redis_client.sadd(keys.cohort_values("digits", "region"), "eu", "us")

    for i in range(5, 8):
        assert await store.save(_record(i, status="queued"))

    _assert_only(redis_client, {f"r{i:03d}" for i in range(3, 8)})
    assert [summary.request_id for summary in await store.latest_done("digits", limit=10)] == ["r004", "r003"]


async def test_a_done_record_is_neither_overwritten_nor_resurrected(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    store = make_store(max_per_model=3)
    done = _record(0).model_copy(update={"detail": ExplanationDetail(agreement=0.5)})
    assert await store.save(done)
    assert await store.save(_record(1, status="queued"))
    assert await store.save(_record(2, status="queued"))

    late = _record(0, status="failed").model_copy(update={"detail": ExplanationDetail(error="late duplicate")})
    assert not await store.save(late), "a done record within the cap stays final"
    kept = await store.get("digits", "r000")
    assert kept is not None and kept.summary.status == "done" and kept.detail.agreement == 0.5

    assert await store.save(_record(3, status="queued"))  # past the cap: r000, the oldest, goes
    assert await store.get("digits", "r000") is None
    _assert_only(redis_client, {"r001", "r002", "r003"})

    await store.save(_record(0, status="queued"))  # the sidecar marks it again (a replay), or a worker redelivers it
    await store.save(done)
    assert await store.get("digits", "r000") is None, "older than every record kept: the cap takes it at once"
    _assert_only(redis_client, {"r001", "r002", "r003"})
    assert await store.save(_record(2))  # a queued record the worker finishes is stored done
    assert not await store.save(_record(2, status="failed"))


async def test_a_lowered_cap_converges_a_few_records_a_save(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    """200 stored under a large cap, then saves under a cap of 50: each removes at most ``REMOVED_PER_SAVE``
    (one bounded script, not 150 deletions at once), the oldest first, until 50 remain."""
    large = make_store(max_per_model=1_000)
    for i in range(200):
        await large.save(_record(i))
    small = make_store(max_per_model=50)

    sizes = []
    i = 200
    while redis_client.zcard(keys.explanation_index("digits")) > 50:
        before = redis_client.zcard(keys.explanation_index("digits"))
        assert await small.save(_record(i))
        i += 1
        sizes.append(redis_client.zcard(keys.explanation_index("digits")))
        assert before + 1 - sizes[-1] <= REMOVED_PER_SAVE
        assert len(sizes) < 50, f"not converging: {sizes}"

    assert sizes[0] == 201 - REMOVED_PER_SAVE
    assert sizes[-1] == 50
    _assert_only(redis_client, {f"r{n:03d}" for n in range(i - 50, i)})
    assert small.removed_by_cap["digits"] == 200 + len(sizes) - 50


async def test_a_model_under_its_cap_keeps_every_record_and_other_models_are_apart(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    store = make_store(max_per_model=10)
    for i in range(10):
        await store.save(_record(i))
    for i in range(15):
        await store.save(_record(i, model="other"))

    _assert_only(redis_client, {f"r{i:03d}" for i in range(10)})
    assert redis_client.zcard(keys.explanation_index("other")) == 10
    assert store.removed_by_cap == {"other": 5}


async def test_removals_are_logged_a_line_a_minute_at_most(
    make_store: Callable[..., ExplanationStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(max_per_model=2)
    with caplog.at_level(logging.INFO, logger="sampler.explanations"):
        for i in range(6):
            await store.save(_record(i))

    lines = [record.getMessage() for record in caplog.records if "MAX_PER_MODEL" in record.getMessage()]
    assert lines == ["removed the oldest explanations past VAI_EXPLANATIONS_MAX_PER_MODEL=2 per model (digits: 1)"]


async def test_a_cap_below_one_is_refused(make_store: Callable[..., ExplanationStore]) -> None:
    with pytest.raises(ValueError, match="max_per_model"):
        make_store(max_per_model=0)


async def test_a_record_of_an_earlier_release_is_removed_and_skipped_by_the_readers(
    make_store: Callable[..., ExplanationStore], redis_client: redis.Redis
) -> None:
    """Records stored before the cap do not list their indices: the cap deletes their hash and time-index entry, and
    the reads skip what their other indices still hold until the retention trims it."""
    store = make_store(max_per_model=2)
    await store.save(_record(0))
    redis_client.hdel(keys.explanation("digits", "r000"), INDICES_FIELD)

    await store.save(_record(1))
    await store.save(_record(3))

    assert _stored(redis_client) == {"r001", "r003"}
    assert "r000" not in _indices(redis_client)[keys.explanation_index("digits")]
    by_reason = await store.query(ExplanationQuery(model="digits", reason="low_margin", limit=10))
    assert [item.request_id for item in by_reason.items] == ["r003"] and by_reason.complete
    assert [summary.request_id for summary in await store.latest_done("digits", limit=10)] == ["r003", "r001"]
