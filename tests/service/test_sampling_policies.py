"""Sampling policies under load: the cap on models with a policy, concurrent changes on one replica, and a refresh
that reads nothing more when nothing changed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from common import keys
from helpers import app_of, event, sidecar_of

ClientFactory = Callable[..., TestClient]


def _path(model: str) -> str:
    return f"/v1/models/{model}/sampling"


def test_a_policy_for_a_model_beyond_the_cap_is_refused_and_stores_nothing(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    client = make_client(max_models=3)
    assert client.post("/v1/events", json=event("r1")).status_code == 202  # digits: known to this replica
    for model in ("ghost0", "ghost1"):  # before their first event: allowed within the cap
        assert client.put(_path(model), json={"every_n": 7}).status_code == 200
    matchers = [{"region": f"r{i}"} for i in range(20)]
    refused = client.put(_path("ghost2"), json={"every_n": 7, "flagged_cohorts": matchers})
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "model"
    assert "VAI_MAX_MODELS" in refused.json()["error"]
    assert not redis_client.exists(keys.policy("ghost2"))
    assert redis_client.smembers(keys.POLICY_MODELS) == {b"ghost0", b"ghost1"}
    assert "ghost2" not in sidecar_of(client).sampler._overrides
    assert client.put(_path("digits"), json={"every_n": 3}).status_code == 200  # known: never refused
    assert client.put(_path("ghost0"), json={"every_n": 9}).status_code == 200  # already stored
    assert client.delete(_path("ghost1")).status_code == 200
    assert client.put(_path("ghost2"), json={"every_n": 7}).status_code == 200  # a slot came free


def test_the_cap_counts_the_policies_other_replicas_stored(make_client: ClientFactory) -> None:
    one = make_client(max_models=2)
    two = make_client(max_models=2)
    assert one.put(_path("ghost0"), json={"every_n": 7}).status_code == 200
    assert two.put(_path("ghost1"), json={"every_n": 7}).status_code == 200
    assert one.put(_path("ghost2"), json={"every_n": 7}).status_code == 422
    assert two.put(_path("ghost2"), json={"every_n": 7}).status_code == 422


async def _put_both(client: TestClient, model: str) -> list[dict[str, Any]]:
    """Two PUTs of different fields of ``model`` at once, on the app's own event loop; answers in return order."""
    answers: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app_of(client))
    async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as http:

        async def put(body: dict[str, Any]) -> None:
            response = await http.put(_path(model), json=body)
            assert response.status_code == 200, response.text
            answers.append(response.json())

        await asyncio.gather(put({"every_n": 7}), put({"confidence_below": 0.9}))
    return answers


@pytest.mark.parametrize("trial", range(5))
def test_concurrent_changes_on_one_replica_both_show_at_once(make_client: ClientFactory, trial: int) -> None:
    client = make_client()
    answers = client.portal.call(_put_both, client, f"m{trial}")  # type: ignore[union-attr]
    both = {"every_n": 7, "confidence_below": 0.9}
    assert both.items() <= answers[-1].items(), answers
    assert both.items() <= client.get(_path(f"m{trial}")).json().items()
    sidecar = sidecar_of(client)
    assert sidecar.policy_sync.held[f"m{trial}"] == both


def _hgetall_calls(redis_client: redis.Redis) -> int:
    stats = cast(dict[str, dict[str, int]], redis_client.info("commandstats"))
    return stats.get("cmdstat_hgetall", {}).get("calls", 0)


def test_a_refresh_reads_the_policies_only_when_they_changed(
    make_client: ClientFactory, redis_client: redis.Redis
) -> None:
    client = make_client(policy_refresh_s=3600.0)  # refreshed by hand below
    writer = make_client(policy_refresh_s=3600.0)
    sidecar = sidecar_of(client)

    def refresh() -> None:
        client.portal.call(sidecar._refresh_policies)  # type: ignore[union-attr]

    assert writer.put(_path("digits"), json={"every_n": 7}).status_code == 200
    refresh()
    assert client.get(_path("digits")).json()["every_n"] == 7
    before = _hgetall_calls(redis_client)
    for _ in range(5):
        refresh()
    assert _hgetall_calls(redis_client) == before
    assert writer.put(_path("digits"), json={"every_n": 8}).status_code == 200
    before = _hgetall_calls(redis_client)
    refresh()
    assert _hgetall_calls(redis_client) > before
    assert client.get(_path("digits")).json()["every_n"] == 8
    redis_client.delete(keys.POLICY_VERSION)  # as a writer of an earlier release would leave it: read every time
    before = _hgetall_calls(redis_client)
    refresh()
    refresh()
    assert _hgetall_calls(redis_client) >= before + 2
