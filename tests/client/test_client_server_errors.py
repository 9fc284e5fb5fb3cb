"""A sidecar answering 5xx: an outage (503, 429, a gateway's 502/504) is waited out for as long as the client is
open; any other 5xx may be one event's fault, so the batch is split to find it, and that event alone is given up
after ``server_error_attempts`` (counted as ``errored``) while every other event is delivered in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from client_servers import Answer, accept_all, failing_first, scripted, timed_logs
from prometheus_client import CollectorRegistry
from vai_client import AsyncClient, Client, RetryPolicy

FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)
POISON = "a-7"


def fails_on_poison(status: int) -> Any:
    """Answer ``status`` to every batch holding the poison event (a sidecar bug it triggers), accept the rest."""

    def respond(path: str, document: dict[str, Any]) -> Answer:
        if any(event["request_id"] == POISON for event in document["events"]):
            return status, {}, {"error": "internal error; see the sidecar's log", "field": None}
        return accept_all(path, document)

    return respond


def log_two_models(client: Client | AsyncClient) -> None:
    """20 events of models a and b, interleaved; ``a-7`` is the poison."""
    for i in range(20):
        timed_logs(client, 1, model="a", start=i)
        timed_logs(client, 1, model="b", start=i)


def delivered(requests: list[tuple[float, str, dict[str, Any], dict[str, str]]], model: str) -> list[str]:
    """Request ids of ``model`` in the batches the scripted sidecar accepted, in arrival order."""
    return [
        event["request_id"]
        for _, _, document, _ in requests
        if all(e["request_id"] != POISON for e in document["events"])
        for event in document["events"]
        if event["model"] == model
    ]


def check_poison_isolated(requests: list[tuple[float, str, dict[str, Any], dict[str, str]]]) -> None:
    assert delivered(requests, "a") == [f"a-{i}" for i in range(20) if i != 7]
    assert delivered(requests, "b") == [f"b-{i}" for i in range(20)]
    alone = [document for _, _, document, _ in requests if [e["request_id"] for e in document["events"]] == [POISON]]
    assert len(alone) == FAST_RETRY.server_error_attempts


@pytest.mark.parametrize(
    "status",
    [pytest.param(500, id="500-internal"), pytest.param(501, id="501-not-implemented")],
)
def test_an_event_that_makes_the_sidecar_fail_is_given_up_alone(status: int) -> None:
    registry = CollectorRegistry()
    with scripted(fails_on_poison(status)) as server:
        client = Client(server.url, batch_size=10, flush_interval_s=30, registry=registry, retry_policy=FAST_RETRY)
        log_two_models(client)
        assert client.flush(10), client.stats
        stats = client.stats
        assert (stats.sent, stats.errored, stats.rejected, stats.dropped, stats.failed) == (39, 1, 0, 0, 0)
        assert registry.get_sample_value("vai_client_events_total", {"client": "default", "outcome": "errored"}) == 1
        check_poison_isolated(server.requests)
        assert client.close(5)


def test_the_async_client_gives_up_the_poison_event_alone() -> None:
    async def main(url: str) -> AsyncClient:
        async with AsyncClient(url, batch_size=10, flush_interval_s=30, retry_policy=FAST_RETRY) as client:
            log_two_models(client)
            assert await client.flush(10), client.stats
        return client

    with scripted(fails_on_poison(500)) as server:
        stats = asyncio.run(main(server.url)).stats
        assert (stats.sent, stats.errored, stats.rejected) == (39, 1, 0)
        check_poison_isolated(server.requests)


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(503, id="503-unavailable"),
        pytest.param(429, id="429-too-many"),
        pytest.param(502, id="502-bad-gateway"),
        pytest.param(504, id="504-gateway-timeout"),
    ],
)
def test_an_outage_is_waited_out_whole_however_long(status: int) -> None:
    """Far more failed attempts than ``server_error_attempts``: the batch is neither split nor given up."""
    times = FAST_RETRY.server_error_attempts * 3
    with scripted(failing_first(times, status, {"Retry-After": "0"})) as server:
        client = Client(server.url, batch_size=5, flush_interval_s=0.01, retry_policy=FAST_RETRY)
        timed_logs(client, 5)
        assert client.flush(10)
        stats = client.stats
        assert (stats.sent, stats.errored, stats.retried) == (5, 0, 5 * times)
        assert all(len(document["events"]) == 5 for _, _, document, _ in server.requests)
        assert [e["request_id"] for e in server.items()[-5:]] == [f"m-{i}" for i in range(5)]
        client.close()


def test_server_error_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="server_error_attempts"):
        RetryPolicy(server_error_attempts=0)


def test_splitting_on_a_server_error_backs_off_so_a_sidecar_failing_everything_is_not_hammered() -> None:
    """Each split waits the backoff as any failed attempt does (a 500 to every request would otherwise bring about
    2N - 1 requests back to back for a batch of N); a success resets it."""
    from vai_client._delivery import BatchDelivery  # the state machine both clients use
    from vai_client._policy import RefusalLog
    from vai_client._stats import Counters
    from vai_client._transport import Response

    policy = RetryPolicy(backoff_base_s=0.05, backoff_max_s=5.0)
    delivery = BatchDelivery("events", [b"{}"] * 8, Counters(), policy, RefusalLog(), max_request_bytes=2**20)
    failed = Response(500, {}, b'{"error": "internal error"}')
    delays = [delivery.record_response(failed) for _ in range(3)]  # 8 -> 4 + 4 -> 2 + 2 + 4 -> 1 + 1 + 2 + 4
    assert all(delay > 0 for delay in delays), delays
    assert delays[1] >= delays[0] * 0.5, "the backoff grows (jittered) while the failures go on"
