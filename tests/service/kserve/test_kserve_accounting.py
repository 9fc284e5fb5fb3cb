"""``POST /v1/cloudevents``: every CloudEvent received ends in exactly one ``vai_kserve_events_total``, under the model
its service maps to even when the CloudEvent itself is malformed, or its sender leaves half-way."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kserve_events import REQUEST, RESPONSE, cloudevent_headers, outcome_count, post_event
from prometheus_client import CollectorRegistry

from helpers import serve_app, wait_until
from service.app import create_app
from service.kserve.logger import UNMAPPED
from service.settings import SidecarSettings

ClientFactory = Callable[..., TestClient]
MODELS: dict[str, Any] = {
    "digits": {"sampling": {"every_n": 1}, "kserve": {"service": "digits-isvc", "scores_are": "logits"}}
}
GOOD = {
    "ce-specversion": "1.0",
    "ce-id": "e1",
    "ce-type": RESPONSE,
    "ce-inferenceservicename": "digits-isvc",
    "content-type": "application/json",
}
PREDICTIONS = {"predictions": [[3.0, 0.5]]}
STRUCTURED = {"content-type": "application/cloudevents+json"}


def _structured(**attributes: Any) -> dict[str, Any]:
    document = {"specversion": "1.0", "id": "e1", "type": RESPONSE, "inferenceservicename": "digits-isvc"}
    return {key: value for key, value in (document | attributes).items() if value is not None}


def _without(name: str) -> dict[str, str]:
    return {key: value for key, value in GOOD.items() if key != name}


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        pytest.param(_without("ce-type"), PREDICTIONS, "ce-type", id="no-ce-type"),
        pytest.param(GOOD | {"ce-type": "org.kubeflow.other"}, PREDICTIONS, "ce-type", id="bad-ce-type"),
        pytest.param(_without("ce-id"), PREDICTIONS, "ce-id", id="no-ce-id"),
        pytest.param(_without("ce-specversion"), PREDICTIONS, "ce-specversion", id="no-ce-specversion"),
        pytest.param(GOOD | {"ce-specversion": "0.3"}, PREDICTIONS, "ce-specversion", id="bad-ce-specversion"),
        pytest.param(GOOD | {"ce-metadata": "{not json"}, PREDICTIONS, "ce-metadata", id="bad-ce-metadata"),
        pytest.param(
            GOOD | {"ce-metadata": json.dumps({"X-Other": ["x" * 1000]}) + "x"},
            PREDICTIONS,
            "ce-metadata",
            id="bad-ce-metadata-of-unread-keys",
        ),
        pytest.param(GOOD | {"ce-namespace": "n" * 64}, PREDICTIONS, "ce-namespace", id="ce-namespace-too-long"),
        pytest.param(STRUCTURED, _structured(), "data", id="structured-without-data"),
        pytest.param(STRUCTURED, _structured(id=7, data=PREDICTIONS), "id", id="structured-numeric-id"),
    ],
)
def test_a_malformed_cloudevent_of_a_mapped_service_counts_against_its_model(
    make_client: ClientFactory, headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    registry = CollectorRegistry()
    answer = post_event(make_client(registry=registry, models=MODELS), headers, body)
    assert answer.status_code in (400, 422), answer.text
    assert answer.json()["field"] == field
    assert outcome_count(registry, "digits", "invalid") == 1
    assert outcome_count(registry, UNMAPPED, "invalid") == 0


def test_a_structured_id_that_is_no_string_is_named_so(make_client: ClientFactory) -> None:
    answer = post_event(make_client(models=MODELS), STRUCTURED, _structured(id=7, data=PREDICTIONS))
    assert answer.status_code == 400, answer.text
    assert "must be a string" in answer.json()["error"]


def test_a_malformed_cloudevent_of_no_mapped_service_stays_unmapped(make_client: ClientFactory) -> None:
    registry = CollectorRegistry()
    headers = _without("ce-type") | {"ce-inferenceservicename": "nobody"}
    assert post_event(make_client(registry=registry, models=MODELS), headers, PREDICTIONS).status_code == 400
    assert outcome_count(registry, UNMAPPED, "invalid") == 1


def _send_half_and_leave(base: str, headers: dict[str, str]) -> None:
    """A request whose ``Content-Length`` promises 1,000 bytes, 10 of them sent before the socket closes."""
    host, port = base.removeprefix("http://").split(":")
    lines = ["POST /v1/cloudevents HTTP/1.1", f"Host: {host}", "Content-Length: 1000"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + json.dumps(PREDICTIONS).encode()[:10])


@pytest.mark.parametrize(("kind", "service"), [(REQUEST, "digits-isvc"), (RESPONSE, "nobody")])
def test_a_cloudevent_whose_sender_leaves_mid_body_is_counted(
    make_settings: Callable[..., SidecarSettings], kind: str, service: str
) -> None:
    registry = CollectorRegistry()
    model = "digits" if service == "digits-isvc" else UNMAPPED
    with serve_app(create_app(make_settings(models=MODELS), registry=registry)) as base:
        _send_half_and_leave(base, GOOD | {"ce-type": kind, "ce-inferenceservicename": service})
        wait_until(lambda: outcome_count(registry, model, "disconnected") == 1, what="the disconnect counted")
    samples = [
        sample
        for metric in registry.collect()
        if metric.name == "vai_kserve_events"
        for sample in metric.samples
        if sample.name.endswith("_total")
    ]
    assert [(sample.labels, sample.value) for sample in samples] == [({"model": model, "outcome": "disconnected"}, 1.0)]


def test_a_bug_while_reading_a_cloudevent_still_ends_in_one_outcome(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    registry = CollectorRegistry()
    client = make_client(registry=registry, models=MODELS)
    monkeypatch.setattr("service.kserve.logger.read_event", broken)
    answer = post_event(client, GOOD, PREDICTIONS)
    assert answer.status_code == 500
    assert outcome_count(registry, "digits", "internal") == 1


def _outcomes(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every ``vai_kserve_events_total`` series with a count: (model, outcome) -> count."""
    return {
        (sample.labels["model"], sample.labels["outcome"]): sample.value
        for metric in registry.collect()
        if metric.name == "vai_kserve_events"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }


def test_every_cloudevent_ends_in_one_outcome_when_a_model_s_pending_requests_are_capped(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = CollectorRegistry()
    client = make_client(registry=registry, models=MODELS, kserve_max_pending=2)
    metadata = json.dumps({"X-Region": ["eu"], "X-Other": ["x" * 10_000]})

    def send(ce_id: str, kind: str, **attributes: str) -> str:
        headers = cloudevent_headers(ce_id, kind, "digits-isvc", metadata=metadata, **attributes)
        answer = post_event(client, headers, {"instances": [[1.0]]} if kind == REQUEST else PREDICTIONS)
        assert answer.status_code == 200, answer.text
        outcome: str = answer.json()["outcome"]
        return outcome

    sent = [
        send("a", REQUEST),
        send("b", REQUEST),
        send("c", REQUEST),  # a third waiting: refused
        send("c", RESPONSE),  # ... and its response monitored alone
        send("c", REQUEST),  # ... after which its request is late
        send("a", REQUEST),
        send("a", RESPONSE),
        send("d", REQUEST),  # a's place
        send("e", REQUEST, component="transformer"),
    ]
    assert sent == [
        "request_stored",
        "request_stored",
        "pending_full",
        "response_only",
        "request_dropped",
        "duplicate",
        "joined",
        "request_stored",
        "other_component",
    ]
    counted = _outcomes(registry)
    assert sum(counted.values()) == len(sent)
    assert {outcome: counted[("digits", outcome)] for outcome in set(sent)} == {o: sent.count(o) for o in set(sent)}
