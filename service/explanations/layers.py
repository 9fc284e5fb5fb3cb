"""Reading what the workers saw inside a model: layer-health reports, and an explanation's feature maps as a PNG.

No HTTP here; the routes are in :mod:`service.routes.explanations`.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

from common.errors import InvalidInput, NotFound
from sampler.explanation_records import ExplanationRecord
from sampler.layers import FeatureMaps, LayerHealthStore, ModelLayers


async def model_layers(redis: Redis, model: str) -> ModelLayers:
    """Every fresh worker report of ``model``; 404 when no worker inspected it lately (503 when Redis fails)."""
    reports = await LayerHealthStore(redis).reports(model)
    if not reports:
        raise NotFound(
            f"model: no worker has inspected {model!r} lately (no explanations, or inspection is off for it)",
            field="model",
        )
    return ModelLayers(model=model, reports=reports)


def render_activations(record: ExplanationRecord, layer: str) -> bytes:
    """PNG channel grid of the stored feature maps of ``layer``; 404 naming ``layer`` when there are none.

    Blocking Pillow work: call it from a worker thread.
    """
    from service.images.activations import render_channel_grid  # Pillow loads with the first picture

    stored = record.detail.feature_maps.get(layer)
    if stored is None:
        available = ", ".join(sorted(record.detail.feature_maps)) or "none for this event"
        raise NotFound(f"layer: no feature maps of {layer!r} stored (layers with maps: {available})", field="layer")
    title, subtitle = map_captions(record, layer, stored)
    maps = stored.to_array()  # a stored array that does not decode is an unreadable record, as for heatmaps
    try:
        return render_channel_grid(maps, stored.channels, title=title, subtitle=subtitle)
    except ValueError as error:
        raise InvalidInput(f"layer: the stored maps of {layer!r} cannot be drawn: {error}", field="layer") from None


def map_captions(record: ExplanationRecord, layer: str, stored: FeatureMaps) -> tuple[str, str]:
    """Title and subtitle of the maps' picture. The title gives the layer's output shape and, for maps the worker
    averaged down (a side above 64), the shape they were stored at; the subtitle begins with the block size."""
    summary = record.summary
    stats = next((s for s in record.detail.layers if s.name == layer), None)
    strongest = (
        f"{len(stored.channels)} strongest channels by mean |activation| on this input (class {summary.predicted})"
    )
    full = stats.shape[-2:] if stats is not None and len(stats.shape) >= 2 else None
    kept = stored.shape[-2:]
    if stats is None or full is None:
        return f"{summary.model} {summary.request_id}: layer {layer} (maps {_dims(kept)})", strongest
    head = f"{summary.model} {summary.request_id}: layer {layer} ({_dims(stats.shape)}"
    if tuple(kept) == tuple(full):
        return f"{head})", strongest
    factor = math.ceil(max(full) / max(max(kept), 1))
    return f"{head}, stored at {_dims(kept)})", f"averaged over {factor}×{factor} blocks; {strongest}"


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)
