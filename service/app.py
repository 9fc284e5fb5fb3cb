"""``create_app(settings)``: the FastAPI application around one :class:`Sidecar`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Scope as AsgiScope

from common.errors import RedisUnavailable, VaiError
from service.events.schemas import openapi_ingest_path
from service.http.head import HeadAsGet
from service.http.hosts import LoopbackHostOnly
from service.http.internal_errors import InternalErrors
from service.http.openapi import BODY, ERROR_REF, ERROR_SCHEMA, TOKEN, errors
from service.ingest.handler import IngestResult
from service.routes import explanations, kserve, monitoring, operations, ui
from service.routes.ingest import INGEST_PATH, IngestRoute
from service.settings import SidecarSettings
from service.sidecar import Sidecar

log = logging.getLogger(__name__)
_CLOUDEVENTS_PATH = "/v1/cloudevents"
"""``service.routes.kserve``'s route, which counts each CloudEvent it refuses."""


def create_app(settings: SidecarSettings, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """The application; its lifespan builds the sidecar and runs its background tasks."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sidecar = Sidecar(settings, registry=registry)
        if not sidecar.auth.enabled:
            log.warning(
                "auth is off: no VAI_INGEST_TOKENS, VAI_READ_TOKENS or VAI_ADMIN_TOKENS set; only requests addressed "
                "to localhost, 127.0.0.0/8 or [::1] (the Host header) are answered"
            )
        await sidecar.start()
        app.state.sidecar = sidecar
        try:
            yield
        finally:
            await sidecar.stop()

    # No /docs or /redoc: FastAPI's pages load Swagger UI from a CDN, which a sidecar must not need (they come up
    # blank offline); the OpenAPI document is at /openapi.json.
    app = FastAPI(
        title="vai-sidecar",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks off: the sidecar reports through Prometheus, and asking on every request
        # whether a tracer, meter or logger provider is configured cost ~3-8 µs of a single event's ~150.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # No 307 to the path with or without a trailing slash: its empty body broke the error shape, and its
        # Location echoed the client's Host header. A path that is not a route is a 404 in the error shape.
        redirect_slashes=False,
    )
    app.include_router(operations.router)
    app.include_router(explanations.router)
    app.include_router(monitoring.router)
    app.include_router(kserve.router)
    app.include_router(ui.router)
    app.add_middleware(HeadAsGet)  # inside IngestRoute: the ingest path pays nothing for it
    app.add_middleware(IngestRoute)
    if not settings.auth_enabled:  # outside IngestRoute, for every path; with auth on, not even a layer to pass
        app.add_middleware(LoopbackHostOnly, refused=_count_refused)
    app.add_middleware(InternalErrors)  # outermost of ours: a bug anywhere below is a 500, the connection kept
    app.add_exception_handler(VaiError, _vai_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RedisError, _redis_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            ingest_path, components = openapi_ingest_path(IngestResult)
            schema["paths"] = {INGEST_PATH: ingest_path, **schema.get("paths", {})}
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            _document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _document_errors(schema: dict[str, Any]) -> None:
    """Every error answer has the one shape ``Error`` (``VaiError.body``), and each route declares the statuses it
    answers (``service.http.openapi.errors``). FastAPI documents its own 422 (``HTTPValidationError``,
    ``{"detail": [...]}``), which no route answers: it points at ``Error`` instead. The ingest path, served outside
    FastAPI's routing, gets the same error content, and its body's 400 and 408."""
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    content = {"application/json": {"schema": {"$ref": ERROR_REF}}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.setdefault("responses", {})
            if "HTTPValidationError" in str(responses.get("422")):  # FastAPI's, not a documented answer of ours
                responses["422"] = {"description": "Invalid input; the body names the field", "content": content}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    ingest = schema["paths"][INGEST_PATH]["post"]["responses"]
    ingest.update((str(status), answer) for status, answer in errors(*TOKEN, *BODY).items())
    rejected = ingest["422"]  # {error, field} and the per-event rejections of the 202
    both = {"allOf": [{"$ref": ERROR_REF}, ingest["202"]["content"]["application/json"]["schema"]]}
    ingest["422"] = {**rejected, "content": {"application/json": {"schema": both}}}


def _count_refused(scope: AsgiScope, error: VaiError) -> None:
    """A request ``LoopbackHostOnly`` refused (403), counted where its route counts its own refusals, as a token
    of the wrong scope (``forbidden``): events and CloudEvents that never arrive must show on the dashboard."""
    sidecar: Sidecar = scope["app"].state.sidecar
    if scope["path"] == INGEST_PATH:
        sidecar.ingest.reject_body("forbidden")
    elif scope["path"] == _CLOUDEVENTS_PATH and scope["method"] == "POST":
        sidecar.kserve.refused(Headers(scope=scope), error)


def _answer(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _vai_error(request: Request, error: Exception) -> Response:
    """The one handler of the error family: its status (per instance), body and headers."""
    if not isinstance(error, VaiError):  # pragma: no cover - registered for VaiError only
        raise error
    return _answer(error.status, error.body(), error.headers)


async def _redis_error(request: Request, error: Exception) -> Response:
    """A Redis failure no route translated: 503, never 500, and never Redis's address."""
    log.warning("%s %s: redis failed: %s", request.method, request.url.path, error)
    return await _vai_error(request, RedisUnavailable())


async def _validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's own validation (path, query, small JSON bodies, JSON it cannot decode) in our error shape."""
    if not isinstance(error, RequestValidationError):  # pragma: no cover
        raise error
    first = error.errors()[0]
    where = () if first.get("type") == "json_invalid" else first.get("loc", ())
    location = [str(part) for part in where if part not in ("body", "path", "query")]
    field = ".".join(location) or "body"
    return _answer(422, {"error": f"{field}: {first.get('msg', 'invalid')}", "field": field})


_HTTP_FIELDS = {400: "body", 404: "path", 405: "method"}


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's and FastAPI's ``HTTPException`` (unknown path, wrong method…) in our error shape."""
    if not isinstance(error, HTTPException):  # pragma: no cover
        raise error
    field = _HTTP_FIELDS.get(error.status_code, "request")
    return _answer(error.status_code, {"error": f"{field}: {error.detail}", "field": field}, error.headers)


async def _client_gone(request: Request, error: Exception) -> Response:
    """The client went away before its body was all sent: nobody to answer, and nothing to log but a line."""
    log.debug("%s %s: the client disconnected before sending its whole body", request.method, request.url.path)
    return _answer(400, {"error": "body: the client disconnected before sending all of it", "field": "body"})
