"""HTTP routes: each reads its input, calls the sidecar, and returns."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sampler.policy import SamplingPolicy, SamplingPolicyPatch
from service.http.auth import Scope
from service.http.openapi import BODY, REDIS, TOKEN, errors
from service.routes.deps import AdminScope, ModelPath, ReadScope, SidecarDep, json_body, json_body_doc
from service.sidecar import SidecarStatusPublic

router = APIRouter()
POLICY_BODY_BYTES = 64 * 1024
"""Largest ``PUT /v1/models/{model}/sampling`` body (100 cohort matchers fit many times over)."""
PolicyPatchBody = Annotated[
    SamplingPolicyPatch, json_body(SamplingPolicyPatch, scope=Scope.ADMIN, limit_bytes=POLICY_BODY_BYTES)
]


def _json(content: Any) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")


@router.get("/v1/models/{model}/sampling", dependencies=[ReadScope], responses=errors(*TOKEN, 422))
async def get_sampling(model: ModelPath, sidecar: SidecarDep) -> SamplingPolicy:
    return sidecar.sampler.policy(model)


@router.put(
    "/v1/models/{model}/sampling",
    openapi_extra=json_body_doc(SamplingPolicyPatch),
    responses=errors(*TOKEN, *BODY, 422, REDIS),
)
async def put_sampling(model: ModelPath, patch: PolicyPatchBody, sidecar: SidecarDep) -> SamplingPolicy:
    return await sidecar.policy_sync.update(model, patch)


@router.delete("/v1/models/{model}/sampling", dependencies=[AdminScope], responses=errors(*TOKEN, 422, REDIS))
async def delete_sampling(model: ModelPath, sidecar: SidecarDep) -> SamplingPolicy:
    return await sidecar.policy_sync.reset(model)


@router.get("/status", dependencies=[ReadScope], responses=errors(*TOKEN))
async def status(sidecar: SidecarDep) -> SidecarStatusPublic:
    return await sidecar.status()


@router.api_route("/livez", methods=["GET", "HEAD"], include_in_schema=False)  # HEAD: some load balancers probe so
async def livez() -> Response:
    return _json({"status": "ok"})


@router.get("/metrics", include_in_schema=False)
async def metrics(sidecar: SidecarDep) -> Response:
    return Response(generate_latest(sidecar.registry), media_type=CONTENT_TYPE_LATEST)
