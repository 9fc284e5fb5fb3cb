"""One error shape for every refusal: the error family, the compatibility shim, FastAPI's and Starlette's own."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from common import errors
from helpers import app_of, serve_app
from service.app import create_app
from service.settings import SidecarSettings

ClientFactory = Callable[..., TestClient]


class _Thing(BaseModel):
    count: int


def _with_route(client: TestClient, path: str, raised: BaseException) -> TestClient:
    """``client``'s app with one more route at ``path`` that raises ``raised``."""

    async def endpoint() -> None:
        raise raised

    app_of(client).add_api_route(path, endpoint, methods=["GET"])
    return client


def _assert_shape(body: dict[str, object], field: str | None) -> None:
    assert isinstance(body["error"], str) and body["error"], body
    assert body.get("field") == field, body
    assert "detail" not in body, body


@pytest.mark.parametrize(
    ("raised", "status", "field", "headers"),
    [
        pytest.param(errors.BadRequest("body: nope", field="body"), 400, "body", {}, id="bad-request"),
        pytest.param(
            errors.Unauthorized(field="authorization"),
            401,
            "authorization",
            {"www-authenticate": "Bearer"},
            id="unauthorized",
        ),
        pytest.param(errors.Forbidden("authorization: no", field="authorization"), 403, "authorization", {}, id="403"),
        pytest.param(errors.NotFound("model: none", field="model"), 404, "model", {}, id="not-found"),
        pytest.param(errors.MonitorsOff(), 409, None, {}, id="monitors-off"),
        pytest.param(errors.PayloadTooLarge("body: big", field="body"), 413, "body", {}, id="payload-too-large"),
        pytest.param(errors.InvalidInput("x: bad", field="x"), 422, "x", {}, id="invalid-input"),
        pytest.param(errors.RedisUnavailable(), 503, None, {"retry-after": "1"}, id="redis-unavailable"),
    ],
)
def test_every_error_kind_answers_its_status_headers_and_shape(
    client: TestClient, raised: errors.VaiError, status: int, field: str | None, headers: dict[str, str]
) -> None:
    response = _with_route(client, "/boom", raised).get("/boom")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert headers.items() <= dict(response.headers).items()
    _assert_shape(response.json(), field)
    assert response.json()["error"] == raised.message


def test_unknown_path_is_404_in_the_error_shape(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    _assert_shape(response.json(), "path")


@pytest.mark.parametrize("path", ["/v1/explanations/digits", "/livez/", "/v1/models/digits/drift/"])
def test_a_path_one_slash_off_a_route_is_404_not_a_redirect_echoing_the_host(
    make_client: Callable[..., TestClient], path: str
) -> None:
    """Starlette's slash redirect answered 307 with an empty body and a Location built from the client's Host. With
    auth on, so that the foreign Host reaches the routing (with auth off it is refused first)."""
    client = make_client(read_tokens=("r",))
    response = client.get(path, follow_redirects=False, headers={"Host": "evil.example", "authorization": "Bearer r"})
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json() == {"error": "path: Not Found", "field": "path"}


def test_wrong_method_is_405_in_the_error_shape_with_allow(client: TestClient) -> None:
    response = client.post("/status")
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]
    _assert_shape(response.json(), "method")
    ingest = client.get("/v1/events")
    assert ingest.status_code == 405
    assert ingest.headers["allow"] == "POST"
    _assert_shape(ingest.json(), "method")


def test_fastapi_validation_and_json_decode_errors_are_422_in_the_error_shape(client: TestClient) -> None:
    async def post_thing(thing: _Thing) -> dict[str, int]:
        return {"count": thing.count}

    app_of(client).add_api_route("/thing", post_thing, methods=["POST"])
    bad_json = client.post("/thing", content=b'{"count": ', headers={"content-type": "application/json"})
    assert bad_json.status_code == 422
    _assert_shape(bad_json.json(), "body")
    bad_field = client.post("/thing", json={"count": "many"})
    assert bad_field.status_code == 422
    _assert_shape(bad_field.json(), "count")
    missing_query = client.get("/v1/explanations/digits/r1/heatmap.png")
    assert missing_query.status_code == 422
    _assert_shape(missing_query.json(), "method")


@pytest.mark.parametrize(
    "raised",
    [
        pytest.param(ResponseError("OOM command not allowed when used memory > 'maxmemory'."), id="oom"),
        pytest.param(RedisConnectionError("Error 111 connecting to 10.9.8.7:6390. Connection refused."), id="down"),
    ],
)
def test_a_redis_error_no_route_translated_is_503_without_the_address(client: TestClient, raised: Exception) -> None:
    response = _with_route(client, "/redis-boom", raised).get("/redis-boom")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    _assert_shape(response.json(), None)
    assert "10.9.8.7" not in response.text and "6390" not in response.text


def test_a_bug_is_a_500_in_the_error_shape(make_client: ClientFactory) -> None:
    client = _with_route(make_client(), "/bug", RuntimeError("a bug"))
    quiet = TestClient(client.app, raise_server_exceptions=False)
    response = quiet.get("/bug")
    assert response.status_code == 500
    _assert_shape(response.json(), None)
    assert "a bug" not in response.text


def test_a_bug_leaves_the_connection_open_for_the_next_request(
    make_settings: Callable[..., SidecarSettings], caplog: pytest.LogCaptureFixture
) -> None:
    """Answered by Starlette's last-resort handler, a bug was raised again for uvicorn, which then closed the
    connection: a keep-alive client's next request on it (a health check, the next batch) failed too."""
    app = create_app(make_settings())

    async def endpoint() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/bug", endpoint, methods=["GET"])
    with serve_app(app) as url:
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("GET", "/bug")
            answer = connection.getresponse()
            body = json.loads(answer.read())
            assert answer.status == 500 and answer.getheader("connection") is None
            _assert_shape(body, None)
            assert "a bug" not in json.dumps(body)
            connection.request("GET", "/livez")  # the same connection
            assert connection.getresponse().status == 200
        finally:
            connection.close()
    assert "GET /bug: internal error (answered 500)" in caplog.text and "RuntimeError: a bug" in caplog.text


def test_openapi_documents_the_one_error_shape_not_fastapi_s(client: TestClient) -> None:
    """Every route's 422 was documented as FastAPI's {"detail": [...]}, which none answers."""
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in str(schema)
    error = schema["components"]["schemas"]["Error"]
    operations = [op for item in schema["paths"].values() for op in item.values()]
    failures = [answer for op in operations for status, answer in op["responses"].items() if status[0] in "45"]
    assert failures and all("#/components/schemas/Error" in str(answer["content"]) for answer in failures)
    refused = client.get("/v1/explanations", params={"model": "digits", "limit": "many"})
    assert refused.status_code == 422 and set(error["required"]) <= set(refused.json())
    documented = schema["paths"]["/v1/explanations"]["get"]["responses"]["422"]
    assert documented["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
