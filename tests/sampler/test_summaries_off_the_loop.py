"""The store reads a page's summaries in one script call and parses all but a few of them in a worker thread: a
pipeline of one ``HGET`` each, and 64 summaries parsed on the loop, held the event loop for up to ~16 and ~18 ms."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from common import keys
from common.redis import connect
from sampler import explanations
from sampler.explanation_records import ExplanationQuery, ExplanationRecord, ExplanationSummary
from sampler.explanations import ExplanationStore

pytestmark = pytest.mark.anyio
T0 = time.time() - 1000


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[ExplanationStore]:
    client = connect(redis_url, timeout_s=2.0)
    yield ExplanationStore(client, ttl_s=3600)
    await client.aclose()


def _summary(i: int) -> ExplanationSummary:
    return ExplanationSummary(
        model="digits",
        model_version="v1",
        request_id=f"r{i:03d}",
        status="done",
        reasons=("every_n",),
        predicted=3,
        confidence=0.9,
        timestamp=T0 + i,
        cohort={"region": "eu"},
    )


@pytest.fixture
def parsed_in(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Where each batch of stored summaries was parsed: ``loop`` or ``thread``."""
    where: list[str] = []
    parse = explanations._parsed
    loop_thread = threading.get_ident()

    def watched(raws: list[tuple[str, bytes]]) -> Any:
        where.append("loop" if threading.get_ident() == loop_thread else "thread")
        return parse(raws)

    monkeypatch.setattr(explanations, "_parsed", watched)
    return where


def _calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


@pytest.mark.parametrize(("limit", "where"), [pytest.param(63, "thread", id="63"), pytest.param(1, "loop", id="1")])
async def test_a_page_s_summaries_are_parsed_in_a_thread_unless_a_few(
    store: ExplanationStore, redis_client: redis.Redis, parsed_in: list[str], limit: int, where: str
) -> None:
    for i in range(80):
        await store.save(ExplanationRecord(summary=_summary(i)))
    redis_client.config_resetstat()

    page = await store.query(ExplanationQuery(model="digits", limit=limit))

    assert [item.request_id for item in page.items] == [f"r{i:03d}" for i in range(79, 79 - limit, -1)]
    assert parsed_in == [where]
    assert _calls(redis_client)["eval"] == 1  # one script read them all


async def test_the_script_keeps_the_order_and_skips_summaries_gone_or_unreadable(
    store: ExplanationStore, redis_client: redis.Redis
) -> None:
    for i in range(6):
        await store.save(ExplanationRecord(summary=_summary(i)))
    redis_client.delete(keys.explanation("digits", "r004"))  # expired before its index entry was trimmed
    redis_client.hset(keys.explanation("digits", "r002"), "summary", b'{"model": 3}')

    found = await store.latest_done("digits", limit=10)
    page = await store.query(ExplanationQuery(model="digits", limit=10))

    assert [s.request_id for s in found] == [s.request_id for s in page.items] == ["r005", "r003", "r001", "r000"]


async def test_a_long_trust_report_read_is_parsed_off_the_loop(store: ExplanationStore, parsed_in: list[str]) -> None:
    for i in range(40):  # ~12 KiB of JSON
        await store.save(ExplanationRecord(summary=_summary(i)))

    found = await store.latest_done("digits", limit=40)

    assert len(found) == 40 and parsed_in == ["thread"]
