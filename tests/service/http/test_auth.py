"""Bearer tokens per scope, routes that stay open, and the CLI's refusal to expose an open sidecar."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from helpers import event
from service import main as cli
from service.settings import SidecarSettings

ClientFactory = Callable[..., TestClient]
TOKENS = {"ingest_tokens": ("i",), "read_tokens": ("r",), "admin_tokens": ("a",)}
_request_ids = itertools.count()


def _call(client: TestClient, route: str, authorization: str | None) -> httpx2.Response:
    """One request to ``route`` ("METHOD /path") with a valid body where it needs one."""
    method, path = route.split(" ")
    headers = {} if authorization is None else {"authorization": authorization}
    body: dict[str, Any] = {}
    if route == "POST /v1/events":
        body = {"json": event(f"r{next(_request_ids)}")}
    elif method == "PUT":
        body = {"json": {"every_n": 7}}
    return client.request(method, path, headers=headers, **body)


ROUTES = [
    "POST /v1/events",
    "GET /status",
    "GET /v1/models/m/sampling",
    "PUT /v1/models/m/sampling",
    "DELETE /v1/models/m/sampling",
    "GET /metrics",
    "GET /livez",
    "HEAD /livez",
]
OK = {"POST": 202, "GET": 200, "HEAD": 200, "PUT": 200, "DELETE": 200}


@pytest.mark.parametrize("route", [pytest.param(route, id=route.replace(" ", "-")) for route in ROUTES])
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer whatever", id="any-token"),
    ],
)
def test_every_route_is_open_without_tokens(client: TestClient, route: str, authorization: str | None) -> None:
    response = _call(client, route, authorization)
    assert response.status_code == OK[route.split(" ")[0]], response.text


# Who may do what: None is the answer without an Authorization header.
ALLOWED: dict[str, set[str | None]] = {
    "POST /v1/events": {"i", "a"},
    "GET /status": {"r", "a"},
    "GET /v1/models/m/sampling": {"r", "a"},
    "PUT /v1/models/m/sampling": {"a"},
    "DELETE /v1/models/m/sampling": {"a"},
    "GET /metrics": {None, "i", "r", "a", "unknown"},
    "GET /livez": {None, "i", "r", "a", "unknown"},
    "HEAD /livez": {None, "i", "r", "a", "unknown"},
}


def _expected(route: str, token: str | None) -> int:
    if token in ALLOWED[route]:
        return OK[route.split(" ")[0]]
    if token in (None, "unknown"):
        return 401
    return 403


@pytest.mark.parametrize("route", [pytest.param(route, id=route.replace(" ", "-")) for route in ROUTES])
@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no-token"),
        pytest.param("unknown", id="unknown-token"),
        pytest.param("i", id="ingest-token"),
        pytest.param("r", id="read-token"),
        pytest.param("a", id="admin-token"),
    ],
)
def test_scope_matrix(make_client: ClientFactory, route: str, token: str | None) -> None:
    client = make_client(**TOKENS)
    response = _call(client, route, None if token is None else f"Bearer {token}")
    expected = _expected(route, token)
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if expected in (401, 403):
        assert response.json()["field"] == "authorization"


@pytest.mark.parametrize("route", [pytest.param(route, id=route.replace(" ", "-")) for route in ROUTES[:5]])
@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("a", id="token-without-scheme"),
        pytest.param("Basic YTph", id="basic-scheme"),
        pytest.param("Basic a", id="basic-with-a-known-token"),
        pytest.param("Bearer", id="bearer-alone"),
        pytest.param("Bearer ", id="bearer-and-space"),
        pytest.param("Bearer a extra", id="token-with-trailing-words"),
        pytest.param("Bearera", id="no-space-after-bearer"),
        pytest.param("", id="empty-header"),
    ],
)
def test_malformed_authorization_is_401(make_client: ClientFactory, route: str, authorization: str) -> None:
    client = make_client(**TOKENS)
    response = _call(client, route, authorization)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["field"] == "authorization"


def test_scheme_is_case_insensitive(make_client: ClientFactory) -> None:
    client = make_client(**TOKENS)
    assert _call(client, "GET /status", "bearer r").status_code == 200
    assert _call(client, "GET /status", "BEARER a").status_code == 200


def test_refused_requests_change_nothing(make_client: ClientFactory) -> None:
    client = make_client(**TOKENS)
    assert _call(client, "POST /v1/events", "Bearer r").status_code == 403
    assert _call(client, "PUT /v1/models/m/sampling", "Bearer i").status_code == 403
    status = client.get("/status", headers={"authorization": "Bearer r"}).json()
    assert status["accepted"] == {}
    assert status["auth_enabled"] is True
    policy = client.get("/v1/models/m/sampling", headers={"authorization": "Bearer r"}).json()
    assert policy["every_n"] == 100


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("0.0.0.0", id="ipv4-any"),
        pytest.param("::", id="ipv6-any"),
        pytest.param("10.1.2.3", id="private-address"),
        pytest.param("sidecar.example.com", id="host-name"),
    ],
)
@pytest.mark.parametrize("embedded", [pytest.param(False, id="redis-url"), pytest.param(True, id="embedded-redis")])
def test_cli_refuses_non_loopback_host_with_auth_off(
    make_settings: Callable[..., SidecarSettings],
    uvicorn_runs: list[str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    host: str,
    embedded: bool,
) -> None:
    data_dir = tmp_path / "redis"
    settings = make_settings(host=host, redis_data_dir=data_dir)
    if embedded:
        settings = settings.model_copy(update={"redis_url": None})
    with caplog.at_level(logging.ERROR, logger="vai_sidecar"):
        assert cli.serve_forever(settings) == 2
    assert uvicorn_runs == []
    assert not data_dir.exists(), "an embedded redis-server was started"
    assert host in caplog.text
    assert "auth" in caplog.text


@pytest.mark.parametrize(
    ("host", "tokens"),
    [
        pytest.param("127.0.0.1", {}, id="loopback-auth-off"),
        pytest.param("::1", {}, id="ipv6-loopback-auth-off"),
        pytest.param("localhost", {}, id="localhost-auth-off"),
        pytest.param("0.0.0.0", {"ingest_tokens": ("i",)}, id="any-address-auth-on"),
    ],
)
def test_cli_serves_loopback_or_with_auth_on(
    make_settings: Callable[..., SidecarSettings], uvicorn_runs: list[str], host: str, tokens: dict[str, Any]
) -> None:
    assert cli.serve_forever(make_settings(host=host, **tokens)) == 0
    assert uvicorn_runs == [host]


def test_refused_ingest_requests_each_end_in_one_counter(make_client: ClientFactory) -> None:
    """A fleet posting with a wrong token, or the wrong method, delivers nothing: that must show in the
    rejection counter the alert reads, once per request (the body is never read)."""
    registry = CollectorRegistry()
    client = make_client(registry, **TOKENS)
    assert _call(client, "POST /v1/events", None).status_code == 401
    assert _call(client, "POST /v1/events", "Bearer unknown").status_code == 401
    assert _call(client, "POST /v1/events", "Bearer r").status_code == 403
    assert client.put("/v1/events", headers={"authorization": "Bearer i"}).status_code == 405
    assert _call(client, "POST /v1/events", "Bearer i").status_code == 202

    def rejected(reason: str) -> float | None:
        return registry.get_sample_value("vai_events_rejected_total", {"reason": reason})

    assert (rejected("unauthorized"), rejected("forbidden"), rejected("method_not_allowed")) == (2, 1, 1)
    accepted = [s.value for m in registry.collect() for s in m.samples if s.name == "vai_events_total"]
    assert accepted == [1]
