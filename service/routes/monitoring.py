"""HTTP routes of the monitors: delayed labels, drift references and status, calibration, overview views."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import RootModel
from starlette.concurrency import run_in_threadpool

from common.errors import MonitorsOff, NotFound, Unavailable
from monitors.cohorts import ALL, slice_name
from monitors.fleet.results import SeriesQuality
from monitors.fleet.views import marked_stale
from service.feed.label_body import LabelsIn, labels_of
from service.feed.labels import LabelsResult
from service.http.auth import Scope
from service.http.openapi import BODY, REDIS, TOKEN, errors
from service.monitoring.handler import Monitoring
from service.monitoring.public import CalibrationPublic, DriftStatusPublic, ReferenceAccepted
from service.monitoring.views import unknown_model
from service.routes.deps import AdminScope, ModelPath, ReadScope, SidecarDep, json_body, json_body_doc, read_body
from service.sidecar import Sidecar

log = logging.getLogger(__name__)
router = APIRouter()
_UNKNOWN_MODEL = "The monitors never saw this model (no events or reference published for it)"
_UNREADABLE = (
    "Redis did not answer, or what the owning monitor published cannot be read by this sidecar (a monitor of "
    "another release); send it again after Retry-After seconds"
)
_VIEW = errors(*TOKEN, 409, 422, REDIS, why={404: _UNKNOWN_MODEL})
"""What a view of the owning monitor's published figures answers besides its figures."""
_NO_MONITOR = (
    f"{_UNKNOWN_MODEL}; or it is not published and no `vai-sidecar monitor` owns the model or is alive on this Redis "
    "to take it (nothing will publish it until one runs)"
)
"""The 404 of a view computed on demand by the owning monitor (projection, distributions)."""


class _LabelsBody(RootModel[Any]):
    """The body as read: any JSON document, whose envelope :func:`labels_of` checks in the sender's terms (a model's
    errors name its class); each label is checked on its own (one bad label does not cost the others)."""


def _monitoring(sidecar: Sidecar) -> Monitoring:
    if sidecar.monitoring is None:
        raise MonitorsOff()
    return sidecar.monitoring


LABELS_BODY_BYTES = 4 * 1024 * 1024
"""Most bytes of one ``POST /v1/labels`` (10,000 labels take about 1.5 MB)."""
LabelsBody = Annotated[
    _LabelsBody, json_body(_LabelsBody, scope=Scope.INGEST, limit_bytes=LABELS_BODY_BYTES, text_checked_by_model=True)
]


@router.post(
    "/v1/labels",
    summary="Join delayed ground truth to predictions",
    openapi_extra=json_body_doc(LabelsIn),
    response_model=LabelsResult,
    response_description="How many labels joined their prediction; those that found no record, and those refused",
    responses=errors(*TOKEN, *BODY, 409, 422, REDIS),
)
async def post_labels(body: LabelsBody, sidecar: SidecarDep) -> Response:
    labels = labels_of(body.root)
    result = await _monitoring(sidecar).delayed_labels.apply(labels, known=sidecar.ingest.known_models)
    return Response(orjson.dumps(result), media_type="application/json")


@router.put(
    "/v1/models/{model}/reference",
    dependencies=[AdminScope],
    status_code=202,
    response_model=ReferenceAccepted,
    summary="Set the drift reference: JSON {embeddings, probabilities?} or an .npy of embeddings",
    responses=errors(
        *TOKEN,
        *BODY,
        409,
        422,
        REDIS,
        504,
        why={
            503: "Redis did not answer, or another reference is being uploaded to this sidecar; nothing was "
            "stored: send it again after Retry-After seconds"
        },
    ),
)
async def put_reference(model: ModelPath, request: Request, sidecar: SidecarDep) -> ReferenceAccepted:
    monitoring = _monitoring(sidecar)
    with monitoring.reference_upload():  # one at a time, taken before the body is read: memory and GIL bounded
        body = await read_body(
            request, limit_bytes=sidecar.settings.max_reference_bytes, limit_setting="VAI_MAX_REFERENCE_BYTES"
        )
        return await monitoring.accept_reference(model, body, request.headers.get("content-type"), sidecar.ingest)


@router.get(
    "/v1/models/{model}/drift",
    dependencies=[ReadScope],
    response_model=DriftStatusPublic,
    responses=_VIEW | errors(why={404: "No monitor has published drift verdicts for this model yet", 503: _UNREADABLE}),
)
async def get_drift(model: ModelPath, sidecar: SidecarDep) -> Response:
    status = await _monitoring(sidecar).drift_status(model)
    if status is None:
        raise NotFound(
            f"model: no monitor has published drift verdicts for {model!r} (no events or reference yet, "
            "or no `vai-sidecar monitor` running on this Redis)",
            field="model",
        )
    return Response(status.to_json(), media_type="application/json")


@router.get(
    "/v1/models/{model}/calibration",
    dependencies=[ReadScope],
    response_model=CalibrationPublic,
    responses=_VIEW
    | errors(
        why={404: f"{_UNKNOWN_MODEL}, or this version or cohort (the body lists the known ones)", 503: _UNREADABLE}
    ),
)
async def get_calibration(
    model: ModelPath,
    sidecar: SidecarDep,
    version: Annotated[str | None, Query(max_length=64)] = None,
    cohort: Annotated[str | None, Query(max_length=300)] = None,
) -> Response:
    calibration = await _monitoring(sidecar).calibration(
        model, version=version, cohort=None if cohort is None else slice_name(cohort, sidecar.settings.cohort_keys)
    )
    return Response(calibration.to_json(), media_type="application/json")


@router.get(
    "/v1/models/{model}/calibration.png",
    dependencies=[ReadScope],
    response_class=Response,
    responses=_VIEW
    | errors(
        why={
            404: f"{_UNKNOWN_MODEL}, or this version or cohort (the body lists the known ones); or no prediction "
            "of this version and cohort is labelled in the calibration window yet: nothing to draw",
            503: _UNREADABLE,
        }
    ),
)
async def get_calibration_png(
    model: ModelPath,
    sidecar: SidecarDep,
    version: Annotated[str | None, Query(max_length=64)] = None,
    cohort: Annotated[str, Query(max_length=300)] = ALL,
) -> Response:
    chosen = await _monitoring(sidecar).reliability(
        model, version=version, cohort=slice_name(cohort, sidecar.settings.cohort_keys)
    )
    title = f"{model} {chosen.version} ({chosen.cohort})"
    png = await run_in_threadpool(_render_reliability, chosen, title)
    return Response(png, media_type="image/png")


def _render_reliability(series: SeriesQuality, title: str) -> bytes:
    from service.images import render_reliability_png  # Pillow, loaded on the first chart asked for

    return render_reliability_png(series.calibration(), title=title)


# --- model overview views (computed by the owning monitor, served as published) ------------------------


@router.get(
    "/v1/models/{model}/projection",
    dependencies=[ReadScope],
    summary="2-D embedding projection",
    responses=_VIEW
    | errors(
        why={
            404: _NO_MONITOR,
            409: "Monitors are off, or this projection cannot be computed until something changes (the body says what)",
            503: "Redis did not answer, the projection is being computed by the model's monitor or waits for traffic, "
            "or what the monitor published cannot be read by this sidecar; ask again after Retry-After seconds",
        }
    ),
)
async def get_projection(
    model: ModelPath,
    sidecar: SidecarDep,
    method: Annotated[Literal["pca", "umap"], Query()] = "pca",
    limit: Annotated[int | None, Query(ge=2, le=100_000)] = None,
) -> Response:
    view = await _monitoring(sidecar).projection(model, method)
    if view.body is None or not view.projection_current(method):
        raise view.projection_missing(model, method)
    status = view.status
    body = view.body  # as published: no parsing on the request path
    if limit is not None:
        body = await run_in_threadpool(sidecar.projection_limits.limited, body, limit, model)
    error = None if status is None else status.errors.get(method)
    return Response(body if error is None else _stale(body, error, model), media_type="application/json")


def _stale(body: bytes, error: str, model: str) -> bytes:
    """The last good projection, saying that the latest recompute failed and why (``recompute_error``): still a
    true picture of the traffic at its ``computed_at``, where a 503 would blank the page's view until some traffic
    change made a recompute succeed."""
    try:
        return marked_stale(body, error)
    except ValueError:
        raise Unavailable(f"the projection of model {model!r} cannot be read now; try again", retry_after_s=5) from None


@router.get(
    "/v1/models/{model}/drift/history",
    dependencies=[ReadScope],
    summary="Drift scores over time",
    responses=_VIEW,
)
async def get_drift_history(model: ModelPath, sidecar: SidecarDep) -> Response:
    history, monitored = await _monitoring(sidecar).drift_history(model)
    if not history.points and not monitored:
        raise unknown_model(model)
    return Response(await run_in_threadpool(history.model_dump_json), media_type="application/json")


@router.get(
    "/v1/models/{model}/distributions",
    dependencies=[ReadScope],
    summary="Confidence and margin now vs reference",
    responses=_VIEW
    | errors(
        why={
            404: _NO_MONITOR,
            503: "Redis did not answer, or the distributions are being computed by the model's monitor (one owns the "
            "model or is alive to take it); ask again after Retry-After seconds",
        }
    ),
)
async def get_distributions(model: ModelPath, sidecar: SidecarDep) -> Response:
    view = await _monitoring(sidecar).distributions(model)
    if view.body is None:
        raise view.distributions_missing(model)
    return Response(view.body, media_type="application/json")
