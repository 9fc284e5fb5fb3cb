"""HTTP routes: each reads its input, calls the sidecar, and returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sampler.policy import SamplingPolicy, SamplingPolicyPatch
from service.auth import Scope
from service.deps import AdminScope, ModelPath, ReadScope, SidecarDep, read_body
from service.errors import SidecarError
from service.schemas import openapi_body_schema
from service.sidecar import Sidecar

router = APIRouter()
_BODY_SCHEMA, BODY_COMPONENTS = openapi_body_schema()
_INGEST_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _BODY_SCHEMA}}}
}


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


@router.post(
    "/v1/events", status_code=202, openapi_extra=_INGEST_DOC, summary='Post one prediction event or {"events": [...]}'
)
async def post_events(request: Request) -> Response:
    # The hot path skips dependency injection (it costs more than the auth check itself).
    sidecar: Sidecar = request.app.state.sidecar
    sidecar.auth.check(request.headers.get("authorization"), Scope.INGEST)
    try:
        body = await read_body(request, limit_bytes=sidecar.settings.max_body_bytes)
    except SidecarError as error:
        sidecar.ingest.reject_body("body_too_large" if error.status == 413 else "invalid_body")
        raise
    return Response(sidecar.ingest.ingest(body).to_json(), status_code=202, media_type="application/json")


@router.get("/v1/models/{model}/sampling", dependencies=[ReadScope])
async def get_sampling(model: ModelPath, sidecar: SidecarDep) -> SamplingPolicy:
    return sidecar.sampler.policy(model)


@router.put("/v1/models/{model}/sampling", dependencies=[AdminScope])
async def put_sampling(model: ModelPath, patch: SamplingPolicyPatch, sidecar: SidecarDep) -> SamplingPolicy:
    return await sidecar.update_policy(model, patch)


@router.delete("/v1/models/{model}/sampling", dependencies=[AdminScope])
async def delete_sampling(model: ModelPath, sidecar: SidecarDep) -> SamplingPolicy:
    return await sidecar.reset_policy(model)


@router.get("/status", dependencies=[ReadScope])
async def status(sidecar: SidecarDep) -> Response:
    return _json(dataclasses.asdict(sidecar.status()))


@router.get("/livez", include_in_schema=False)
async def livez() -> Response:
    return _json({"status": "ok"})


@router.get("/metrics", include_in_schema=False)
async def metrics(sidecar: SidecarDep) -> Response:
    return Response(generate_latest(sidecar.registry), media_type=CONTENT_TYPE_LATEST)
