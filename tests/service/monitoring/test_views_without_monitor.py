"""The views a monitor computes on demand (distributions, projection) for a model no monitor watches: a 404 that says
so, as ``/drift`` answers, not a 503 that a client would poll for ever. While a monitor owns the model, or one is alive
to take it, a missing view is being computed: 503 with Retry-After, then the view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from common import keys
from helpers import MonitorRunner, event, wait_until

VIEWS = ("distributions", "projection")


def _known(client: TestClient, redis_client: redis.Redis) -> None:
    """``digits`` known to the monitors: its sidecar published an event of it."""
    assert client.post("/v1/events", json=event("a", embedding=[0.5, 0.25])).status_code == 202
    wait_until(lambda: redis_client.sismember(keys.MONITORED_MODELS, "digits"), what="digits published")


def _redis_ms(redis_client: redis.Redis) -> int:
    seconds, microseconds = redis_client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


def _get(client: TestClient, view: str) -> Any:
    return client.get(f"/v1/models/digits/{view}")


def test_a_view_no_monitor_will_compute_is_404_as_drift_says(client: TestClient, redis_client: redis.Redis) -> None:
    _known(client, redis_client)
    drift = client.get("/v1/models/digits/drift")
    assert drift.status_code == 404 and "no `vai-sidecar monitor`" in drift.json()["error"]
    for view in VIEWS:
        response = _get(client, view)
        assert response.status_code == 404, (view, response.text)
        body = response.json()
        assert body["field"] == "model" and "no `vai-sidecar monitor`" in body["error"], view
        assert "retry-after" not in response.headers, view


@pytest.mark.parametrize(
    ("expires_in_ms", "status"),
    [
        pytest.param(60_000, 503, id="live-member-503"),
        pytest.param(-1_000, 404, id="lapsed-member-404"),
    ],
)
def test_a_live_monitor_that_will_take_the_model_makes_it_503_by_redis_clock(
    client: TestClient, redis_client: redis.Redis, expires_in_ms: int, status: int
) -> None:
    """No lease yet, but a member of the monitors (scored by when its membership expires, by Redis's clock) will
    take the model within a round: 503. A membership that lapsed (its monitor gone) is none."""
    _known(client, redis_client)
    redis_client.zadd(keys.MONITOR_MEMBERS, {"a-monitor": _redis_ms(redis_client) + expires_in_ms})
    for view in VIEWS:
        response = _get(client, view)
        assert response.status_code == status, (view, response.text)
        if status == 503:
            assert response.headers["retry-after"].isdigit(), view


def test_an_owned_model_is_503_while_computed_then_its_view(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    """Another monitor holds the lease (it will compute the view): 503. Once a running monitor owns the model, the
    distributions come."""
    client = make_client()
    _known(client, redis_client)
    redis_client.set(keys.monitor_lease("digits"), b"another-monitor", px=1500)
    for view in VIEWS:
        response = _get(client, view)
        assert response.status_code == 503 and "being computed" in response.json()["error"], (view, response.text)
    monitors.start(projection_methods=("pca",), monitor_lease_ttl_s=5.0)
    wait_until(lambda: _get(client, "distributions").status_code == 200, timeout_s=60, what="the distributions")
    assert _get(client, "distributions").json()["production_count"] == 1
