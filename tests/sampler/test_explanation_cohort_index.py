"""The explanations' cohort indices stay within the metrics' bounds: a pair is indexed only when the fleet admitted
its value (``monitors.cohort_admission``, the decisions of the guard behind ``vai_cohort_events_total``): keys of
``VAI_COHORT_KEYS`` only, ``VAI_MAX_COHORT_VALUES`` values each. Every pair stays in the record itself."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from common import keys
from common.redis import connect
from helpers import event, wait_until
from monitors.cohort_admission import CohortAdmission
from monitors.cohorts import CohortGuard
from sampler.explanation_records import ExplanationQuery, ExplanationRecord, ExplanationSummary
from sampler.explanations import ExplanationStore

T0 = time.time() - 100
COHORT_KEYS = ("region", "tier")


def _summary(i: int, cohort: dict[str, str], **fields: Any) -> ExplanationSummary:
    values: dict[str, Any] = {
        "model": "digits",
        "model_version": "v1",
        "request_id": f"r{i}",
        "status": "queued",
        "reasons": ("every_n",),
        "predicted": 3,
        "confidence": 0.9,
        "timestamp": T0 + i,
        "cohort": cohort,
    }
    return ExplanationSummary.model_validate(values | fields)


def _wide_cohort(i: int) -> dict[str, str]:
    """32 cohort keys (the most an event may carry) with values of 128 characters, new ones in every event: two of
    them allowlisted, the rest not."""
    wide = {f"k{j:02d}-" + "k" * 120: f"{i:05d}" + "v" * 123 for j in range(30)}
    return wide | {"region": f"region-{i}", "tier": f"tier-{i % 7}"}


def _cohort_indices(client: redis.Redis) -> set[str]:
    return {key.decode() for key in client.scan_iter("vai:idx:digits:cohort:*", count=1000)}


def _index(key: str, value: str) -> str:
    return keys.explanation_index("digits", "cohort", f"{key}={value}")


@pytest.fixture
async def connection(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url, timeout_s=2.0)
    yield client
    await client.aclose()


@pytest.mark.anyio
async def test_indices_stay_within_the_values_the_fleet_admitted(connection: Redis, redis_client: redis.Redis) -> None:
    """200 sampled events with 32 cohort pairs each, new values in every event, made 6,601 index keys, each living
    for the retention. Now: one per admitted value of an allowlisted key, whoever saves the record."""
    guard = CohortGuard(keys=COHORT_KEYS, max_values_per_key=3, fleet=True)  # a sidecar's, with its decision rounds
    admission = CohortAdmission(connection, guard, [])
    sidecar, worker = ExplanationStore(connection, ttl_s=3600), ExplanationStore(connection, ttl_s=3600)
    for i in range(200):
        guard.values("digits", _wide_cohort(i))  # what ingest does with each event
        if i % 10 == 9:
            await admission.settle()
        await sidecar.save(ExplanationRecord(summary=_summary(i, _wide_cohort(i))))  # queued

    # the first events were queued before their values were decided: region-0..2 are admitted, not indexed yet
    tiers = {_index("tier", f"tier-{t}") for t in range(3)}
    assert _cohort_indices(redis_client) == tiers
    for i in range(200):  # the worker stores each explained: by now every value is decided
        await worker.save(ExplanationRecord(summary=_summary(i, _wide_cohort(i), status="done")))
    assert _cohort_indices(redis_client) == tiers | {_index("region", f"region-{r}") for r in range(3)}
    for index in _cohort_indices(redis_client):
        assert 0 < redis_client.ttl(index) <= 3600

    found = await worker.get("digits", "r199")
    assert found is not None and found.summary.cohort == _wide_cohort(199)  # every pair kept in the record
    page = await worker.query(ExplanationQuery(model="digits", cohort=("tier", "tier-1"), limit=500))
    assert [s.request_id for s in page.items] == [f"r{i}" for i in range(199, -1, -1) if i % 7 == 1]
    page = await worker.query(ExplanationQuery(model="digits", cohort=("region", "region-0"), limit=500))
    assert [s.request_id for s in page.items] == ["r0"]


@pytest.mark.anyio
async def test_a_value_the_fleet_refused_is_never_indexed(connection: Redis, redis_client: redis.Redis) -> None:
    guard = CohortGuard(keys=COHORT_KEYS, max_values_per_key=1, fleet=True)
    admission = CohortAdmission(connection, guard, [])
    store = ExplanationStore(connection, ttl_s=3600)
    for i, region in enumerate(["eu", "us", "__other__"]):
        guard.values("digits", {"region": region})
        await admission.settle()
        await store.save(ExplanationRecord(summary=_summary(i, {"region": region}, status="done")))
    assert _cohort_indices(redis_client) == {_index("region", "eu")}
    assert await store.cohort_admitted("digits", "region", "eu") == (True, 1)
    assert await store.cohort_admitted("digits", "region", "us") == (False, 1)


def _wide_event(i: int) -> dict[str, Any]:
    return event(f"e{i}", cohort=_wide_cohort(i))


def test_a_sidecar_s_sampled_events_make_a_bounded_number_of_index_keys(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    models = {"digits": {"sampling": {"every_n": 1, "max_per_second": 100_000}}}
    client = make_client(models=models, cohort_keys=COHORT_KEYS, max_cohort_values=3)
    for start in range(0, 200, 50):
        answer = client.post("/v1/events", json={"events": [_wide_event(i) for i in range(start, start + 50)]})
        assert answer.status_code == 202, answer.text
    wait_until(
        lambda: len(list(redis_client.scan_iter("vai:expl:digits:*", count=1000))) == 200,
        what="the 200 sampled events' records",
    )
    indices = {key.decode() for key in redis_client.scan_iter("vai:idx:digits:*", count=1000)}
    cohort = {key for key in indices if key.startswith(keys.explanation_index("digits", "cohort", "x")[:-1])}
    assert len(cohort) <= len(COHORT_KEYS) * 3, sorted(cohort)
    assert len(indices - cohort) <= 4  # time, reason every_n, predicted 0, version
