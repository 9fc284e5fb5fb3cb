"""HTTP routes of the monitors: delayed labels, drift references and status, calibration, overview views."""

from __future__ import annotations

import io
import logging
import math
import re
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from common.errors import Conflict, InvalidInput, MonitorsOff, NotFound, Unavailable
from monitors.drift.reference import Reference
from monitors.fleet.references import upload_from_arrays
from monitors.fleet.results import SeriesQuality
from monitors.fleet.views import marked_stale
from service.events.errors import FieldError
from service.feed.labels import LabelIn
from service.http.auth import Scope
from service.monitoring.handler import Monitoring, PublishedView
from service.routes.deps import AdminScope, ModelPath, ReadScope, SidecarDep, json_body, json_body_doc, read_body
from service.sidecar import Sidecar

log = logging.getLogger(__name__)
router = APIRouter()
NPY_TYPES = ("application/octet-stream", "application/x-npy")


class LabelsIn(BaseModel):
    """The body as documented (OpenAPI)."""

    labels: list[LabelIn] = Field(min_length=1, max_length=10_000)


class _LabelsEnvelope(BaseModel):
    """The body as read: each label is checked on its own (one bad label does not cost the others)."""

    labels: list[Any] = Field(min_length=1, max_length=10_000)


def _monitoring(sidecar: Sidecar) -> Monitoring:
    if sidecar.monitoring is None:
        raise MonitorsOff()
    return sidecar.monitoring


LABELS_BODY_BYTES = 4 * 1024 * 1024
"""Most bytes of one ``POST /v1/labels`` (10,000 labels take about 1.5 MB)."""
LabelsBody = Annotated[
    _LabelsEnvelope,
    json_body(_LabelsEnvelope, scope=Scope.INGEST, limit_bytes=LABELS_BODY_BYTES, text_checked_by_model=True),
]


@router.post("/v1/labels", summary="Join delayed ground truth to predictions", openapi_extra=json_body_doc(LabelsIn))
async def post_labels(body: LabelsBody, sidecar: SidecarDep) -> Response:
    result = await _monitoring(sidecar).delayed_labels.apply(body.labels, known=sidecar.ingest.known_models)
    return Response(orjson.dumps(result), media_type="application/json")


def _register(sidecar: Sidecar, model: str) -> None:
    try:
        sidecar.ingest.register(model)
    except FieldError as error:  # too many models
        raise InvalidInput(str(error), field=error.field) from None


@router.put(
    "/v1/models/{model}/reference",
    dependencies=[AdminScope],
    status_code=202,
    summary="Set the drift reference: JSON {embeddings, probabilities?} or an .npy of embeddings",
)
async def put_reference(model: ModelPath, request: Request, sidecar: SidecarDep) -> Response:
    monitoring = _monitoring(sidecar)
    with monitoring.reference_upload():  # one at a time, taken before the body is read: memory and GIL bounded
        reference, margin = await _read_reference(request, sidecar)
        dims = int(reference.embeddings.shape[1]) if reference.embeddings is not None else 0
        with sidecar.ingest.embedding_width_claimed(model, dims):
            await monitoring.check_reference(reference)
            _register(sidecar, model)  # after the checks, so an upload they refuse takes no model slot; before
            # the write, so no reference is stored for a model past VAI_MAX_MODELS (one Redis then fails keeps it)
            await monitoring.set_reference(model, reference, margin=margin)
    body_out = {
        "model": model,
        "state": "calibrating",
        "rows": len(reference),
        "dims": dims,
        "outputs": reference.has_outputs,
    }
    return Response(orjson.dumps(body_out), status_code=202, media_type="application/json")


async def _read_reference(request: Request, sidecar: Sidecar) -> tuple[Reference, npt.NDArray[np.float64] | None]:
    """The uploaded reference and its rows' margins, parsed and checked in a worker thread."""
    body = await read_body(
        request, limit_bytes=sidecar.settings.max_reference_bytes, limit_setting="VAI_MAX_REFERENCE_BYTES"
    )
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        return await run_in_threadpool(_parsed, body, content_type)
    except ValueError as error:  # an array numpy refuses in a way the checks did not foresee: still the body's
        raise InvalidInput(f"body: {error}", field="body") from None


def _parsed(body: bytes, content_type: str) -> tuple[Reference, npt.NDArray[np.float64] | None]:
    embeddings, probabilities = _arrays(body, content_type)
    return upload_from_arrays(embeddings, probabilities)


def _npy(body: bytes) -> Any:
    """An .npy array whose header is checked against the bytes that follow it before anything is allocated:
    ``np.load`` allocates the shape a header declares before reading, so a 100-byte body could claim 70 TiB."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)  # type: ignore[no-untyped-call]
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)  # type: ignore[no-untyped-call]
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise InvalidInput(f"body: not a .npy array ({_clean(error)})", field="body") from None
    if dtype.hasobject:
        raise InvalidInput("body: an .npy array of Python objects is not read (pickles run code)", field="body")
    count = math.prod(shape)
    data = memoryview(body)[stream.tell() :]
    if len(data) != count * dtype.itemsize:
        raise InvalidInput(
            f"body: the .npy header declares shape {shape} of {dtype} ({count * dtype.itemsize} bytes), "
            f"but {len(data)} bytes follow it",
            field="body",
        )
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order="F" if fortran_order else "C")


def _clean(error: BaseException) -> str:
    """numpy's header errors, without the Python internals some carry (``<ast.Call object at 0x7f…>``)."""
    message = str(error)
    if "Cannot parse header" in message or " object at 0x" in message:
        return "its header is not a valid .npy header: a Python dict literal with descr, fortran_order and shape"
    return message.splitlines()[0] if message else type(error).__name__


def _arrays(body: bytes, content_type: str) -> tuple[Any, Any]:
    if content_type in NPY_TYPES:
        return _npy(body), None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"body: not valid JSON ({error})", field="body") from None
    if (
        not isinstance(document, dict)
        or "embeddings" not in document
        or set(document) - {"embeddings", "probabilities"}
    ):
        raise InvalidInput(
            'body: send {"embeddings": [[...], ...], "probabilities": [[...], ...]} (probabilities '
            "optional) or an .npy file with Content-Type: application/octet-stream",
            field="body",
        )
    return document["embeddings"], document.get("probabilities")


@router.get("/v1/models/{model}/drift", dependencies=[ReadScope])
async def get_drift(model: ModelPath, sidecar: SidecarDep) -> Response:
    found = await _monitoring(sidecar).drift_status(model)
    if found is None:
        raise NotFound(
            f"model: no monitor has published drift verdicts for {model!r} (no events or reference yet, "
            "or no `vai-sidecar monitor` running on this Redis)",
            field="model",
        )
    status, age_s = found
    body = {**status.model_dump(), "age_s": age_s}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/v1/models/{model}/calibration", dependencies=[ReadScope])
async def get_calibration(
    model: ModelPath,
    sidecar: SidecarDep,
    version: Annotated[str | None, Query(max_length=64)] = None,
    cohort: Annotated[str | None, Query(max_length=300)] = None,
) -> Response:
    monitoring = _monitoring(sidecar)
    report = await monitoring.quality(model)
    if report is None and not await monitoring.monitored(model):
        raise _unknown(model)  # as the other views: a typo in a name is not "no labels yet"
    chosen = report.chosen(version=version, cohort=_slice(cohort)) if report is not None else None
    shown = {"series", "estimates", "temperature", "window_s", "updated_at"}
    figures = chosen.model_dump(include=shown) if chosen is not None else {}
    body = {"model": model, "series": [], "estimates": [], "temperature": [], **figures}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/v1/models/{model}/calibration.png", dependencies=[ReadScope], response_class=Response)
async def get_calibration_png(
    model: ModelPath,
    sidecar: SidecarDep,
    version: Annotated[str | None, Query(max_length=64)] = None,
    cohort: Annotated[str, Query(max_length=300)] = "all",
) -> Response:
    report = await _monitoring(sidecar).quality(model)
    series = report.chosen(version=version, cohort=_slice(cohort)).series if report is not None else ()
    if not series:
        if report is None or not report.series:
            raise NotFound(f"model: no labelled predictions of {model!r}", field="model")
        field = "cohort" if cohort != "all" else "version"
        raise NotFound(f"{field}: no labelled predictions of {model!r} for this version and cohort", field=field)
    chosen = newest(series)
    title = f"{model} {chosen.version} ({chosen.cohort})"
    png = await run_in_threadpool(_render_reliability, chosen, title)
    return Response(png, media_type="image/png")


def newest(series: tuple[SeriesQuality, ...]) -> SeriesQuality:
    """The series of the newest version, as the overview page picks it (not the one with most labels: during a
    canary rollout that is the old version)."""
    version = max({s.version for s in series}, key=_version_order)
    return next(s for s in series if s.version == version)


def _version_order(version: str) -> tuple[tuple[int, int | str], ...]:
    """Versions in natural order (``v2`` < ``v10``), as the viewer sorts them: the last is the newest."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.casefold()) for part in re.split(r"(\d+)", version))


def _slice(cohort: str | None) -> str | None:
    """A cohort slice as the series name it (``region=eu``), given so or as ``region:eu`` like the explanations'
    filter takes it."""
    if cohort is None or "=" in cohort or ":" not in cohort:
        return cohort
    key, _, value = cohort.partition(":")
    return f"{key}={value}"


def _render_reliability(series: SeriesQuality, title: str) -> bytes:
    from service.images import render_reliability_png  # Pillow, loaded on the first chart asked for

    return render_reliability_png(series.calibration(), title=title)


# --- model overview views (computed by the owning monitor, served as published) ------------------------


def _unknown(model: str) -> NotFound:
    return NotFound(
        f"model: {model!r} is unknown to the monitors (no events or reference published for it)", field="model"
    )


@router.get("/v1/models/{model}/projection", dependencies=[ReadScope], summary="2-D embedding projection")
async def get_projection(
    model: ModelPath,
    sidecar: SidecarDep,
    method: Annotated[Literal["pca", "umap"], Query()] = "pca",
    limit: Annotated[int | None, Query(ge=2, le=100_000)] = None,
) -> Response:
    view = await _monitoring(sidecar).projection(model, method)
    status = view.status
    if view.body is None or (status is not None and (method in status.blocked or method in status.waiting)):
        raise _projection_missing(model, method, view)  # blocked or waiting: a body left from before is not current
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


def _projection_missing(model: str, method: str, view: PublishedView) -> Exception:
    if not view.monitored:
        return _unknown(model)
    if view.status is not None and method not in view.status.methods:
        enabled = ", ".join(view.status.methods) or "none"
        return InvalidInput(
            f"method: {method} is not computed by this fleet's monitors (VAI_PROJECTION_METHODS: {enabled})",
            field="method",
        )
    status = view.status
    if status is not None and method in status.blocked:
        return Conflict(f"method: no {method} projection of {model!r}: {status.blocked[method]}", field="method")
    if status is not None and method in status.waiting:
        return Unavailable(f"no {method} projection of {model!r} yet: {status.waiting[method]}", retry_after_s=10)
    error = None if status is None else status.errors.get(method)
    if error is not None:
        return Unavailable(
            f"method: the {method} projection failed ({error}); retried when traffic changes", retry_after_s=30
        )
    wait_s = 10 if method == "umap" else 2
    return Unavailable(
        f"the {method} projection of {model!r} is being computed by its monitor; try again in {wait_s} s",
        retry_after_s=wait_s,
    )


@router.get("/v1/models/{model}/drift/history", dependencies=[ReadScope], summary="Drift scores over time")
async def get_drift_history(model: ModelPath, sidecar: SidecarDep) -> Response:
    history, monitored = await _monitoring(sidecar).drift_history(model)
    if not history.points and not monitored:
        raise _unknown(model)
    return Response(await run_in_threadpool(history.model_dump_json), media_type="application/json")


@router.get(
    "/v1/models/{model}/distributions", dependencies=[ReadScope], summary="Confidence and margin now vs reference"
)
async def get_distributions(model: ModelPath, sidecar: SidecarDep) -> Response:
    view = await _monitoring(sidecar).distributions(model)
    if view.body is None:
        if not view.monitored:
            raise _unknown(model)
        raise Unavailable(
            f"the distributions of {model!r} are being computed by its monitor; try again", retry_after_s=5
        )
    return Response(view.body, media_type="application/json")
