"""PNG of a layer's feature maps: a grid of channels on one shared colour scale, with its legend.

Non-negative maps (after a ReLU) use a sequential palette from 0 (viridis: dark purple to yellow,
readable with the common colour-vision deficiencies and in grey); maps with negative values use
the diverging palette of the attribution pictures, centred at 0. Every panel names its channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from service.images._canvas import (
    AXIS,
    DIVERGING,
    GREY,
    INK,
    MUTED,
    Canvas,
    ImageDataError,
    NothingToDraw,
    colourise,
    diverging_lut,
    number,
    paste_panel,
)

PANEL_PX = 112
_MARGIN = 20
_GAP = 14
_COLUMNS = 4
_LABEL = 20
_BAR_PX = 300
VIRIDIS = diverging_lut(((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)))
"""Sequential colour-blind-safe palette (matplotlib's viridis at five stops, interpolated)."""


def render_channel_grid(maps: ArrayLike, channels: Sequence[int], *, title: str, subtitle: str) -> bytes:
    """PNG of ``maps`` ``[k, H, W]``, panel ``i`` captioned with ``channels[i]``, and a colour bar."""
    values = np.asarray(maps, dtype=np.float64)
    if values.ndim != 3 or values.shape[0] != len(channels):
        raise ImageDataError(f"need maps [k, H, W] and k channel numbers, got {values.shape} and {len(channels)}")
    if values.size == 0:
        raise NothingToDraw(f"the maps are empty (shape {values.shape}): nothing to draw")
    if not np.isfinite(values).all():
        raise ImageDataError(f"the maps have {int((~np.isfinite(values)).sum())} non-finite values")
    signed = bool(values.min() < 0)
    high = float(np.abs(values).max()) or 1.0
    count = values.shape[0]
    columns = min(_COLUMNS, count)
    rows = math.ceil(count / columns)
    width = max(2 * _MARGIN + columns * PANEL_PX + (columns - 1) * _GAP, 2 * _MARGIN + _BAR_PX + 80)
    grid_top = 70
    grid_bottom = grid_top + rows * (PANEL_PX + _LABEL + _GAP)
    canvas = Canvas(width, grid_bottom + 96)
    canvas.text((_MARGIN, 18), canvas.fitted(title, width - 2 * _MARGIN, size=17), size=17)
    canvas.text((_MARGIN, 44), canvas.fitted(subtitle, width - 2 * _MARGIN, size=12), size=12, fill=MUTED)
    for index in range(count):
        left = _MARGIN + (index % columns) * (PANEL_PX + _GAP)
        top = grid_top + (index // columns) * (PANEL_PX + _LABEL + _GAP)
        canvas.text((left + PANEL_PX / 2, top + 12), f"channel {channels[index]}", size=12, fill=INK, anchor="ms")
        paste_panel(canvas, _colours(values[index], high, signed=signed), left, top + _LABEL, size_px=PANEL_PX)
    _legend(canvas, (_MARGIN, grid_bottom + 14), high, signed=signed, span=(float(values.min()), float(values.max())))
    return canvas.png()


def _colours(plane: NDArray[np.float64], high: float, *, signed: bool) -> NDArray[np.uint8]:
    if signed:
        return colourise(plane, high)
    index = np.rint(np.clip(plane / high, 0.0, 1.0) * (len(VIRIDIS) - 1)).astype(np.intp)
    colours: NDArray[np.uint8] = VIRIDIS[index]
    return colours


def _legend(canvas: Canvas, corner: tuple[int, int], high: float, *, signed: bool, span: tuple[float, float]) -> None:
    """Horizontal colour bar with its end and middle values, the data range and how to read it."""
    left, top = corner
    palette = DIVERGING if signed else VIRIDIS
    strip = palette[None, :, :].repeat(14, axis=0)
    canvas.image.paste(Image.fromarray(strip, mode="RGB").resize((_BAR_PX, 14), Image.Resampling.BILINEAR), corner)
    canvas.draw.rectangle([left - 1, top - 1, left + _BAR_PX, top + 14], outline=GREY)
    low = -high if signed else 0.0
    for fraction, value in ((0.0, low), (0.5, (low + high) / 2), (1.0, high)):
        x = left + fraction * _BAR_PX
        canvas.draw.line([x, top + 14, x, top + 19], fill=AXIS)
        canvas.text((x, top + 22), number(value, signed=signed), size=11, fill=INK, anchor="mt")
    canvas.text((left + _BAR_PX + 12, top + 7), "activation", size=12, fill=MUTED, anchor="lm")
    note = f"data range {number(span[0])} .. {number(span[1])}; one colour scale for every channel"
    canvas.text((left, top + 50), note, size=11, fill=MUTED, anchor="lm")
