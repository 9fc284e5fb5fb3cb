"""PNG reliability diagram of a :class:`monitors.calibration.CalibrationReport`.

Top panel: accuracy per confidence bin as bars, the gap to the bin's mean confidence shaded,
and the diagonal of perfect calibration. Bottom panel: events per bin, each count printed.
The header states n, ECE, MCE and the Brier score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.images._canvas import (
    AXIS,
    BLUE,
    GREY,
    GRID,
    INK,
    MUTED,
    VERMILION,
    WHITE,
    Canvas,
    ImageDataError,
    NothingToDraw,
    count_label,
    tint,
)

if TYPE_CHECKING:
    from monitors.calibration import CalibrationReport, ReliabilityBin

_TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class _Frame:
    """Pixel geometry of the two panels sharing the confidence axis."""

    def __init__(self, width: int, scale: float) -> None:
        self.scale = scale
        self.left = round(20 + 52 * scale)
        self.right = width - round(24 * scale)
        self.top = round(112 * scale)
        side = self.right - self.left
        self.bottom = self.top + side
        self.strip_top = self.bottom + round(16 * scale)
        self.strip_bottom = self.strip_top + max(round(side * 0.22), round(60 * scale))
        self.height = self.strip_bottom + round(58 * scale)

    def x(self, confidence: float) -> float:
        return self.left + confidence * (self.right - self.left)

    def y(self, accuracy: float) -> float:
        return self.bottom - accuracy * (self.bottom - self.top)


def render_reliability_png(report: CalibrationReport, *, title: str = "", width_px: int = 640, dpi: int = 100) -> bytes:
    """The reliability diagram (accuracy per confidence bin, gaps to the diagonal) and bin counts as PNG.

    ``dpi`` scales text and spacing as in a figure of ``width_px`` pixels at that resolution.
    """
    if not report.bins:
        raise NothingToDraw("the calibration report has no bins: nothing to draw")
    if width_px < 240 or dpi < 50:
        raise ImageDataError(f"need width_px >= 240 and dpi >= 50, got {width_px} and {dpi}")
    scale = dpi / 100
    frame = _Frame(width_px, scale)
    canvas = Canvas(width_px, frame.height, scale=scale)
    _header(canvas, report, title or "Reliability diagram", width_px)
    _accuracy_panel(canvas, frame, report.bins)
    _count_panel(canvas, frame, report.bins)
    return canvas.png()


def _header(canvas: Canvas, report: CalibrationReport, title: str, width: int) -> None:
    s = canvas.scale
    canvas.text((20, 18 * s), canvas.fitted(title, width - 40, size=17), size=17)
    if report.brier_score is None:
        brier = "Brier n/a (no probability vectors)"
    elif report.brier_count == report.count:
        brier = f"Brier {report.brier_score:.3f}"
    else:
        brier = f"Brier {report.brier_score:.3f} (over {report.brier_count})"
    stats = f"n = {report.count} labelled events   ECE {report.ece:.3f}   MCE {report.mce:.3f}   {brier}"
    canvas.text((20, 46 * s), canvas.fitted(stats, width - 40, size=12.5), size=12.5, fill=INK)
    legend_y = 72 * s
    after = canvas.swatch((20, legend_y), "accuracy", fill=BLUE)
    after = canvas.swatch((after, legend_y), "gap to mean confidence", fill=WHITE, outline=VERMILION, hatched=True)
    middle = legend_y + 5.5 * s
    canvas.dashed_line((after, middle), (after + 24 * s, middle), fill=AXIS, width=max(1, round(1.5 * s)), dash=5 * s)
    canvas.text((after + 30 * s, middle), "perfect calibration", size=12, anchor="lm")


def _accuracy_panel(canvas: Canvas, frame: _Frame, bins: tuple[ReliabilityBin, ...]) -> None:
    s = frame.scale
    for tick in _TICKS:
        canvas.draw.line([frame.left, frame.y(tick), frame.right, frame.y(tick)], fill=GRID)
        canvas.draw.line([frame.x(tick), frame.top, frame.x(tick), frame.bottom], fill=GRID)
        canvas.draw.line([frame.left - 4 * s, frame.y(tick), frame.left, frame.y(tick)], fill=AXIS)
        canvas.text((frame.left - 7 * s, frame.y(tick)), f"{tick:g}", size=11, fill=MUTED, anchor="rm")
    for reliability_bin in bins:
        if reliability_bin.accuracy is None or reliability_bin.mean_confidence is None:
            continue
        x0, x1 = frame.x(reliability_bin.lower) + 1, frame.x(reliability_bin.upper) - 1
        accuracy_y = frame.y(reliability_bin.accuracy)
        confidence_y = frame.y(reliability_bin.mean_confidence)
        canvas.draw.rectangle([x0, accuracy_y, x1, frame.bottom], fill=BLUE)
        upper, lower = sorted((accuracy_y, confidence_y))
        if lower - upper >= 1:
            canvas.hatch((x0, upper, x1 + 1, lower + 1), VERMILION)
            canvas.draw.rectangle([x0, upper, x1, lower], outline=VERMILION)
        canvas.draw.line([x0, confidence_y, x1, confidence_y], fill=VERMILION, width=max(2, round(2 * s)))
    canvas.dashed_line(
        (frame.x(0), frame.y(0)), (frame.x(1), frame.y(1)), fill=AXIS, width=max(1, round(1.5 * s)), dash=7 * s
    )
    canvas.draw.rectangle([frame.left, frame.top, frame.right, frame.bottom], outline=AXIS)
    canvas.vertical_text((28 * s, (frame.top + frame.bottom) / 2), "accuracy (share correct)", size=12)


def _count_panel(canvas: Canvas, frame: _Frame, bins: tuple[ReliabilityBin, ...]) -> None:
    s = frame.scale
    top, bottom = frame.strip_top, frame.strip_bottom
    most = max((b.count for b in bins), default=0) or 1
    room = bottom - top - 16 * s
    for reliability_bin in bins:
        x0, x1 = frame.x(reliability_bin.lower) + 1, frame.x(reliability_bin.upper) - 1
        bar_top = bottom - room * reliability_bin.count / most
        if reliability_bin.count:
            canvas.draw.rectangle([x0, bar_top, x1, bottom], fill=tint(GREY, 0.25))
        label = count_label(reliability_bin.count)
        if canvas.text_width(label, size=10) <= x1 - x0 + 2:
            colour = INK if reliability_bin.count else GREY
            canvas.text(((x0 + x1) / 2, bar_top - 2 * s), label, size=10, fill=colour, anchor="md")
    canvas.draw.rectangle([frame.left, top, frame.right, bottom], outline=AXIS)
    for tick in _TICKS:
        x = frame.x(tick)
        canvas.draw.line([x, bottom, x, bottom + 4 * s], fill=AXIS)
        canvas.text((x, bottom + 7 * s), f"{tick:g}", size=11, fill=MUTED, anchor="mt")
    canvas.vertical_text((28 * s, (top + bottom) / 2), "events", size=12)
    caption = "confidence (top-1 probability), one bar per bin"
    canvas.text(((frame.left + frame.right) / 2, bottom + 28 * s), caption, size=12, fill=INK, anchor="mt")
