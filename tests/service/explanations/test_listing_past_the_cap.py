"""GET /v1/explanations over a model past its ``max_per_model``: the pages list the newest records kept, each once,
and a cursor taken before the cap removed older records continues over those kept (real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from common.redis import connect
from sampler.explanation_records import ExplanationRecord, ExplanationSummary
from sampler.explanations import ExplanationStore

T0 = time.time() - 600
CAP = 20


def _summary(i: int) -> ExplanationSummary:
    return ExplanationSummary(
        model="digits",
        model_version="v1",
        request_id=f"r{i:03d}",
        status="done",
        reasons=("every_n", "low_margin") if i % 2 else ("every_n",),
        predicted=i % 3,
        confidence=0.9,
        timestamp=T0 + i // 2,  # pairs share a time: the cursor breaks ties by id
        methods=("saliency",),
    )


def _save(redis_url: str, numbers: Iterable[int]) -> None:
    async def save() -> None:
        client = connect(redis_url, timeout_s=2.0)
        store = ExplanationStore(client, ttl_s=3600, max_per_model=CAP)
        for i in numbers:
            await store.save(ExplanationRecord(summary=_summary(i)))
        await client.aclose()

    asyncio.run(save())


def _pages(client: TestClient, cursor: str | None = None, **params: Any) -> tuple[list[str], int]:
    """Every request id listed from ``cursor`` on, in order, and the pages it took (each complete)."""
    found: list[str] = []
    pages = 0
    while True:
        query = {"model": "digits", "limit": "7", **params} | ({"cursor": cursor} if cursor else {})
        response = client.get("/v1/explanations", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["complete"]
        found += [item["request_id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return found, pages


def _newest_first(numbers: Iterable[int]) -> list[str]:
    return sorted((f"r{i:03d}" for i in numbers), key=lambda rid: (_summary(int(rid[1:])).timestamp, rid), reverse=True)


@pytest.mark.parametrize(
    ("params", "kept"),
    [
        pytest.param({}, range(10, 30), id="unfiltered"),
        pytest.param({"reason": "low_margin"}, range(11, 30, 2), id="by-reason"),
        pytest.param({"predicted": "1"}, [i for i in range(10, 30) if i % 3 == 1], id="by-predicted-class"),
    ],
)
def test_the_pages_list_the_newest_records_kept_each_once(
    client: TestClient, redis_url: str, params: dict[str, str], kept: Iterable[int]
) -> None:
    _save(redis_url, range(30))

    found, pages = _pages(client, **params)

    assert found == _newest_first(kept)
    assert pages == -(-len(found) // 7)


def test_a_cursor_taken_before_the_cap_removed_records_continues_over_those_kept(
    client: TestClient, redis_url: str
) -> None:
    _save(redis_url, range(20))
    first = client.get("/v1/explanations", params={"model": "digits", "limit": "7"}).json()
    assert [item["request_id"] for item in first["items"]] == _newest_first(range(20))[:7]

    _save(redis_url, range(20, 30))  # the 10 oldest go, some of them past the cursor

    rest, _ = _pages(client, first["next_cursor"])
    assert rest == _newest_first(range(10, 13))
