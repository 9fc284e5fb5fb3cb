"""``POST /v1/cloudevents``: KServe's inference logger (``spec.predictor.logger``) posts here."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from common.errors import VaiError
from service.http.auth import Scope
from service.http.openapi import BODY, REDIS, TOKEN, errors
from service.routes.deps import SidecarDep, read_body
from service.sidecar import Sidecar

router = APIRouter()


async def _read(request: Request, sidecar: Sidecar) -> bytes:
    """The body, after the ingest token unless ``VAI_KSERVE_OPEN`` opens this route alone (KServe's logger sends
    no token); a CloudEvent refused here is counted too, so that none goes unseen, and so is one whose sender went
    away before its body was all sent (the app's handler answers it, to nobody)."""
    try:
        if not sidecar.settings.kserve_open:
            sidecar.auth.check(request.headers.get("authorization"), Scope.INGEST)
        return await read_body(request, limit_bytes=sidecar.settings.max_body_bytes, limit_setting="VAI_MAX_BODY_BYTES")
    except VaiError as error:
        sidecar.kserve.refused(request.headers, error)
        raise
    except ClientDisconnect:
        sidecar.kserve.disconnected(request.headers)
        raise


@router.post(
    "/v1/cloudevents",
    responses=errors(
        *TOKEN,
        *BODY,
        422,
        REDIS,
        why={
            400: "The body cannot be read, or is no CloudEvent 1.0 (the body names the attribute)",
            401: "No bearer token, or an unknown one (unless VAI_KSERVE_OPEN)",
            403: "The token may not ingest (unless VAI_KSERVE_OPEN)",
            503: "Redis did not answer, and this request's inputs must wait in it for their response: "
            "send it again after Retry-After seconds",
        },
    ),
)
async def cloudevents(request: Request, sidecar: SidecarDep) -> Response:
    """One CloudEvent (binary or structured mode) of an inference request or response; 200 with a summary."""
    body = await _read(request, sidecar)
    summary = await sidecar.kserve.handle(request.headers, body)
    return Response(orjson.dumps(summary), media_type="application/json")
