"""Reading what the workers saw inside a model: layer-health reports, and an explanation's feature maps as a PNG.

No HTTP here; the routes are in :mod:`service.explanations_api`.
"""

from __future__ import annotations

from redis.asyncio import Redis

from common.errors import InvalidInput, NotFound
from sampler.explanation_records import ExplanationRecord
from sampler.layers import LayerHealthStore, ModelLayers


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
    maps = stored.to_array()
    summary = record.summary
    stats = next((s for s in record.detail.layers if s.name == layer), None)
    shape = "x".join(str(n) for n in stats.shape) if stats is not None else "?"
    title = f"{summary.model} {summary.request_id}: layer {layer} ({shape})"
    subtitle = (
        f"{len(stored.channels)} strongest channels by mean |activation| on this input (class {summary.predicted})"
    )
    try:
        return render_channel_grid(maps, stored.channels, title=title, subtitle=subtitle)
    except ValueError as error:
        raise InvalidInput(f"layer: the stored maps of {layer!r} cannot be drawn: {error}", field="layer") from None
