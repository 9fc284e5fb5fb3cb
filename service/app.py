"""``create_app(settings)``: the FastAPI application around one :class:`Sidecar`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from service import explanations_api, monitoring_api, ui
from service.api import router
from service.errors import SidecarError
from service.ingest import IngestResult
from service.ingest_route import INGEST_PATH, IngestRoute
from service.schemas import openapi_ingest_path
from service.settings import Settings
from service.sidecar import Sidecar

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> FastAPI:
    """The application; its lifespan builds the sidecar and runs its background tasks."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sidecar = Sidecar(settings, registry=registry)
        if not sidecar.auth.enabled:
            log.warning("auth is off: no VAI_INGEST_TOKENS, VAI_READ_TOKENS or VAI_ADMIN_TOKENS set")
        await sidecar.start()
        app.state.sidecar = sidecar
        try:
            yield
        finally:
            await sidecar.stop()

    app = FastAPI(title="vai-sidecar", version="0.1.0", lifespan=lifespan)
    app.include_router(router)
    app.include_router(explanations_api.router)
    app.include_router(monitoring_api.router)
    app.include_router(ui.router)
    app.add_middleware(IngestRoute)
    app.add_exception_handler(SidecarError, _sidecar_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            ingest_path, components = openapi_ingest_path(IngestResult)
            schema["paths"] = {INGEST_PATH: ingest_path, **schema.get("paths", {})}
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


async def _sidecar_error(request: Request, error: Exception) -> Response:
    if not isinstance(error, SidecarError):  # pragma: no cover - registered for SidecarError only
        raise error
    return Response(
        orjson.dumps(error.body()), status_code=error.status, media_type="application/json", headers=error.headers
    )


async def _validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's own validation (path, query, small JSON bodies) in our error shape."""
    if not isinstance(error, RequestValidationError):  # pragma: no cover
        raise error
    first = error.errors()[0]
    where = () if first.get("type") == "json_invalid" else first.get("loc", ())
    location = [str(part) for part in where if part not in ("body", "path", "query")]
    field = ".".join(location) or "body"
    body = {"error": f"{field}: {first.get('msg', 'invalid')}", "field": field}
    return Response(orjson.dumps(body), status_code=422, media_type="application/json")
