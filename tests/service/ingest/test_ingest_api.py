"""POST /v1/events: what is accepted, what is sampled, and the response shape."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from helpers import StreamEntry, event, serve_app, stream_entries, wait_until
from sampler.contract import SampledEvent
from service.app import create_app
from service.settings import SidecarSettings


def test_single_event_is_accepted(client: TestClient) -> None:
    response = client.post("/v1/events", json=event())
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "rejected": [], "sampled": []}


def test_batch_reports_sampled_events_with_reasons(make_client: Callable[..., TestClient]) -> None:
    client = make_client(sampling={"every_n": 2, "confidence_below": 0.5})
    events = [event(f"r{i}") for i in range(4)] + [event("unsure", logits=[1.0, 1.0, 1.0])]
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 5
    assert body["sampled"] == [
        {"request_id": "r1", "reasons": ["every_n"]},
        {"request_id": "r3", "reasons": ["every_n"]},
        {"request_id": "unsure", "reasons": ["low_confidence"]},
    ]


def test_sampled_events_reach_the_model_stream(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    client = make_client(sampling={"every_n": 1})
    client.post("/v1/events", json=event("a", cohort={"region": "eu"}, label=2, input=[[0.0, 1.0], [2.0, 3.0]]))
    entries = _wait_for_entries(redis_client, "digits", 1)
    message = SampledEvent.decode(entries[0][1])
    assert (message.request_id, message.predicted, message.label) == ("a", 0, 2)
    assert message.cohort == {"region": "eu"}
    assert message.input is not None and message.input.decode().tolist() == [[0.0, 1.0], [2.0, 3.0]]


def _wait_for_entries(client: redis.Redis, model: str, count: int) -> list[StreamEntry]:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = stream_entries(client, keys.sample_stream(model))
        if len(entries) >= count:
            return entries
    raise AssertionError(f"stream of {model} did not reach {count} entries")


def test_ingest_path_answers_other_methods_with_405(client: TestClient) -> None:
    response = client.get("/v1/events")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"].startswith("method")


def test_other_paths_still_reach_the_application(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.post("/v1/events/", json=event()).status_code == 404


def test_ingest_path_is_documented_in_openapi(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/events"]["post"]
    assert set(post["responses"]) >= {"202", "413", "422"}
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"] == [{"$ref": "#/components/schemas/Event"}, {"$ref": "#/components/schemas/Batch"}]
    assert {"Event", "Batch", "IngestResult"} <= set(schema["components"]["schemas"])


def test_a_request_whose_client_leaves_mid_body_is_counted(make_settings: Callable[..., SidecarSettings]) -> None:
    """Nobody is left to answer, but every request received ends in one counter: `disconnected`."""
    registry = CollectorRegistry()
    with serve_app(create_app(make_settings(), registry=registry)) as base:
        host, port = base.removeprefix("http://").split(":")
        head = f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
        with socket.create_connection((host, int(port))) as connection:
            connection.sendall(head.encode() + b"\r\n" + json.dumps(event("gone")).encode()[:10])

        def counted() -> float:
            return registry.get_sample_value("vai_events_rejected_total", {"reason": "disconnected"}) or 0.0

        wait_until(lambda: counted() == 1, what="the disconnect counted")
    assert registry.get_sample_value("vai_events_total", {"model": "digits", "version": "v1"}) is None


def test_a_bug_in_ingest_is_a_500_that_still_ends_in_a_counter(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    registry = CollectorRegistry()
    client = make_client(registry=registry)
    monkeypatch.setattr("service.ingest.handler.IngestHandler.ingest", broken)
    answer = client.post("/v1/events", json=event())
    assert answer.status_code == 500
    assert set(answer.json()) == {"error", "field"}
    assert registry.get_sample_value("vai_events_rejected_total", {"reason": "internal"}) == 1
    assert client.get("/livez").status_code == 200
