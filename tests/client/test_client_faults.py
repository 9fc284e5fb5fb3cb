"""The client against sidecars that misbehave: hung, 503/429 with Retry-After, 413, 4xx, 5xx; draining; counters."""

from __future__ import annotations

import asyncio
import base64
import gc
import itertools
import logging
from typing import Any

import numpy as np
import pytest
from client_servers import Answer, HungServer, accept_all, failing_first, report, scripted, timed_logs
from prometheus_client import CollectorRegistry
from vai_client import AsyncClient, Client, RetryPolicy

from common.embedded_redis import free_port
from helpers import wait_until

FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)


def test_hung_sidecar_never_blocks_the_caller() -> None:
    hung = HungServer()
    try:
        client = Client(
            hung.url, timeout_s=0.2, batch_size=20, max_buffer=100, flush_interval_s=0.01, retry_policy=FAST_RETRY
        )
        durations = timed_logs(client, 300, model="hung")
        wait_until(lambda: client.stats.retried >= 40, what="two timed-out attempts")
        durations += timed_logs(client, 300, model="hung", start=300)
        report("sidecar hung (accepts, never answers)", durations)
        stats = client.stats
        assert stats.sent == 0 and stats.dropped >= 600 - 100 - 20 and stats.retried >= 40
        assert hung.accepted  # it did connect: the attempts timed out, they were not refused
        assert not client.close(0.3)
        assert client.stats.failed + client.stats.dropped == 600
    finally:
        hung.close()


@pytest.mark.parametrize(
    "status",
    [pytest.param(503, id="503-unavailable"), pytest.param(429, id="429-too-many")],
)
@pytest.mark.parametrize(
    "retry_after",
    [pytest.param("1", id="seconds"), pytest.param(None, id="no-header")],
)
def test_retry_after_is_honoured(status: int, retry_after: str | None) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    with scripted(failing_first(1, status, headers)) as server:
        client = Client(server.url, flush_interval_s=0.01, retry_policy=FAST_RETRY)
        report(f"{status} then 202", timed_logs(client, 10))
        assert client.flush(10)
        assert (client.stats.sent, client.stats.retried, client.stats.rejected) == (10, 10, 0)
        (first, *_), (second, *_) = server.requests[:2]
        if retry_after:
            assert second - first >= 0.95  # the sidecar asked for a second
        else:
            assert second - first < 0.9  # our own backoff, far shorter
        assert [e["request_id"] for e in server.items()[10:]] == [f"m-{i}" for i in range(10)]
        client.close()


def test_413_splits_the_batch_in_order() -> None:
    def small_batches_only(path: str, document: dict[str, Any]) -> Answer:
        if len(document["events"]) > 7:
            return 413, {}, {"error": "body too large", "field": "body"}
        return accept_all(path, document)

    with scripted(small_batches_only) as server:
        client = Client(server.url, batch_size=40, flush_interval_s=0.01)
        report("413 splitting", timed_logs(client, 40))
        assert client.flush(10)
        assert (client.stats.sent, client.stats.rejected, client.stats.retried) == (40, 0, 0)
        delivered = [
            e["request_id"] for _, _, doc, _ in server.requests if len(doc["events"]) <= 7 for e in doc["events"]
        ]
        assert delivered == [f"m-{i}" for i in range(40)]
        client.close()


def test_one_event_too_large_is_rejected_alone() -> None:
    def no_big_events(path: str, document: dict[str, Any]) -> Answer:
        if any(e["logits"]["shape"] != [2] for e in document["events"]):
            return 413, {}, {"error": "body too large", "field": "body"}
        return accept_all(path, document)

    with scripted(no_big_events) as server:
        client = Client(server.url, flush_interval_s=0.01)
        client.log(model="m", request_id="small-1", logits=[1.0, 0.0])
        client.log(model="m", request_id="huge", logits=list(range(100)))
        client.log(model="m", request_id="small-2", logits=[1.0, 0.0])
        assert client.flush(10)
        assert (client.stats.sent, client.stats.rejected) == (2, 1)
        client.close()


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        pytest.param(400, False, id="400-rejected"),
        pytest.param(401, False, id="401-rejected"),
        pytest.param(408, True, id="408-retried"),
        pytest.param(500, True, id="500-retried"),
        pytest.param(502, True, id="502-retried"),
    ],
)
def test_4xx_rejects_and_5xx_retries(status: int, retried: bool) -> None:
    with scripted(failing_first(1, status)) as server:
        client = Client(server.url, flush_interval_s=0.01, retry_policy=FAST_RETRY)
        timed_logs(client, 5)
        assert client.flush(10)
        expected = (5, 0, 5) if retried else (0, 5, 0)
        assert (client.stats.sent, client.stats.rejected, client.stats.retried) == expected
        client.close()


def test_rejected_entries_of_a_202_are_counted() -> None:
    def reject_odd(path: str, document: dict[str, Any]) -> Answer:
        events = document["events"]
        rejected = [
            {"index": i, "request_id": e["request_id"], "field": "logits", "error": "bad"}
            for i, e in enumerate(events)
            if i % 2
        ]
        return 202, {}, {"accepted": len(events) - len(rejected), "rejected": rejected, "sampled": []}

    with scripted(reject_odd) as server:
        client = Client(server.url, batch_size=10, flush_interval_s=0.01)
        timed_logs(client, 10)
        assert client.flush(10)
        assert (client.stats.sent, client.stats.rejected) == (5, 5)
        client.close()


def test_close_drains_everything() -> None:
    with scripted() as server:
        client = Client(server.url, batch_size=64, flush_interval_s=60)  # only close() makes it send
        report("close() drain", timed_logs(client, 1000))
        assert client.close(10)
        assert client.stats.sent == 1000 and client.stats.buffered == 0
        assert [e["request_id"] for e in server.items()] == [f"m-{i}" for i in range(1000)]
        client.log(model="m", request_id="late", logits=[1.0, 0.0])  # after close: counted, never raises
        assert client.stats.dropped == 1


def test_close_gives_up_on_time_when_the_sidecar_is_down() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}", flush_interval_s=0.01)
    timed_logs(client, 50)
    assert not client.close(0.3)
    assert client.stats.failed == 50 and client.stats.sent == 0


def test_counters_mirror_to_prometheus() -> None:
    registry = CollectorRegistry()
    with scripted(failing_first(1, 503)) as server:
        client = Client(server.url, max_buffer=5, flush_interval_s=30, registry=registry, retry_policy=FAST_RETRY)
        timed_logs(client, 8)  # 3 dropped before the sender ever runs
        assert client.close(10)
        stats = client.stats
        for outcome in ("sent", "dropped", "rejected", "retried", "failed", "errored"):
            value = registry.get_sample_value("vai_client_events_total", {"client": "default", "outcome": outcome})
            assert value == getattr(stats, outcome), outcome
        assert (stats.sent, stats.dropped, stats.retried) == (5, 3, 5)


def test_clients_on_one_registry_export_under_their_names() -> None:
    """Several clients, one registry: each client's series carries its ``name`` as the ``client`` label; a name
    already taken on the registry is refused with the fix in the message, and free again once its client is gone."""
    registry = CollectorRegistry()

    def sent(name: str) -> float | None:
        return registry.get_sample_value("vai_client_events_total", {"client": name, "outcome": "sent"})

    with scripted() as server:
        default = Client(server.url, registry=registry, flush_interval_s=0.01)
        shadow = Client(server.url, registry=registry, name="shadow", flush_interval_s=0.01)
        with pytest.raises(ValueError, match="a client named 'shadow' already exports to this registry"):
            Client(server.url, registry=registry, name="shadow")
        timed_logs(default, 3)
        timed_logs(shadow, 5)
        assert default.close(10) and shadow.close(10)
        assert (sent("default"), sent("shadow")) == (3.0, 5.0)
        del shadow
        gc.collect()
        again = Client(server.url, registry=registry, name="shadow", flush_interval_s=0.01)
        timed_logs(again, 2)
        assert again.close(10)
        assert (sent("default"), sent("shadow")) == (3.0, 7.0)  # the same series goes on


def test_unreadable_values_never_raise_into_the_caller() -> None:
    with scripted() as server:
        client = Client(server.url, flush_interval_s=0.01)
        client.log(model="m", request_id="a", logits=object())
        client.log(model="m", request_id="b", logits=[1.0, 0.0], cohort={"k": object()})  # type: ignore[dict-item]  # refused, not str()-ed
        client.log(model="m", request_id="c", logits=[1.0, 0.0], label="not a number")  # type: ignore[arg-type]  # refused, not raised
        client.log(model="m", request_id="ok", logits=[1.0, 0.0])
        assert client.flush(10)
        assert (client.stats.sent, client.stats.rejected) == (1, 3)
        assert [e["request_id"] for e in server.items()] == ["ok"]
        client.close()


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        pytest.param(np.array([1.5, -2.0, 3.25], dtype=np.float32), "float32", id="numpy-float32"),
        pytest.param(np.array([[1.5, -2.0, 3.25]], dtype=np.float16), "float16", id="numpy-float16-2d"),
        pytest.param([1.5, -2.0, 3.25], "float64", id="list"),
    ],
)
def test_compact_tensor_encoding(value: Any, dtype: str) -> None:
    with scripted() as server:
        client = Client(server.url, flush_interval_s=0.01, tensor_encoding="compact")
        client.log(model="m", request_id="r", logits=value, embedding=value, input=np.ones((2, 3), dtype=np.float32))
        assert client.flush(10)
        (event,) = server.items()
        for field in ("logits", "embedding"):
            tensor = event[field]
            assert (tensor["dtype"], tensor["shape"]) == (dtype, [3])
            decoded = np.frombuffer(base64.b64decode(tensor["data"]), dtype=np.dtype(dtype).newbyteorder("<"))
            assert decoded.tolist() == [1.5, -2.0, 3.25]
        assert (event["input"]["shape"], event["input"]["dtype"]) == ([2, 3], "float32")
        client.close()


@pytest.mark.parametrize("client_class", [pytest.param(Client, id="thread"), pytest.param(AsyncClient, id="async")])
def test_tensors_are_sent_compact_by_default(client_class: type[Client | AsyncClient]) -> None:
    async def run(client: AsyncClient) -> bool:
        await client.start()
        client.log(model="m", request_id="r", logits=[1.5, -2.0], embedding=np.ones(4, dtype=np.float32))
        return await client.close(10)

    with scripted() as server:
        client = client_class(server.url, flush_interval_s=0.01)
        if isinstance(client, AsyncClient):
            assert asyncio.run(run(client))
        else:
            client.log(model="m", request_id="r", logits=[1.5, -2.0], embedding=np.ones(4, dtype=np.float32))
            assert client.close(10)
        (event,) = server.items()
        assert {k: v for k, v in event["logits"].items() if k != "data"} == {"dtype": "float64", "shape": [2]}
        assert {k: v for k, v in event["embedding"].items() if k != "data"} == {"dtype": "float32", "shape": [4]}


def test_json_encoding_sends_number_lists_and_the_token() -> None:
    with scripted() as server:
        client = Client(server.url + "/", token="secret", flush_interval_s=0.01, tensor_encoding="json")
        client.log(model="m", request_id="r", logits=np.array([[1.0, 2.0]]), timestamp=123.5, label=1)
        assert client.flush(10)
        (event,) = server.items()
        assert event == {"model": "m", "request_id": "r", "timestamp": 123.5, "logits": [1.0, 2.0], "label": 1}
        assert server.requests[0][3]["Authorization"] == "Bearer secret"
        client.close()


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        pytest.param("2", 2.0, 2.0, id="seconds"),
        pytest.param("3600", 60.0, 60.0, id="capped"),
        pytest.param("0", 0.025, 0.05, id="zero-waits-the-backoff"),
        pytest.param("-5", 0.025, 0.05, id="negative-waits-the-backoff"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 0.025, 0.05, id="http-date-past-waits-the-backoff"),
        pytest.param("soon", 0.025, 0.05, id="unreadable-falls-back-to-backoff"),
    ],
)
def test_retry_after_header_forms(header: str, low: float, high: float) -> None:
    assert low <= RetryPolicy(backoff_base_s=0.05).retry_after_s(header, 1) <= high


@pytest.mark.parametrize(
    "retry_after",
    [pytest.param("0", id="zero"), pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", id="http-date-past")],
)
def test_retry_after_never_shortens_the_backoff(retry_after: str) -> None:
    """A sidecar answering 503 with ``Retry-After: 0`` is not hammered: each retry still waits out the backoff."""
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=0.4)
    with scripted(failing_first(4, 503, {"Retry-After": retry_after})) as server:
        client = Client(server.url, flush_interval_s=0.01, retry_policy=policy)
        timed_logs(client, 3)
        assert client.flush(10)
        assert (client.stats.sent, client.stats.retried) == (3, 12)
        times = [received for received, *_ in server.requests]
        assert len(times) == 5
        for failures, (before, after) in enumerate(itertools.pairwise(times), start=1):
            floor = 0.5 * min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (failures - 1))  # jitter's low end
            assert after - before >= floor, failures
        client.close()


def test_a_refusal_per_event_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Events each too large (413 alone): one warning, not one per event; each is still counted."""

    def nothing_fits(path: str, document: dict[str, Any]) -> Answer:
        return 413, {}, {"error": "body too large", "field": "body"}

    with scripted(nothing_fits) as server, caplog.at_level(logging.WARNING, logger="vai_client"):
        client = Client(server.url, batch_size=1, flush_interval_s=0.01)
        timed_logs(client, 40)
        assert client.flush(20)
        assert (client.stats.sent, client.stats.rejected) == (0, 40)
        client.close()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "413" in refusals[0].getMessage()


def test_unmatched_labels_are_counted_and_warned_once_per_model(caplog: pytest.LogCaptureFixture) -> None:
    """``POST /v1/labels`` answers 200 with ``unmatched`` entries for labels that found no prediction record (as
    the sidecar does for a model not declared with ``delayed_labels``): lost, so counted as ``unmatched``, not sent,
    and one warning per model that says the fix."""

    def no_records_of_b_or_c(path: str, document: dict[str, Any]) -> Answer:
        if path != "/v1/labels":
            return accept_all(path, document)
        labels = document["labels"]
        unmatched = [
            {"index": i, "request_id": label["request_id"], "outcome": "unmatched", "error": None, "model": None}
            for i, label in enumerate(labels)
            if label["model"] != "a"
        ]
        return 200, {}, {"matched": len(labels) - len(unmatched), "unmatched": unmatched, "rejected": []}

    registry = CollectorRegistry()
    with scripted(no_records_of_b_or_c) as server, caplog.at_level(logging.WARNING, logger="vai_client"):
        client = Client(server.url, batch_size=10, flush_interval_s=0.01, registry=registry)
        timed_logs(client, 2)
        for i in range(30):
            client.label("abc"[i % 3], f"r{i}", 1)
        assert client.flush(10)
        assert client.close(5)
    stats = client.stats
    assert (stats.sent, stats.unmatched, stats.rejected) == (2 + 10, 20, 0)
    assert registry.get_sample_value("vai_client_events_total", {"client": "default", "outcome": "unmatched"}) == 20
    warnings = sorted(r.getMessage() for r in caplog.records if "matched no prediction" in r.getMessage())
    assert len(warnings) == 2 and "'b'" in warnings[0] and "'c'" in warnings[1], warnings
    assert all("delayed_labels = true" in message for message in warnings)


def test_items_waiting_are_exported_as_a_gauge() -> None:
    """``vai_client_buffered{client}`` and ``vai_client_buffered_bytes{client}``: what ``stats`` says is waiting,
    read when the registry is collected."""
    registry = CollectorRegistry()

    def waiting(metric: str) -> float | None:
        return registry.get_sample_value(metric, {"client": "idle"})

    client = Client(f"http://127.0.0.1:{free_port()}", registry=registry, name="idle", flush_interval_s=3600)
    timed_logs(client, 3, logits=np.ones(4, dtype=np.float32))
    assert (waiting("vai_client_buffered"), waiting("vai_client_buffered_bytes")) == (3.0, 48.0)
    assert not client.close(0)
    assert (waiting("vai_client_buffered"), waiting("vai_client_buffered_bytes")) == (0.0, 0.0)
