"""PNG pictures of attributions: an image beside its heatmap, or a signed bar chart of tabular features.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas, never pyplot, so no
global figure state is touched; one lock serialises rendering because matplotlib does not
promise thread safety. Colours are colour-blind safe: ColorBrewer ``PuOr`` centred at zero
for signed maps, Okabe-Ito blue and vermilion for bar signs.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from attribution_workers.errors import AttributionError

_POSITIVE = "#0072B2"
_NEGATIVE = "#D55E00"
_DPI = 100
_RENDER_LOCK = threading.Lock()


def render_image_heatmap(image: ArrayLike, attribution: ArrayLike, *, title: str) -> bytes:
    """PNG of a 2-D ``image`` (grey) beside its same-shaped ``attribution`` (``PuOr``, 0 at the centre, colourbar).

    Pixels are drawn as blocks, so an 8x8 input fills the panel legibly.
    """
    pixels = np.asarray(image, dtype=np.float64)
    values = np.asarray(attribution, dtype=np.float64)
    if pixels.ndim != 2 or pixels.shape != values.shape:
        raise AttributionError(f"need a 2-D image and a map of the same shape, got {pixels.shape} and {values.shape}")
    limit = float(np.abs(values).max()) or 1.0
    figure = Figure(figsize=(7.0, 3.4), dpi=_DPI, layout="constrained")
    figure.suptitle(title)
    left, right = figure.subplots(1, 2)
    left.imshow(pixels, cmap="gray", interpolation="nearest")
    left.set_title("input")
    shown = right.imshow(values, cmap="PuOr", norm=TwoSlopeNorm(0.0, -limit, limit), interpolation="nearest")
    right.set_title("attribution")
    figure.colorbar(shown, ax=right, label="attribution (0 = none)")
    for axes in (left, right):
        axes.set_xticks([])
        axes.set_yticks([])
    return _png(figure)


def render_bar_chart(values: ArrayLike, feature_names: Sequence[str], *, title: str, top_k: int = 10) -> bytes:
    """PNG of the ``top_k`` features by |value| as signed horizontal bars, largest at the top."""
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1 or len(scores) != len(feature_names) or top_k < 1:
        raise AttributionError(
            f"need one value per feature name and top_k >= 1, got {scores.shape}, {len(feature_names)} names, {top_k}"
        )
    chosen = np.argsort(-np.abs(scores), kind="stable")[:top_k][::-1]
    shown = scores[chosen]
    figure = Figure(figsize=(7.0, 0.8 + 0.35 * len(chosen)), dpi=_DPI, layout="constrained")
    axes = figure.subplots()
    axes.barh(np.arange(len(chosen)), shown, color=[_POSITIVE if value >= 0 else _NEGATIVE for value in shown])
    axes.set_yticks(np.arange(len(chosen)), [feature_names[index] for index in chosen])
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlabel(f"attribution (blue raises, orange lowers the score; top {len(chosen)} by size)")
    axes.set_title(title)
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    with _RENDER_LOCK:
        figure.savefig(buffer, format="png")
    return buffer.getvalue()
