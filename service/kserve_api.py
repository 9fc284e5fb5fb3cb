"""``POST /v1/cloudevents``: KServe's inference logger (``spec.predictor.logger``) posts here."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from service.deps import IngestScope, SidecarDep, read_body

router = APIRouter()


@router.post("/v1/cloudevents", dependencies=[IngestScope])
async def cloudevents(request: Request, sidecar: SidecarDep) -> Response:
    """One CloudEvent (binary or structured mode) of an inference request or response; 200 with a summary."""
    body = await read_body(request, limit_bytes=sidecar.settings.max_body_bytes, limit_setting="VAI_MAX_BODY_BYTES")
    summary = await sidecar.kserve.handle(request.headers, body)
    return Response(orjson.dumps(summary), media_type="application/json")
