"""With auth off, only requests addressed to a loopback name: a web page reaching the sidecar by DNS rebinding sends
its own name as ``Host``. An audit changed a sampling policy and read ``/status`` with ``Host:
rebind.attacker.example``. With auth on, tokens keep such pages out and any ``Host`` is served."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from helpers import event, serve_app
from service.app import create_app
from service.http.hosts import loopback_host
from service.settings import SidecarSettings

ClientFactory = Callable[..., TestClient]
TOKENS = {"ingest_tokens": ("i",), "read_tokens": ("r",), "admin_tokens": ("a",)}
MODELS: dict[str, Any] = {"iris": {"sampling": {"every_n": 1}, "kserve": {"scores_are": "probabilities"}}}
ROUTES = [
    "GET /status",
    "GET /v1/models/victim/sampling",
    "PUT /v1/models/victim/sampling",
    "DELETE /v1/models/victim/sampling",
    "POST /v1/events",
    "POST /v1/cloudevents",
    "GET /metrics",
    "GET /livez",
    "HEAD /livez",
    "GET /ui",
    "GET /no/such/path",
]
OK = {"GET /no/such/path": 404, "POST /v1/events": 202}
FOREIGN = [
    pytest.param("rebind.attacker.example", id="a-name"),
    pytest.param("rebind.attacker.example:8000", id="a-name-and-port"),
    pytest.param("localhost.attacker.example", id="localhost-as-a-subdomain"),
    pytest.param("127.0.0.1.nip.io", id="a-loopback-address-as-a-subdomain"),
    pytest.param("localhost.", id="localhost-fully-qualified"),
    pytest.param("10.1.2.3:8000", id="another-address"),
    pytest.param("[::1].attacker.example", id="brackets-then-a-name"),
    pytest.param("localhost:80x", id="a-port-that-is-no-number"),
    pytest.param("", id="empty"),
]
LOOPBACK = [
    pytest.param("localhost", id="localhost"),
    pytest.param("LocalHost:8000", id="localhost-any-case-and-port"),
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("127.0.0.1:8000", id="ipv4-and-port"),
    pytest.param("127.9.8.7:1", id="anywhere-in-127/8"),
    pytest.param("[::1]", id="ipv6"),
    pytest.param("[::1]:8000", id="ipv6-and-port"),
]


def _call(client: TestClient, route: str, host: str, token: str | None = None) -> httpx2.Response:
    """One request to ``route`` ("METHOD /path") with ``Host: host`` and a body that succeeds where it needs one."""
    method, path = route.split(" ")
    headers = {"host": host} | ({"authorization": f"Bearer {token}"} if token else {})
    body: dict[str, Any] = {}
    if route == "POST /v1/events":
        body = {"json": event(f"r-{uuid.uuid4()}")}
    elif route == "POST /v1/cloudevents":
        headers |= {
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-type": "org.kubeflow.serving.inference.response",
            "ce-inferenceservicename": "iris",
            "content-type": "application/json",
        }
        body = {"content": json.dumps({"predictions": [[0.8, 0.15, 0.05]]}).encode()}
    elif method == "PUT":
        body = {"json": {"every_n": 7}}
    return client.request(method, path, headers=headers, follow_redirects=False, **body)


@pytest.mark.parametrize("host", FOREIGN)
def test_with_auth_off_a_foreign_host_is_refused_everywhere(make_client: ClientFactory, host: str) -> None:
    client = make_client(models=MODELS)
    for route in ROUTES:
        answer = _call(client, route, host)
        assert answer.status_code == 403, (route, answer.text)
        if not route.startswith("HEAD"):
            assert answer.json()["field"] == "host", route
            assert answer.json()["error"].startswith("host: with auth off"), route
    policy = _call(client, "GET /v1/models/victim/sampling", "localhost").json()
    assert policy["every_n"] == 100, "the refused PUT changed the policy"


@pytest.mark.parametrize("host", LOOPBACK)
def test_with_auth_off_a_loopback_host_is_served(make_client: ClientFactory, host: str) -> None:
    client = make_client(models=MODELS)
    for route in ROUTES:
        answer = _call(client, route, host)
        assert answer.status_code == OK.get(route, 200), (route, answer.text)


@pytest.mark.parametrize("host", [FOREIGN[0], LOOPBACK[0]])
def test_with_auth_on_any_host_is_served_with_its_token(make_client: ClientFactory, host: str) -> None:
    """Behind a Service or an ingress the sidecar is reached by any name; its tokens keep pages out."""
    client = make_client(models=MODELS, **TOKENS)
    for route in ROUTES:
        answer = _call(client, route, host, token="a")
        assert answer.status_code == OK.get(route, 200), (route, answer.text)
    assert _call(client, "GET /status", host).status_code == 401


def test_refused_ingest_and_cloudevents_are_counted_as_their_routes_count_refusals(
    make_client: ClientFactory,
) -> None:
    """A fleet whose events never arrive must show on the dashboard, whatever refused them."""
    registry = CollectorRegistry()
    client = make_client(registry, models=MODELS)
    for route in ("POST /v1/events", "POST /v1/cloudevents", "GET /status"):
        assert _call(client, route, "rebind.attacker.example").status_code == 403

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("vai_events_rejected_total", {"reason": "forbidden"}) == 1
    assert sample("vai_kserve_events_total", {"model": "iris", "outcome": "forbidden"}) == 1
    assert _call(client, "GET /status", "localhost").json()["accepted"] == {}


def _raw(base: str, request: bytes) -> tuple[int, bytes]:
    """Status and body of one request sent byte for byte to a running server."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_a_running_server_checks_the_host_as_sent(make_settings: Callable[..., SidecarSettings]) -> None:
    """Through uvicorn, as ``vai-sidecar serve`` runs: the audit's request is refused, one to the bound address or to
    localhost is served, and so is an HTTP/1.0 request without ``Host`` (no browser sends one so)."""
    with serve_app(create_app(make_settings())) as base:
        port = base.rsplit(":", 1)[1]

        def status(host: bytes | None, version: bytes = b"HTTP/1.1") -> tuple[int, bytes]:
            header = b"" if host is None else b"Host: %s\r\n" % host
            return _raw(base, b"GET /status %s\r\n%sConnection: close\r\n\r\n" % (version, header))

        refused, body = status(b"rebind.attacker.example:%s" % port.encode())
        assert (refused, json.loads(body)["field"]) == (403, "host")
        assert status(b"127.0.0.1:%s" % port.encode())[0] == 200
        assert status(b"localhost:%s" % port.encode())[0] == 200
        assert status(None, b"HTTP/1.0")[0] == 200
        two = b"GET /status HTTP/1.1\r\nHost: localhost\r\nHost: rebind.attacker.example\r\nConnection: close\r\n\r\n"
        assert _raw(base, two)[0] in (400, 403), "a second Host slipped through"


@pytest.mark.parametrize(
    ("host", "server", "expected"),
    [
        pytest.param("10.1.2.3:8000", "10.1.2.3", True, id="the-address-the-connection-came-in-on"),
        pytest.param("[::1]:8000", "::1", True, id="ipv6-server-address"),
        pytest.param("rebind.attacker.example", "10.1.2.3", False, id="a-name-is-no-server-address"),
        pytest.param("::1", None, False, id="ipv6-without-brackets"),
        pytest.param("[::1", None, False, id="unclosed-bracket"),
        pytest.param("127.0.0.1:", None, False, id="colon-without-port"),
        pytest.param("127.0.0.1:８０", None, False, id="non-ascii-digits"),
        pytest.param("127.0.0.1:80:80", None, False, id="two-ports"),
    ],
)
def test_loopback_host(host: str, server: str | None, expected: bool) -> None:
    assert loopback_host(host, server=server) is expected


@pytest.mark.parametrize(
    ("origin", "served"),
    [
        pytest.param("https://attacker.example", False, id="another-site"),
        pytest.param("http://127.0.0.1.attacker.example", False, id="a-loopback-address-as-a-subdomain"),
        pytest.param("null", False, id="a-sandboxed-frame-or-a-file"),
        pytest.param("http://127.0.0.1:8000", True, id="the-viewer-by-address"),
        pytest.param("http://localhost:8000", True, id="the-viewer-by-name"),
        pytest.param("http://[::1]:8000", True, id="the-viewer-by-ipv6"),
    ],
)
def test_with_auth_off_a_page_of_another_origin_is_refused(
    make_client: ClientFactory, origin: str, served: bool
) -> None:
    """A page of any site may send a "simple" cross-origin POST (text/plain, no preflight) to 127.0.0.1: its Host
    is loopback, its Origin is not. An audit injected events and labels so."""
    client = make_client(models=MODELS)
    headers = {"host": "127.0.0.1:8000", "origin": origin, "content-type": "text/plain"}
    answer = client.post("/v1/events", content=json.dumps(event(f"r-{uuid.uuid4()}")), headers=headers)
    assert answer.status_code == (202 if served else 403), answer.text
    labels = client.post("/v1/labels", content=json.dumps({"labels": []}), headers=headers)
    assert (labels.status_code == 403) is not served, labels.text
