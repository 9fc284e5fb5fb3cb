"""``POST /v1/cloudevents``: KServe's inference logger (``spec.predictor.logger``) posts here."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from common.errors import VaiError
from service.http.auth import Scope
from service.http.body import BodyCutOff
from service.http.openapi import BODY, REDIS, TOKEN, errors, request_body
from service.kserve.cloudevents import HEADER_LENGTH, MAX_EVENT_ID, REQUEST_TYPE, RESPONSE_TYPE, STRUCTURED
from service.kserve.logger import KServeReply
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
    except (ClientDisconnect, BodyCutOff):  # the sender left, or the server's shutdown cut the body off
        sidecar.kserve.disconnected(request.headers)
        raise


@router.post(
    "/v1/cloudevents",
    summary="A CloudEvent of KServe's inference logger",
    response_model=KServeReply,
    response_description="The CloudEvent's outcome (as vai_kserve_events_total counts it), and what ingest made of "
    "its events: accepted, and the rejected ones by index (none for a request, or a response not ingested)",
    openapi_extra=request_body(
        "One CloudEvent 1.0. Binary mode (what KServe's logger sends): the attributes are ce-* headers "
        "(ce-specversion, ce-id, ce-type required; ce-inferenceservicename names the mapped model) and the body is the "
        f"payload as the model server saw it. Structured mode (Content-Type: {STRUCTURED}): one JSON object of the "
        "attributes and the payload in data (or data_base64)",
        {
            "application/json": {
                "type": "object",
                "description": "Binary mode: a KServe v1 ({instances} / {predictions}) or Open Inference Protocol "
                "v2 ({inputs} / {outputs}) payload",
            },
            "application/octet-stream": {
                "type": "string",
                "format": "binary",
                "description": "Binary mode, the Open Inference Protocol's binary tensor extension: the JSON header "
                f"(its length in the {HEADER_LENGTH} header), then the raw tensors",
            },
            STRUCTURED: {
                "type": "object",
                "required": ["specversion", "id", "type"],
                "properties": {
                    "specversion": {"const": "1.0"},
                    "id": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID},
                    "type": {"enum": [REQUEST_TYPE, RESPONSE_TYPE]},
                    "inferenceservicename": {"type": "string"},
                    "data": {"type": ["object", "string"], "description": "The payload (or data_base64)"},
                    "data_base64": {"type": "string", "contentEncoding": "base64"},
                },
            },
        },
    ),
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
