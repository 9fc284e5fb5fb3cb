"""Drawing primitives shared by the renderers: a Pillow canvas with text helpers, colours, ticks.

Everything is drawn with Pillow's built-in font (``ImageFont.load_default(size)``, Pillow >= 10.1),
so no font file is looked up on the host. Fonts are loaded per canvas (a tenth of a millisecond),
so canvases share no state and threads can render at once.
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from common.errors import InvalidInput, NotFound

Colour = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
BLUE: Colour = (0, 114, 178)
VERMILION: Colour = (213, 94, 0)
GREY: Colour = (153, 153, 153)
INK: Colour = (34, 34, 34)
MUTED: Colour = (96, 96, 96)
AXIS: Colour = (68, 68, 68)
GRID: Colour = (229, 229, 229)
WHITE: Colour = (255, 255, 255)

# Diverging orange - near-white - blue (ColorBrewer PuOr's orange arm, RdBu's blue arm): negative
# values orange, positive blue, as the bar chart's signs; safe for red-green colour blindness.
_DIVERGING_ANCHORS: tuple[Colour, ...] = (
    (179, 88, 6),
    (241, 163, 64),
    (254, 224, 182),
    (247, 247, 247),
    (209, 229, 240),
    (103, 169, 207),
    (33, 102, 172),
)


class ImageDataError(InvalidInput, ValueError):
    """The data cannot be drawn (wrong shape, mismatched lengths, non-finite values): a 422 at a route."""


class NothingToDraw(NotFound):
    """The data is empty (no values, no bins): a 404 at a route."""


def diverging_lut(anchors: tuple[Colour, ...] = _DIVERGING_ANCHORS, size: int = 256) -> NDArray[np.uint8]:
    """``(size, 3)`` RGB lookup table interpolated linearly between evenly spaced anchor colours."""
    stops = np.linspace(0.0, 1.0, len(anchors))
    points = np.linspace(0.0, 1.0, size)
    rgb = np.asarray(anchors, dtype=np.float64)
    table = np.stack([np.interp(points, stops, rgb[:, channel]) for channel in range(3)], axis=1)
    lut: NDArray[np.uint8] = np.rint(table).astype(np.uint8)
    return lut


DIVERGING = diverging_lut()


def colourise(values: NDArray[np.float64], limit: float) -> NDArray[np.uint8]:
    """RGB of ``values`` on the diverging palette, ``-limit`` orange, 0 white, ``+limit`` blue."""
    position = (np.clip(values / limit, -1.0, 1.0) + 1.0) / 2.0
    index = np.rint(position * (len(DIVERGING) - 1)).astype(np.intp)
    colours: NDArray[np.uint8] = DIVERGING[index]
    return colours


def tint(colour: Colour, amount: float) -> Colour:
    """``colour`` mixed with white: ``amount`` 0 is the colour, 1 is white."""
    r, g, b = (round(c + (255 - c) * amount) for c in colour)
    return r, g, b


def nice_ticks(low: float, high: float, *, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering ``[low, high]`` inside it."""
    if not high > low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(k * step, 12) + 0.0 for k in range(first, last + 1)]


def number(value: float, *, signed: bool = False) -> str:
    """Short label of a value: three significant digits, ASCII minus (the default font lacks U+2212)."""
    if value == 0:
        return "0"
    text = f"{value:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return f"+{text}" if signed and value > 0 else text


def count_label(count: int) -> str:
    """``987``, ``1.2k``, ``35k``, ``1.2M``: a bin count short enough for a narrow bar."""
    for divisor, suffix in ((1_000_000, "M"), (1_000, "k")):
        if count >= divisor:
            scaled = count / divisor
            return f"{scaled:.1f}{suffix}" if scaled < 10 else f"{scaled:.0f}{suffix}"
    return str(count)


class Canvas:
    """An opaque white RGBA picture with text helpers; ``scale`` multiplies every font size."""

    def __init__(self, width: int, height: int, *, scale: float = 1.0) -> None:
        self.image = Image.new("RGBA", (width, height), (*WHITE, 255))
        self.draw = ImageDraw.Draw(self.image)
        self.scale = scale
        self._fonts: dict[int, Font] = {}

    def font(self, size: float) -> Font:
        pixels = max(6, round(size * self.scale))
        if pixels not in self._fonts:
            self._fonts[pixels] = ImageFont.load_default(pixels)
        return self._fonts[pixels]

    def text(
        self, xy: tuple[float, float], text: str, *, size: float = 12, fill: Colour = INK, anchor: str = "la"
    ) -> None:
        self.draw.text(xy, text, fill=fill, font=self.font(size), anchor=anchor)

    def text_width(self, text: str, *, size: float = 12) -> float:
        return self.draw.textlength(text, font=self.font(size))

    def fitted(self, text: str, width: float, *, size: float = 12) -> str:
        """``text``, cut with an ellipsis to fit ``width`` pixels."""
        if self.text_width(text, size=size) <= width:
            return text
        while text and self.text_width(text + "…", size=size) > width:
            text = text[:-1]
        return text + "…"

    def vertical_text(self, centre: tuple[float, float], text: str, *, size: float = 12, fill: Colour = INK) -> None:
        """``text`` read bottom to top, centred on ``centre`` (an axis label)."""
        font = self.font(size)
        left, top, right, bottom = font.getbbox(text)
        strip = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
        ImageDraw.Draw(strip).text((1 - left, 1 - top), text, fill=255, font=font)
        turned = strip.rotate(90, expand=True)
        corner = (round(centre[0] - turned.width / 2), round(centre[1] - turned.height / 2))
        self.image.paste(Image.new("RGBA", turned.size, (*fill, 255)), corner, turned)

    def dashed_line(
        self, start: tuple[float, float], end: tuple[float, float], *, fill: Colour, width: int = 1, dash: float = 6
    ) -> None:
        length = math.dist(start, end)
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            a, b = k / steps, min((k + 1) / steps, 1.0)
            self.draw.line([_between(start, end, a), _between(start, end, b)], fill=fill, width=width)

    def swatch(
        self, xy: tuple[float, float], label: str, *, fill: Colour, outline: Colour | None = None, hatched: bool = False
    ) -> float:
        """A legend entry (square then label) at ``xy`` (top left); returns the x after it."""
        x, y = xy
        side = round(11 * self.scale)
        self.draw.rectangle([x, y, x + side, y + side], fill=fill, outline=outline or fill)
        if hatched:
            self.hatch((x, y, x + side + 1, y + side + 1), outline or INK, spacing=4)
            self.draw.rectangle([x, y, x + side, y + side], outline=outline or fill)
        self.text((x + side + 5, y + side / 2), label, size=12, fill=INK, anchor="lm")
        return x + side + 5 + self.text_width(label, size=12) + 16 * self.scale

    def hatch(self, box: tuple[float, float, float, float], colour: Colour, *, spacing: float = 7) -> None:
        """Diagonal ``colour`` lines over ``box`` (left, top, right, bottom), keeping what is beneath visible."""
        left, top, right, bottom = (round(v) for v in box)
        if right <= left or bottom <= top:
            return
        width, height = right - left, bottom - top
        layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        pen = ImageDraw.Draw(layer)
        step = max(3, round(spacing * self.scale))
        for offset in range(-height, width, step):
            pen.line([(offset, height), (offset + height, 0)], fill=(*colour, 255), width=max(1, round(self.scale)))
        self.image.alpha_composite(layer, dest=(left, top))

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


def _between(start: tuple[float, float], end: tuple[float, float], fraction: float) -> tuple[float, float]:
    return start[0] + (end[0] - start[0]) * fraction, start[1] + (end[1] - start[1]) * fraction


def paste_panel(canvas: Canvas, rgb: NDArray[np.uint8], left: int, top: int, *, size_px: int) -> None:
    """``rgb`` fitted into a ``size_px`` square at (left, top) with a grey frame: whole-block enlargement when
    it fits, so every element stays visible; box-filtered reduction otherwise."""
    height, width = rgb.shape[:2]
    longest = max(height, width)
    if longest <= size_px:
        block = size_px // longest
        picture = Image.fromarray(np.repeat(np.repeat(rgb, block, axis=0), block, axis=1), mode="RGB")
    else:
        size = (max(1, round(width * size_px / longest)), max(1, round(height * size_px / longest)))
        picture = Image.fromarray(rgb, mode="RGB").resize(size, Image.Resampling.BOX)
    x = left + (size_px - picture.width) // 2
    y = top + (size_px - picture.height) // 2
    canvas.image.paste(picture, (x, y))
    canvas.draw.rectangle([x - 1, y - 1, x + picture.width, y + picture.height], outline=GREY)
