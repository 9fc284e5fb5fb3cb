"""HTTP routes for stored explanations (read token)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Query, Response
from pydantic_core import to_json
from starlette.concurrency import run_in_threadpool

from common.errors import NotFound
from sampler.explanation_records import ExplanationRecord, SanityFigure
from sampler.layers import ModelLayers
from sampler.verdicts import MethodTrustReport
from service.explanations.layers import model_layers, render_activations
from service.explanations.public import ExplanationListPublic, ExplanationPublic, render_heatmap, to_public
from service.explanations.reads import UNKNOWN_MODEL, ExplanationReads
from service.http.openapi import REDIS, TOKEN, errors
from service.routes.deps import ModelPath, ReadScope, SidecarDep
from service.sidecar import Sidecar

log = logging.getLogger(__name__)
_T = TypeVar("_T")
router = APIRouter(dependencies=[ReadScope], responses=errors(*TOKEN, 422, REDIS))
_NO_EVENT = "No sampled event of this model with this request_id (never sampled, past the retention, or unreadable)"
RequestIdPath = Annotated[str, Path(min_length=1, max_length=128)]


def _reads(sidecar: Sidecar) -> ExplanationReads:
    return ExplanationReads(
        sidecar.explanations,
        known_here=sidecar.ingest.known_models,
        cohort_keys=sidecar.settings.cohort_keys,
        max_cohort_values=sidecar.settings.max_cohort_values,
    )


@router.get(
    "/v1/explanations",
    summary="Stored explanations, newest first, filtered",
    response_model=ExplanationListPublic,
    responses=errors(why={404: f"{UNKNOWN_MODEL} (nothing matches, and the fleet does not know the model)"}),
)
async def list_explanations(
    sidecar: SidecarDep,
    model: Annotated[str | None, Query(description="Required when several models have explanations")] = None,
    version: Annotated[str | None, Query(description="Model version")] = None,
    reason: Annotated[str | None, Query(description="every_n, low_confidence, low_margin or flagged_cohort")] = None,
    cohort: Annotated[
        str | None,
        Query(description="key=value (or key:value), e.g. region=eu, its key one of VAI_COHORT_KEYS; all: no filter"),
    ] = None,
    predicted: Annotated[str | None, Query(description="Predicted class index")] = None,
    since: Annotated[str | None, Query(description="Epoch seconds or RFC 3339 with a UTC offset")] = None,
    until: Annotated[str | None, Query(description="Epoch seconds or RFC 3339 with a UTC offset")] = None,
    limit: Annotated[str | None, Query(description="1–500, default 50")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    """One request examines a bounded number of index entries: ``complete: false`` says the scan stopped there
    before ``limit`` items were found (an empty page then does not mean that nothing matches); ``next_cursor``
    continues it. Parameters are checked here, not by FastAPI, so that a bad one is a 422 naming it in the
    error shape. A model the fleet does not know is a 404 naming ``model``, as on the methods route. The page is
    the JSON of ``ExplanationListPublic``, written off the event loop when large."""
    given = {
        "model": model,
        "version": version,
        "reason": reason,
        "cohort": cohort,
        "predicted": predicted,
        "since": since,
        "until": until,
        "limit": limit,
        "cursor": cursor,
    }
    params = {name: value for name, value in given.items() if value is not None}
    return Response(await _reads(sidecar).listing(params), media_type="application/json")


@router.get(
    "/v1/explanations/{model}/methods",
    summary="Per attribution method: sanity, deletion, agreement, verdicts",
    responses=errors(why={404: UNKNOWN_MODEL}),
)
async def get_method_trust(
    model: ModelPath, sidecar: SidecarDep, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> MethodTrustReport:
    """Over the model's latest ``limit`` done explanations; none (an empty report) for a model of the fleet whose
    events are not explained yet, and a 404 for a name the fleet does not know: a typo is not "the workers are
    behind". Declared before the detail route, so an event whose request_id is ``methods`` is not readable by id."""
    return await _reads(sidecar).method_report(model, limit=limit)


@router.get(
    "/v1/explanations/{model}/{request_id:path}/heatmap.png",
    response_class=Response,
    responses=errors(why={404: f"{_NO_EVENT}, or no map of this method for it"}),
)
async def get_heatmap(
    model: ModelPath,
    request_id: RequestIdPath,
    sidecar: SidecarDep,
    method: Annotated[str, Query(min_length=1, max_length=64)],
) -> Response:
    record = await _record(sidecar, model, request_id)
    names = list(record.detail.feature_names) if record.detail.feature_names else None
    png = await _readable(model, request_id, partial(render_heatmap, record, method, feature_names=names))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get(
    "/v1/explanations/{model}/{request_id:path}/activations.png",
    response_class=Response,
    responses=errors(why={404: f"{_NO_EVENT}, or no feature maps of this layer for it"}),
)
async def get_activations(
    model: ModelPath,
    request_id: RequestIdPath,
    sidecar: SidecarDep,
    layer: Annotated[str, Query(min_length=1, max_length=200)],
) -> Response:
    """The stored feature maps of one inspected layer on this event's input, as a channel grid."""
    record = await _record(sidecar, model, request_id)
    png = await _readable(model, request_id, partial(render_activations, record, layer))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get(
    "/v1/explanations/{model}/{request_id:path}",
    response_model=ExplanationPublic,
    responses=errors(why={404: _NO_EVENT}),
)
async def get_explanation(model: ModelPath, request_id: RequestIdPath, sidecar: SidecarDep) -> Response:
    """Declared after the PNG routes: a request id may hold ``/`` (sent as ``%2F`` or as is), so this route
    takes the rest of the path. Paths are matched decoded, so an id ending ``/heatmap.png`` or
    ``/activations.png`` reads as that image's route, and the id ``methods`` as the methods route.

    The answer is built and written as JSON in a worker thread: a record of a few image-sized maps is tens of
    megabytes of numbers, which on the event loop held up ingest for ~0.1 s (seconds for a large map)."""
    record = await _record(sidecar, model, request_id)
    sanity = await sidecar.explanations.sanity(model)
    body = await _readable(model, request_id, partial(_public_json, record, sanity))
    return Response(body, media_type="application/json")


def _public_json(record: ExplanationRecord, sanity: dict[str, SanityFigure]) -> bytes:
    return to_json(to_public(record, sanity))


@router.get(
    "/v1/models/{model}/layers",
    summary="Layer health the attribution workers saw lately",
    responses=errors(why={404: "No attribution worker has inspected this model lately"}),
)
async def get_layers(model: ModelPath, sidecar: SidecarDep) -> ModelLayers:
    return await model_layers(sidecar.redis, model)


async def _record(sidecar: Sidecar, model: str, request_id: str) -> ExplanationRecord:
    record = await sidecar.explanations.get(model, request_id)
    if record is None:
        raise _absent(model, request_id)
    return record


async def _readable(model: str, request_id: str, call: Callable[[], _T]) -> _T:
    """``call``'s answer, computed in a worker thread; a stored array that parsed but does not decode (data that
    does not fill its shape, or is not base64) reads as an unreadable record, not as a 500."""
    try:
        return await run_in_threadpool(call)
    except ValueError:  # binascii.Error included
        log.warning("stored explanation %s of model %s does not decode", request_id, model, exc_info=True)
        raise _absent(model, request_id) from None


def _absent(model: str, request_id: str) -> NotFound:
    return NotFound(
        f"request_id: no sampled event {request_id!r} of model {model!r} (never sampled, past the retention, "
        "or its stored record is unreadable)",
        field="request_id",
    )
