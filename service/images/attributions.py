"""PNG pictures of attributions: an image with its signed map, or a signed bar chart of tabular features.

Signs keep one meaning in both pictures: blue is positive (the feature raises the explained
class's score), orange negative; a method whose map is not signed (saliency's |gradient|,
Grad-CAM's positive part) says so in the picture's legend instead. The map's palette is centred
at 0 and symmetric, so white always means "no attribution" and equal magnitudes look equally
strong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from service.images._canvas import (
    AXIS,
    BLUE,
    DIVERGING,
    GREY,
    GRID,
    INK,
    MUTED,
    VERMILION,
    Canvas,
    ImageDataError,
    NothingToDraw,
    colourise,
    nice_ticks,
    number,
    paste_panel,
)

PANEL_PX = 240
"""Side of each picture panel: an 8x8 input is drawn as 30-pixel blocks."""
_MARGIN = 20
_GAP = 28
_BAR_WIDTH = 720
_ROW = 24


SIGNED_LEGEND = "blue: raises the class score   orange: lowers it   white: no effect"
"""What the colours of a signed map mean; a method whose map is not signed passes its own ``legend``."""


Box = tuple[float, float, float, float]
"""(left, top, right, bottom) in pixels."""

_TOP = 76
"""Top of the panels, below the title and the panel captions."""
_BELOW = _TOP + PANEL_PX + 10
"""Top of the legend and of the data range, under the panels."""
_COLUMN_LEFT = _MARGIN + 3 * PANEL_PX + 2 * _GAP
"""Left edge of the colour bar's column (its min / max pointers); the bar itself starts 8 px to the right."""
_HEATMAP_WIDTH = _COLUMN_LEFT + 130
_COLUMN_GAP = 16
"""Blank pixels between the legend's right edge and the colour bar's column."""
_LEGEND_SIZE, _LEGEND_LINE = 12, 16
_RANGE_SIZE, _RANGE_LINE = 10, 14
_LEGEND_LINES = 4
"""Most lines of legend; a longer one is cut with an ellipsis on the last."""


@dataclass(frozen=True)
class HeatmapLayout:
    """Where the parts of an image heatmap below its panels go: the legend, wrapped within the panels' width, and
    the colour bar's data range, in the bar's column. The boxes are those of the text as drawn (Pillow's
    ``textbbox``), so that a test can check that they do not meet."""

    width: int
    height: int
    legend: tuple[str, ...]
    """The legend's lines."""
    legend_box: Box
    data_range: tuple[str, ...]
    """``data range`` and the map's min and max, one a line."""
    data_range_box: Box


def heatmap_layout(legend: str, values: ArrayLike) -> HeatmapLayout:
    """The layout :func:`render_image_heatmap` draws ``legend`` and the range of ``values`` with."""
    array = np.asarray(values, dtype=np.float64)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    measure = Canvas(1, 1)
    legend_width = _COLUMN_LEFT - _COLUMN_GAP - _MARGIN
    lines = _wrapped(measure, legend, legend_width, size=_LEGEND_SIZE)
    column_width = _HEATMAP_WIDTH - _MARGIN // 2 - _COLUMN_LEFT
    data_range = tuple(
        measure.fitted(text, column_width, size=_RANGE_SIZE)
        for text in ("data range", f"min {number(low)}", f"max {number(high)}")
    )
    legend_box = _lines_box(measure, lines, (_MARGIN, _BELOW), _LEGEND_SIZE, _LEGEND_LINE)
    range_box = _lines_box(measure, data_range, (_COLUMN_LEFT, _BELOW), _RANGE_SIZE, _RANGE_LINE)
    bottom = max(legend_box[3], range_box[3], _BELOW)
    return HeatmapLayout(_HEATMAP_WIDTH, round(bottom) + 14, lines, legend_box, data_range, range_box)


def _wrapped(canvas: Canvas, text: str, width: float, *, size: float) -> tuple[str, ...]:
    """``text`` broken between words into lines of at most ``width`` pixels (at most ``_LEGEND_LINES``; a word
    too long for a line, and the last line of a longer text, are cut with an ellipsis); a text that fits is kept
    whole, its spacing too."""
    if canvas.text_width(text, size=size) <= width:
        return (text,) if text else ()
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and canvas.text_width(joined, size=size) <= width:
            lines[-1] = joined
        else:
            lines.append(canvas.fitted(word, width, size=size))
    if len(lines) > _LEGEND_LINES:
        lines = [*lines[: _LEGEND_LINES - 1], canvas.fitted(" ".join(lines[_LEGEND_LINES - 1 :]), width, size=size)]
    return tuple(lines)


def _lines_box(canvas: Canvas, lines: Sequence[str], corner: tuple[float, float], size: float, step: float) -> Box:
    """The box of ``lines`` drawn from ``corner`` (their top left), one every ``step`` pixels."""
    boxes = [
        canvas.draw.textbbox((corner[0], corner[1] + index * step), line, font=canvas.font(size), anchor="la")
        for index, line in enumerate(lines)
    ]
    if not boxes:
        return (corner[0], corner[1], corner[0], corner[1])
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def render_image_heatmap(image: ArrayLike, attribution: ArrayLike, *, title: str, legend: str = SIGNED_LEGEND) -> bytes:
    """PNG of a 2-D ``image`` (grey), its same-shaped ``attribution`` and the map over the image.

    The map uses a diverging palette centred at 0 (colour bar with its range). Small inputs are
    enlarged in whole blocks so every pixel stays visible; large ones are shrunk to the panel. The
    legend is wrapped under the panels, clear of the colour bar's column (:func:`heatmap_layout`).
    """
    pixels = np.asarray(image, dtype=np.float64)
    values = np.asarray(attribution, dtype=np.float64)
    if pixels.ndim != 2 or pixels.shape != values.shape:
        raise ImageDataError(f"need a 2-D image and a map of the same shape, got {pixels.shape} and {values.shape}")
    if values.size == 0:
        raise NothingToDraw(f"the map is empty (shape {values.shape}): nothing to draw")
    if not np.isfinite(values).all():
        raise ImageDataError(f"attribution has {int((~np.isfinite(values)).sum())} non-finite values")
    limit = float(np.abs(values).max()) or 1.0
    grey = _grey(pixels)
    mapped = colourise(values, limit)
    opacity = (np.abs(values) / limit)[..., None] * 0.85
    overlay = np.rint(grey[..., None] * (1.0 - opacity) + mapped * opacity).astype(np.uint8)
    panels = [
        ("input", np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)),
        ("attribution", mapped),
        ("attribution over input", overlay),
    ]
    layout = heatmap_layout(legend, values)
    canvas = Canvas(layout.width, layout.height)
    canvas.text((_MARGIN, 18), canvas.fitted(title, layout.width - 2 * _MARGIN, size=17), size=17)
    for index, (caption, rgb) in enumerate(panels):
        left = _MARGIN + index * (PANEL_PX + _GAP)
        canvas.text((left + PANEL_PX / 2, _TOP - 10), caption, size=13, fill=MUTED, anchor="ms")
        paste_panel(canvas, rgb, left, _TOP, size_px=PANEL_PX)
    _colour_bar(canvas, _COLUMN_LEFT + 8, _TOP, values, limit)
    for index, line in enumerate(layout.legend):
        canvas.text((_MARGIN, _BELOW + index * _LEGEND_LINE), line, size=_LEGEND_SIZE, fill=MUTED)
    for index, line in enumerate(layout.data_range):
        canvas.text((_COLUMN_LEFT, _BELOW + index * _RANGE_LINE), line, size=_RANGE_SIZE, fill=MUTED)
    return canvas.png()


def render_bar_chart(
    values: ArrayLike, feature_names: Sequence[str], *, title: str, top_k: int = 10, legend: str | None = None
) -> bytes:
    """PNG of the ``top_k`` features by |value| as signed horizontal bars, largest at the top; ``legend`` replaces
    the signed legend for a method whose values are not signed."""
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1 or len(scores) != len(feature_names) or top_k < 1:
        raise ImageDataError(
            f"need one value per feature name and top_k >= 1, got {scores.shape}, {len(feature_names)} names, {top_k}"
        )
    if scores.size == 0:
        raise NothingToDraw("no feature values: nothing to draw")
    if not np.isfinite(scores).all():
        raise ImageDataError(f"attribution has {int((~np.isfinite(scores)).sum())} non-finite values")
    chosen = np.argsort(-np.abs(scores), kind="stable")[:top_k]
    shown = scores[chosen]
    names = [str(feature_names[index]) for index in chosen]
    top = 70
    canvas = Canvas(_BAR_WIDTH, top + _ROW * len(chosen) + 74)
    canvas.text((_MARGIN, 18), canvas.fitted(title, _BAR_WIDTH - 2 * _MARGIN, size=17), size=17)
    subtitle = f"top {len(chosen)} of {scores.size} features by |attribution|"
    canvas.text((_MARGIN, 44), subtitle, size=12, fill=MUTED)
    label_px = min(220.0, max(canvas.text_width(name, size=13) for name in names))
    plot_left = _MARGIN + label_px + 14
    low, high = min(0.0, float(shown.min())), max(0.0, float(shown.max()))
    if low == high:
        high = 1.0
    inner_left = plot_left + (58 if low < 0 else 4)
    inner_right = _BAR_WIDTH - _MARGIN - (58 if high > 0 else 4)

    def x_of(value: float) -> float:
        return inner_left + (value - low) / (high - low) * (inner_right - inner_left)

    bottom = top + _ROW * len(chosen)
    _bar_axis(canvas, x_of, (low, high), top, bottom)
    for row, (name, value) in enumerate(zip(names, shown, strict=True)):
        middle = top + _ROW * row + _ROW / 2
        canvas.text((plot_left - 14, middle), canvas.fitted(name, label_px, size=13), size=13, anchor="rm")
        start, end = sorted((x_of(0.0), x_of(float(value))))
        colour = BLUE if value >= 0 else VERMILION
        canvas.draw.rectangle([start, middle - 8, max(end, start + 1), middle + 8], fill=colour)
        label_x, anchor = (end + 5, "lm") if value >= 0 else (start - 5, "rm")
        canvas.text((label_x, middle), number(float(value), signed=True), size=11, fill=INK, anchor=anchor)
    canvas.draw.line([x_of(0.0), top - 4, x_of(0.0), bottom + 4], fill=AXIS, width=1)
    legend_y = bottom + 44
    if legend is not None:
        canvas.text((_MARGIN, legend_y), canvas.fitted(legend, _BAR_WIDTH - 2 * _MARGIN, size=12), size=12, fill=MUTED)
        return canvas.png()
    after = canvas.swatch((_MARGIN, legend_y), "raises the class score", fill=BLUE)
    canvas.swatch((after, legend_y), "lowers it", fill=VERMILION)
    return canvas.png()


def _grey(pixels: NDArray[np.float64]) -> NDArray[np.float64]:
    """The input scaled to 0..255 (a constant or non-finite input shows mid grey)."""
    finite = np.where(np.isfinite(pixels), pixels, np.nan)
    low, high = np.nanmin(finite, initial=np.inf), np.nanmax(finite, initial=-np.inf)
    if not np.isfinite(low) or not high > low:
        return np.full(pixels.shape, 128.0)
    scaled: NDArray[np.float64] = np.nan_to_num((finite - low) / (high - low) * 255.0, nan=128.0)
    return scaled


def _colour_bar(canvas: Canvas, left: int, top: int, values: NDArray[np.float64], limit: float) -> None:
    """Vertical palette strip, +limit at the top, with +limit / 0 / -limit labels and pointers at the data's min and
    max (their values are written under it, see :func:`heatmap_layout`)."""
    strip = DIVERGING[::-1][:, None, :].repeat(16, axis=1)
    bar = Image.fromarray(strip, mode="RGB").resize((16, PANEL_PX), Image.Resampling.BILINEAR)
    canvas.image.paste(bar, (left, top))
    canvas.draw.rectangle([left - 1, top - 1, left + 16, top + PANEL_PX], outline=GREY)
    canvas.text((left + 8, top - 10), "attribution", size=12, fill=MUTED, anchor="ms")
    for y, value in ((top, limit), (top + PANEL_PX / 2, 0.0), (top + PANEL_PX, -limit)):
        canvas.draw.line([left + 16, y, left + 21, y], fill=AXIS)
        canvas.text((left + 25, y), number(value, signed=True), size=11, fill=INK, anchor="lm")
    for value in (float(values.min()), float(values.max())):
        y = top + PANEL_PX / 2 - value / limit * PANEL_PX / 2
        canvas.draw.polygon([(left - 2, y), (left - 8, y - 4), (left - 8, y + 4)], fill=INK)


def _bar_axis(canvas: Canvas, x_of: Callable[[float], float], span: tuple[float, float], top: int, bottom: int) -> None:
    """Vertical grid lines, the axis line under the bars (all of ``span``), tick labels and the caption."""
    for tick in nice_ticks(*span):
        x = x_of(tick)
        canvas.draw.line([x, top - 4, x, bottom], fill=GRID)
        canvas.draw.line([x, bottom, x, bottom + 4], fill=AXIS)
        canvas.text((x, bottom + 7), number(tick), size=11, fill=MUTED, anchor="mt")
    left, right = x_of(span[0]), x_of(span[1])
    canvas.draw.line([left, bottom, right, bottom], fill=AXIS)
    canvas.text(((left + right) / 2, bottom + 24), "attribution", size=11, fill=MUTED, anchor="mt")
