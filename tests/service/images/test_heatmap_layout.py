"""The image heatmap's text under its panels: the legend (wrapped within the panels' width) and the colour bar's
data range (in the bar's column) never meet, whatever the method's legend and the map's range."""

from __future__ import annotations

import io

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from service.explanations.public import legend
from service.images import render_image_heatmap
from service.images.attributions import SIGNED_LEGEND, HeatmapLayout, heatmap_layout

LONG_NAME = "a_method_with_an_unusually_long_registered_name_" * 3
LEGENDS = [
    pytest.param(SIGNED_LEGEND, id="signed"),
    pytest.param(legend("saliency", np.ones((2, 2))), id="saliency"),
    pytest.param(legend("gradcam", np.ones((2, 2))), id="gradcam"),
    pytest.param(legend("gradcam", np.zeros((2, 2))), id="blank-gradcam"),
    pytest.param(legend("lime", np.zeros((2, 2))), id="blank-map"),
    pytest.param(f"{LONG_NAME}: " + "blue = raises the class score, white = none; " * 12, id="long-name-and-legend"),
]
RANGES = [
    pytest.param(np.zeros((8, 8)), id="all-zero"),
    pytest.param(np.linspace(4.91e-7, 2.25e-5, 64).reshape(8, 8), id="tiny-positive"),
    pytest.param(np.linspace(-1.234e-10, -9.876e-11, 64).reshape(8, 8), id="tiny-negative"),
    pytest.param(np.linspace(-123456789.0, 987654321.0, 64).reshape(8, 8), id="huge"),
]


def _apart(first: tuple[float, ...], second: tuple[float, ...], gap: float) -> bool:
    """Boxes (left, top, right, bottom) at least ``gap`` pixels apart on one axis."""
    left, right = first if first[0] <= second[0] else second, second if first[0] <= second[0] else first
    upper, lower = first if first[1] <= second[1] else second, second if first[1] <= second[1] else first
    return left[2] + gap <= right[0] or upper[3] + gap <= lower[1]


def _inside(box: tuple[float, ...], layout: HeatmapLayout) -> bool:
    return 0 <= box[0] <= box[2] <= layout.width and 0 <= box[1] <= box[3] <= layout.height


@pytest.mark.parametrize("values", RANGES)
@pytest.mark.parametrize("text", LEGENDS)
def test_the_legend_and_the_data_range_do_not_meet(text: str, values: NDArray[np.float64]) -> None:
    layout = heatmap_layout(text, values)

    assert _apart(layout.legend_box, layout.data_range_box, gap=8), layout
    assert _inside(layout.legend_box, layout) and _inside(layout.data_range_box, layout), layout
    assert " ".join(layout.legend)[:40] == text[:40], "the legend is drawn (a word too long for a line cut)"
    assert layout.data_range[0] == "data range" and all(not line.endswith("…") for line in layout.data_range)


@pytest.mark.parametrize("values", RANGES)
@pytest.mark.parametrize("text", LEGENDS)
def test_the_picture_leaves_a_blank_strip_between_legend_and_colour_bar_column(
    text: str, values: NDArray[np.float64]
) -> None:
    """On the pixels themselves: below the panels, a strip 8 px wide just left of the data range is blank from
    there to the bottom (an overrunning legend, as drawn before, crossed it), and nothing is drawn outside the two
    boxes."""
    layout = heatmap_layout(text, values)
    image = np.random.default_rng(0).random(values.shape)
    picture = Image.open(io.BytesIO(render_image_heatmap(image, values, title="digits r1: x", legend=text)))
    ink = np.asarray(picture.convert("L")) < 250
    assert ink.shape == (layout.height, layout.width)
    top = int(min(layout.legend_box[1], layout.data_range_box[1]))
    column = int(layout.data_range_box[0])
    below = ink[top:, :]

    assert not below[:, column - 8 : column].any(), "text crosses into the colour bar's column"
    outside = below.copy()
    for left, upper, right, lower in (layout.legend_box, layout.data_range_box):
        outside[int(upper) - top : int(np.ceil(lower)) - top + 1, int(left) : int(np.ceil(right)) + 1] = False
    assert not outside.any(), "text drawn where the layout does not place it"
    assert below[:, :column].any() and below[:, column:].any(), "both the legend and the data range are drawn"


def test_a_legend_longer_than_a_line_is_wrapped_not_cut() -> None:
    text = legend("gradcam", np.ones((2, 2)))
    assert text is not None
    layout = heatmap_layout(text, np.ones((2, 2)))

    assert len(layout.legend) == 2 and " ".join(layout.legend) == text, layout.legend
