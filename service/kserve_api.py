"""``POST /v1/cloudevents``: KServe's inference logger (``spec.predictor.logger``) posts here."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Request, Response

from service.auth import Scope
from service.deps import SidecarDep, read_body
from service.sidecar import Sidecar

router = APIRouter()


async def _logger_scope(request: Request) -> None:
    """The ingest token, unless ``VAI_KSERVE_OPEN`` opens this route alone (KServe's logger sends no token)."""
    sidecar: Sidecar = request.app.state.sidecar
    if not sidecar.settings.kserve_open:
        sidecar.auth.check(request.headers.get("authorization"), Scope.INGEST)


@router.post("/v1/cloudevents", dependencies=[Depends(_logger_scope)])
async def cloudevents(request: Request, sidecar: SidecarDep) -> Response:
    """One CloudEvent (binary or structured mode) of an inference request or response; 200 with a summary."""
    body = await read_body(request, limit_bytes=sidecar.settings.max_body_bytes, limit_setting="VAI_MAX_BODY_BYTES")
    summary = await sidecar.kserve.handle(request.headers, body)
    return Response(orjson.dumps(summary), media_type="application/json")
