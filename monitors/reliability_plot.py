"""PNG reliability diagram of a :class:`CalibrationReport` (matplotlib ``Figure`` on Agg, no pyplot)."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from monitors.calibration import CalibrationReport

# Okabe-Ito palette: distinguishable with the common colour-vision deficiencies.
_BLUE = "#0072B2"
_VERMILLION = "#D55E00"
_GREY = "#999999"


def render_reliability_png(report: CalibrationReport, *, title: str = "", width_px: int = 640, dpi: int = 100) -> bytes:
    """The reliability diagram (accuracy per confidence bin, with gaps to the diagonal) and bin counts as PNG."""
    figure = Figure(figsize=(width_px / dpi, width_px / dpi * 1.1), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    lefts = [b.lower for b in report.bins]
    widths = [b.upper - b.lower for b in report.bins]
    accuracy = [b.accuracy or 0.0 for b in report.bins]
    confidence = [b.mean_confidence or 0.0 for b in report.bins]
    gaps = [c - a for a, c in zip(accuracy, confidence, strict=True)]
    top.bar(lefts, accuracy, width=widths, align="edge", color=_BLUE, edgecolor="white", label="accuracy")
    top.bar(
        lefts,
        gaps,
        bottom=accuracy,
        width=widths,
        align="edge",
        color="none",
        edgecolor=_VERMILLION,
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color=_GREY, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(title or f"ECE {report.ece:.3f}  MCE {report.mce:.3f}  n={report.count}")
    top.legend(loc="upper left")
    bottom.bar(lefts, [b.count for b in report.bins], width=widths, align="edge", color=_GREY, edgecolor="white")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="events")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
