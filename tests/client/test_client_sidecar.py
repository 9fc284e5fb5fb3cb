"""The client against a real ``vai-sidecar serve`` on loopback: up, stopped then back, labels, tensors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch
from client_servers import INGEST_TOKEN, READ_TOKEN, report, timed_logs
from vai_client import Client

from common.embedded_redis import free_port
from helpers import stream_entries, wait_until

pytestmark = pytest.mark.slow


def stream_ids(redis_client: redis.Redis, model: str) -> list[str]:
    """Request ids of the model's sampled events (every event is sampled here), in the order the sidecar took them."""
    return [str(event["request_id"]) for event in stream_events(redis_client, model)]


def stream_events(redis_client: redis.Redis, model: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"m"]) for _, fields in stream_entries(redis_client, f"vai:stream:{model}")]


def accepted(url: str, model: str) -> int:
    metrics = httpx.get(f"{url}/metrics").text
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("vai_events_total{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_events_arrive_in_order_per_model(sidecar: str, redis_client: redis.Redis) -> None:
    client = Client(sidecar, token=INGEST_TOKEN, batch_size=50, flush_interval_s=0.05)
    durations: list[float] = []
    for i in range(150):
        for model in ("alpha", "beta", "gamma"):
            durations += timed_logs(client, 1, model=model, start=i, embedding=np.arange(8, dtype=np.float32))
    assert client.flush(30)
    report("sidecar up", durations)
    assert client.stats.sent == 450 and client.stats.rejected == 0 and client.stats.dropped == 0
    for model in ("alpha", "beta", "gamma"):
        assert accepted(sidecar, model) == 150
        expected = [f"{model}-{i}" for i in range(150)]

        def arrived(model: str = model, expected: list[str] = expected) -> bool:
            return stream_ids(redis_client, model) == expected

        assert wait_until(arrived, what=f"{model} stream")
    status = httpx.get(f"{sidecar}/status", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert status.status_code == 200
    assert client.close(5)


@pytest.mark.parametrize(
    "make_input",
    [
        pytest.param(lambda: np.random.default_rng(0).random((1, 8, 8), dtype=np.float32), id="numpy-input"),
        pytest.param(lambda: torch.rand(1, 8, 8), id="torch-input"),
        pytest.param(lambda: torch.rand(1, 8, 8).tolist(), id="nested-list-input"),
    ],
)
def test_tensors_of_any_kind_are_accepted(
    sidecar: str, redis_client: redis.Redis, make_input: Callable[[], object]
) -> None:
    client = Client(sidecar, token=INGEST_TOKEN)
    logits = torch.tensor([[3.0, 1.0, 0.2]], requires_grad=True) * 1.0  # a graph tensor, as a model returns it
    client.log(
        model="digits",
        request_id="r0",
        logits=logits,
        embedding=torch.ones(16),
        input=make_input(),
        cohort={"region": "eu"},
        model_version="v2",
    )
    client.log(model="digits", request_id="r1", probabilities=np.array([0.7, 0.2, 0.1]), input=make_input())
    assert client.flush(10)
    assert client.stats.sent == 2 and client.stats.rejected == 0
    sampled = wait_until(lambda: len(found := stream_events(redis_client, "digits")) == 2 and found, what="2 samples")
    assert sampled[0]["input"]["shape"] == [1, 8, 8]
    assert (sampled[0]["model_version"], sampled[0]["cohort"], sampled[0]["predicted"]) == ("v2", {"region": "eu"}, 0)
    assert all(event["timestamp"] <= event["received_at"] for event in sampled)  # stamped at log(), not on arrival
    client.close()


def test_invalid_events_are_counted_as_rejected(sidecar: str) -> None:
    client = Client(sidecar, token=INGEST_TOKEN)
    client.log(model="m", request_id="ok", logits=[1.0, 2.0])
    client.log(model="m", request_id="nan", logits=[float("nan"), 2.0])
    client.log(model="m", request_id="one-class", logits=[1.0])
    assert client.flush(10)
    assert (client.stats.sent, client.stats.rejected) == (1, 2)
    bad_token = Client(sidecar, token="wrong")
    bad_token.log(model="m", request_id="x", logits=[1.0, 2.0])
    assert bad_token.flush(10)
    assert (bad_token.stats.sent, bad_token.stats.rejected, bad_token.stats.retried) == (0, 1, 0)
    client.close()
    bad_token.close()


def test_labels_join_their_events(sidecar: str) -> None:
    """The sidecar keeps no prediction records of a model not declared with ``delayed_labels`` until its first
    label: the labels of events logged before that match nothing, and are counted as unmatched (lost), not sent;
    those of events logged after it join."""
    client = Client(sidecar, token=INGEST_TOKEN)

    def log_then_label(start: int) -> None:
        for i in range(start, start + 5):
            client.log(model="digits", request_id=f"r{i}", logits=[3.0, 1.0, 0.5])
        for i in range(start, start + 5):
            client.label("digits", f"r{i}", i % 3)
        assert client.flush(10)

    log_then_label(0)
    assert (client.stats.sent, client.stats.unmatched) == (5, 5)
    log_then_label(5)
    assert (client.stats.sent, client.stats.unmatched, client.stats.rejected) == (15, 5, 0)

    def labels_counted(matched: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in httpx.get(f"{sidecar}/metrics").text.splitlines()
            if line.startswith("vai_labels_total{") and 'model="digits"' in line and f'matched="{matched}"' in line
        )

    assert wait_until(lambda: (labels_counted("true"), labels_counted("false")) == (5.0, 5.0), what="labels counted")
    client.close()


def test_stopped_sidecar_then_back(start_sidecar: Callable[[int], str], redis_client: redis.Redis) -> None:
    """Connection refused: log() stays non-blocking, the full buffer drops its oldest (counted), and
    everything the buffer held arrives, in order, once the sidecar is up."""
    port = free_port()
    client = Client(
        f"http://127.0.0.1:{port}", token=INGEST_TOKEN, max_buffer=200, batch_size=50, flush_interval_s=0.02
    )
    report("sidecar down (connection refused)", timed_logs(client, 300, model="down"))
    wait_until(lambda: client.stats.retried > 0, what="a refused attempt")
    stats = client.stats
    # up to one batch is in flight outside the buffer; what did not fit was dropped, oldest first
    assert stats.dropped + stats.buffered + stats.sent + stats.rejected <= 300
    assert 300 - 50 <= stats.dropped + stats.buffered <= 300 and stats.dropped >= 50
    url = start_sidecar(port)
    assert client.flush(30)
    final = client.stats
    assert final.sent + final.dropped == 300 and final.rejected == 0 and final.failed == 0
    ids = wait_until(lambda: len(found := stream_ids(redis_client, "down")) == final.sent and found, what="stream")
    numbers = [int(i.split("-")[1]) for i in ids]
    assert numbers == sorted(numbers) and numbers[-150:] == list(range(150, 300))
    assert accepted(url, "down") == final.sent
    client.close()


@pytest.mark.parametrize(
    ("max_request_bytes", "cut_off"),
    [
        pytest.param(8 * 2**20, False, id="cut-to-the-sidecar-limit"),
        pytest.param(2**30, True, id="over-the-limit-split-when-refused"),
    ],
)
def test_image_batches_larger_than_the_body_limit_arrive(sidecar: str, max_request_bytes: int, cut_off: bool) -> None:
    """The README's own example: batches of 100 events with a 3×224×224 float32 input, 80 MB as one body against
    the sidecar's 8 MiB ``VAI_MAX_BODY_BYTES``. Cut to ``max_request_bytes`` (by default that limit), every body
    is taken at once; above it, the sidecar refuses the 80 MB body unread (a reset while it is sent) and the
    smaller ones with 413, and the client splits until they fit: all arrive, nothing is stuck."""
    client = Client(
        sidecar, token=INGEST_TOKEN, max_request_bytes=max_request_bytes, flush_interval_s=3600, timeout_s=30
    )  # sent once the batch of 100 is full; a slow answer to an 8 MiB body is not retried (retries are checked)
    image = np.random.default_rng(0).random((3, 224, 224), dtype=np.float32)
    for i in range(100):
        client.log(model="images", request_id=f"images-{i}", logits=[2.0, 1.0], input=image)
    assert client.flush(60), client.stats
    stats = client.stats
    assert (stats.sent, stats.rejected, stats.failed, stats.dropped) == (100, 0, 0, 0)
    assert (stats.retried > 0) is cut_off
    assert accepted(sidecar, "images") == 100
    assert client.close(5)
