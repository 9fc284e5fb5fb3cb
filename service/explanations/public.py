"""Reading stored explanations: query parsing, public shapes, heatmaps. No HTTP here."""

from __future__ import annotations

import base64
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ValidationError

from common.errors import InvalidInput, NotFound
from common.timestamps import NotFinite, NoUtcOffset, TimestampError, parse_timestamp
from monitors.cohorts import parse_slice
from sampler.explanation_records import (
    ExplanationQuery,
    ExplanationRecord,
    ExplanationSummary,
    Fidelity,
    MethodSettings,
    SanityFigure,
    WorkerPrediction,
)
from sampler.layers import LayerStats
from sampler.verdicts import Verdict


class AttributionPublic(BaseModel):
    shape: tuple[int, ...]
    values: list[Any]
    """Nested lists with ``shape``."""
    target: int
    convergence_delta: float | None = None
    fidelity: Fidelity | None = None
    seconds: float | None = None
    agreement: float | None = None
    """Mean Spearman correlation of this map's |values| with each other method's map."""
    verdict: Verdict | None = None
    """Whether to trust this map, from its sanity check, deletion test and agreement (null parts: not measured)."""


class ExplanationPublic(BaseModel):
    model: str
    model_version: str
    request_id: str
    status: str
    reasons: tuple[str, ...]
    predicted: int
    confidence: float
    cohort: dict[str, str]
    timestamp: float
    label: int | None
    methods: tuple[str, ...]
    attributions: dict[str, AttributionPublic]
    agreement: float | None = None
    sanity_similarity: dict[str, float] = {}
    """Latest randomisation check per method: similarity to a randomised model's map (high is bad)."""
    sanity_flagged: dict[str, bool] = {}
    """Whether that similarity reached the model's configured limit (the method ignores the model)."""
    sanity_samples: dict[str, int] = {}
    """How many inputs' pairs of maps that check averages."""
    sanity_conclusive: dict[str, bool] = {}
    """Whether that check rests on enough pairs of maps (the worker's ``sanity_min_pairs``) to judge maps."""
    sanity_spread: dict[str, float] = {}
    """Largest minus smallest similarity over that check's draws of random weights (methods with two or more)."""
    sanity_checked_at: dict[str, float] = {}
    """When that check ran (epoch seconds). A map's verdict used the check in force when it was explained
    (``explained_at``), which may be an earlier one."""
    error: str | None = None
    input: dict[str, Any] | None = None
    explained_at: float | None = None
    layers: list[LayerStats] = []
    settings: MethodSettings | None = None
    """The attribution settings the maps were made with (``null`` in records stored before it was kept)."""
    worker_prediction: WorkerPrediction | None = None
    """The attribution worker's own model's prediction on the input; ``matches: false`` means its model disagrees
    with the server's (version skew or other weights) and no map of the event is trusted."""
    """The inspected layers' outputs on this input; ``activations.png?layer=`` draws the stored maps."""


class ExplanationListPublic(BaseModel):
    """``GET /v1/explanations``: a page of summaries, newest first."""

    items: list[ExplanationSummary]
    next_cursor: str | None
    """Pass as ``cursor`` to continue; null when the scan reached the end of what matches."""
    examined: int
    """Index entries this request looked at."""
    complete: bool
    """False when the scan stopped at its bound before ``limit`` items were found: an empty or short page then
    does not mean that nothing more matches; ``next_cursor`` continues it."""


def parse_query(
    params: Mapping[str, str], *, models: Sequence[str], cohort_keys: Collection[str] = ()
) -> ExplanationQuery:
    """``ExplanationQuery`` from query parameters; 422 naming the parameter on a bad value. ``models``: those
    with stored explanations, the one taken when ``model`` is not given. ``cohort`` is read as every cohort
    parameter is (:func:`monitors.cohorts.parse_slice`, with ``cohort_keys`` telling a key that holds ``:``);
    ``all`` filters nothing."""
    values: dict[str, Any] = {
        name: params[name] for name in ("version", "reason", "predicted", "limit") if name in params
    }
    values["model"] = params.get("model") or (models[0] if len(models) == 1 else None)
    if values["model"] is None:
        why = (
            "no model has explanations yet"
            if not models
            else f"{len(models)} models have explanations ({', '.join(repr(m) for m in models[:5])}"
            + (", …)" if len(models) > 5 else ")")
        )
        raise InvalidInput(f"model: required: {why}", field="model")
    if "cohort" in params:
        values["cohort"] = parse_slice(params["cohort"], cohort_keys)
    for name in ("since", "until"):
        if name in params:
            values[name] = _time_param(name, params[name])
    if "cursor" in params:
        values["cursor"] = _decode_cursor(params["cursor"])
    try:
        return ExplanationQuery.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "query"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None


def encode_cursor(cursor: tuple[float, str] | None) -> str | None:
    if cursor is None:
        return None
    return base64.urlsafe_b64encode(orjson.dumps(cursor)).decode()


def _decode_cursor(text: str) -> tuple[float, str]:
    """(timestamp, request_id); 422 naming ``cursor`` for anything else: a time that is not a finite JSON number
    (``"1"`` and ``true`` included; Redis would refuse a non-finite score, which must not read as Redis being down)
    or an id that is not text."""
    try:
        timestamp, request_id = orjson.loads(base64.urlsafe_b64decode(text.encode()))
        number = isinstance(timestamp, int | float) and not isinstance(timestamp, bool)
        found = (float(timestamp), request_id) if number and isinstance(request_id, str) else None
    except (ValueError, TypeError, OverflowError):
        found = None
    if found is None or not math.isfinite(found[0]):
        raise InvalidInput("cursor: not a cursor returned by this API", field="cursor")
    return found


def _time_param(name: str, text: str) -> float:
    try:
        return parse_timestamp(text, epoch_text=True)
    except NoUtcOffset:
        raise InvalidInput(f"{name}: needs a UTC offset (RFC 3339)", field=name) from None
    except NotFinite:
        raise InvalidInput(f"{name}: must be finite", field=name) from None
    except TimestampError:
        raise InvalidInput(f"{name}: use epoch seconds or RFC 3339", field=name) from None


def to_public(record: ExplanationRecord, sanity: dict[str, SanityFigure]) -> ExplanationPublic:
    detail = record.detail
    attributions = {
        method: AttributionPublic(
            shape=stored.shape,
            values=stored.to_array().tolist(),
            target=stored.target,
            convergence_delta=stored.convergence_delta,
            fidelity=stored.fidelity,
            seconds=stored.seconds,
            agreement=stored.agreement,
            verdict=stored.verdict,
        )
        for method, stored in detail.attributions.items()
    }
    model_input = None
    if detail.input is not None:
        model_input = {"shape": detail.input.shape, "values": detail.input.decode().tolist()}
    return ExplanationPublic(
        **record.summary.model_dump(),
        attributions=attributions,
        agreement=detail.agreement,
        sanity_similarity={m: sanity[m].similarity for m in record.summary.methods if m in sanity},
        sanity_flagged={m: sanity[m].flagged for m in record.summary.methods if m in sanity},
        sanity_samples={m: sanity[m].samples for m in record.summary.methods if m in sanity},
        sanity_conclusive={m: sanity[m].conclusive for m in record.summary.methods if m in sanity},
        sanity_spread={
            m: spread
            for m in record.summary.methods
            if m in sanity and (spread := sanity[m].similarity_spread) is not None
        },
        sanity_checked_at={m: sanity[m].checked_at for m in record.summary.methods if m in sanity},
        error=detail.error,
        input=model_input,
        explained_at=detail.explained_at,
        layers=detail.layers,
        settings=detail.settings,
    )


_NOT_SIGNED = {
    "saliency": "saliency is unsigned, |gradient| of the class score: blue = the score is sensitive to that value "
    "(either way), white = insensitive",
    "gradcam": "Grad-CAM keeps positive evidence only: blue = raises the class score at the last convolution, "
    "white = no positive evidence there (not 'no effect')",
}
_BLANK = {
    "gradcam": "the map is 0 everywhere: no positive evidence for this class at the Grad-CAM layer (the class "
    "score does not rest on that layer's features here)",
}


def legend(method: str, values: npt.NDArray[Any]) -> str | None:
    """What a map's colours mean, when not the signed legend (``None``): an unsigned method's, or a blank map's."""
    name = method.split("@", 1)[0]
    if not np.any(values):
        return _BLANK.get(name, "the map is 0 everywhere: no input value moved the class score by this method")
    return _NOT_SIGNED.get(name)


def render_heatmap(record: ExplanationRecord, method: str, *, feature_names: list[str] | None) -> bytes:
    """PNG of one method's map: over the input for images, a signed bar chart for flat inputs.

    Blocking Pillow work: call it from a worker thread. 404 when there is no map to draw,
    422 naming ``method`` when the stored map cannot be drawn (it does not fit the stored input).
    """
    from service import images  # Pillow loads with the first picture, not with the sidecar

    stored = record.detail.attributions.get(method)
    if stored is None:
        available = ", ".join(record.detail.attributions) or "none yet"
        raise NotFound(f"method: no {method!r} map for this event (available: {available})", field="method")
    values = stored.to_array()
    if values.size == 0:
        raise NotFound(f"method: the {method!r} map of this event is empty: nothing to draw", field="method")
    summary = record.summary
    title = f"{summary.model} {summary.request_id}: {method}, class {stored.target}"
    image = record.detail.input.decode() if record.detail.input is not None else None
    flat = values.ndim == 1 or (values.ndim == 2 and values.shape[0] == 1)
    if not flat and image is not None and image.size != values.size:
        raise InvalidInput(
            f"method: the {method!r} map has shape {values.shape}, which does not fit the stored input of shape "
            f"{image.shape}",
            field="method",
        )
    meaning = legend(method, values)
    try:
        if flat:
            names = feature_names if feature_names and len(feature_names) == values.size else None
            return images.render_bar_chart(
                values.reshape(-1), names or [f"x{i}" for i in range(values.size)], title=title, legend=meaning
            )
        picture = _plane(image, values.shape), _plane(values, values.shape)
        if meaning is None:
            return images.render_image_heatmap(*picture, title=title)
        return images.render_image_heatmap(*picture, title=title, legend=meaning)
    except images.ImageDataError as error:
        raise InvalidInput(f"method: cannot draw the {method!r} map: {error}", field="method") from None


def _plane(array: npt.NDArray[Any] | None, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """A 2-D picture of a channel-first map or input (channels averaged); zeros when absent."""
    if array is None:
        return np.zeros(shape[-2:])
    data = np.asarray(array, dtype=np.float64).reshape(shape)
    plane: npt.NDArray[np.float64] = data.reshape(-1, *shape[-2:]).mean(axis=0)
    return plane
