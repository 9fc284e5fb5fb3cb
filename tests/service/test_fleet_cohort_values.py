"""Cohort values admitted for the whole fleet: two replicas that see values in opposite orders and the monitor
(and its successor after a take-over) label by the same values; every event counts once, Redis down or not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from common.embedded_redis import EmbeddedRedis
from helpers import MonitorRunner, event, paused_redis, wait_until

COHORTS: dict[str, Any] = {"cohort_keys": ("region",), "max_cohort_values": 2}
ORDER = ["eu", "us", "ap"]


def cohort_counts(registry: CollectorRegistry) -> dict[str, float]:
    """``vai_cohort_events_total`` of model ``digits``, key ``region``, by value."""
    return {
        sample.labels["value"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "vai_cohort_events_total" and sample.labels["model"] == "digits"
    }


def counted(registry: CollectorRegistry, events: int) -> dict[str, float]:
    """The counts once ``events`` are counted (a value new to the fleet counts once it is decided)."""

    def complete() -> dict[str, float] | None:
        found = cohort_counts(registry)
        return found if sum(found.values()) == events else None

    return wait_until(complete, what=f"{events} events counted by cohort value")


def monitor_slices(registry: CollectorRegistry, events: int) -> dict[str, float]:
    """The owning monitor's labelled predictions per cohort slice (``all``, or the value of key ``region``, as
    ``vai_cohort_events_total`` labels it), once ``events`` are in ``all``."""

    def published() -> dict[str, float] | None:
        found = {
            sample.labels["value"]: sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "vai_cohort_labelled_total" and sample.labels["model"] == "digits"
        }
        return found if found.get("all") == events else None

    return wait_until(published, timeout_s=30, what=f"the monitor to publish {events} labelled predictions")


def post(client: TestClient, events: list[dict[str, Any]]) -> None:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 202 and response.json()["accepted"] == len(events), response.text


def test_replicas_and_monitors_label_by_the_same_values(
    make_client: Callable[..., TestClient], monitors: MonitorRunner, redis_client: redis.Redis
) -> None:
    first_registry, second_registry, monitor_registry = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    owner = monitors.start(registry=monitor_registry, **COHORTS)
    # The first replica publishes nothing to the monitor, which so sees the values only in the second's order.
    first = make_client(registry=first_registry, monitors_enabled=False, **COHORTS)
    second = make_client(registry=second_registry, **COHORTS)

    post(second, [event("plain")])  # the monitor owns the model before it has seen any cohort value
    wait_until(lambda: "digits" in owner.owned, timeout_s=15, what="the monitor to take the model")
    post(first, [event(f"a{i}", cohort={"region": region}) for i, region in enumerate(ORDER)])
    assert counted(first_registry, 3) == {"eu": 1, "us": 1, "__other__": 1}
    # The other replica sees them the other way round, with labels (so the monitor slices them in that order):
    # by its own order it would admit ap and us.
    reverse = [event(f"b{i}", cohort={"region": region}, label=0) for i, region in enumerate(reversed(ORDER))]
    post(second, reverse)
    assert counted(second_registry, 3) == {"eu": 1, "us": 1, "__other__": 1}  # "plain" carries no value
    assert redis_client.smembers(keys.cohort_values("digits", "region")) == {b"eu", b"us"}
    expected = {"all": 3, "eu": 1, "us": 1, "__other__": 1}  # the values the replicas count by
    assert monitor_slices(monitor_registry, 3) == expected

    # Decided once: later events of the same values count as before, on either replica.
    post(first, [event("a3", cohort={"region": "ap"}), event("a4", cohort={"region": "us"})])
    assert counted(first_registry, 5) == {"eu": 1, "us": 2, "__other__": 2}

    # A new owner replays the labels (ap first) and slices them as the fleet decided, not in its own order.
    successor_registry = CollectorRegistry()
    successor = monitors.start(registry=successor_registry, **COHORTS)
    monitors.stop(owner)
    wait_until(lambda: "digits" in successor.owned, timeout_s=15, what="the successor to take the model")
    assert monitor_slices(successor_registry, 3) == expected


@contextmanager
def stopped(server: EmbeddedRedis) -> Iterator[None]:
    server.stop()
    try:
        yield
    finally:
        server.start()


@contextmanager
def hung(server: EmbeddedRedis) -> Iterator[None]:
    with paused_redis(server.data_dir):
        yield


@pytest.mark.parametrize("outage", [pytest.param(stopped, id="stopped"), pytest.param(hung, id="hung")])
def test_counting_goes_on_while_redis_is_down(
    make_client: Callable[..., TestClient],
    own_redis: EmbeddedRedis,
    outage: Callable[[EmbeddedRedis], Any],
) -> None:
    registry = CollectorRegistry()
    client = make_client(
        registry=registry, redis_url=own_redis.url, redis_timeout_s=0.2, monitors_enabled=False, **COHORTS
    )
    post(client, [event("r0", cohort={"region": "eu"})])
    assert counted(registry, 1) == {"eu": 1}

    with outage(own_redis):
        # eu is decided here already; us and ap wait for Redis a bounded time, then count as __other__.
        post(client, [event(f"r{i}", cohort={"region": region}) for i, region in enumerate(["us", "eu", "ap"], 1)])
        assert counted(registry, 4) == {"eu": 2, "__other__": 2}
        post(client, [event("r4", cohort={"region": "us"})])  # past the wait: counted at the next try
        assert counted(registry, 5) == {"eu": 2, "__other__": 3}

    # Redis answers again: us had no decision, so the fleet decides it once a try gets through (the first may
    # still fail, on a connection the restart closed, and count its events as __other__: none is lost).
    sent = 5

    def us_admitted() -> bool:
        nonlocal sent
        post(client, [event(f"after{sent}", cohort={"region": "us"})])
        sent += 1
        return "us" in counted(registry, sent)

    wait_until(us_admitted, what="us to be admitted once Redis answers", interval_s=0.1)
    post(client, [event("last", cohort={"region": "ap"})])  # the second slot went to us: ap is refused
    found = counted(registry, sent + 1)
    assert found["eu"] == 2 and found["us"] == 1 and found["__other__"] == sent + 1 - 3
    direct = redis.Redis.from_url(own_redis.url)
    try:
        assert direct.smembers(keys.cohort_values("digits", "region")) == {b"eu", b"us"}
    finally:
        direct.close()
