"""What a heatmap's legend says: the signed legend only for signed maps; unsigned methods and blank maps say what
their colours mean."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from service.explanations.public import legend
from service.images import render_bar_chart, render_image_heatmap

SIGNED = np.array([[0.5, -0.2], [0.0, 0.1]])


@pytest.mark.parametrize(
    ("method", "values", "says"),
    [
        pytest.param("saliency", np.abs(SIGNED), "unsigned", id="saliency-is-unsigned"),
        pytest.param("saliency@label", np.abs(SIGNED), "unsigned", id="towards-the-label-too"),
        pytest.param("gradcam", np.maximum(SIGNED, 0), "positive evidence only", id="gradcam-positive-only"),
        pytest.param("gradcam", np.zeros((2, 2)), "no positive evidence for this class", id="blank-gradcam"),
        pytest.param("occlusion", np.zeros((2, 2)), "0 everywhere", id="blank-signed-map"),
    ],
)
def test_a_map_that_is_not_signed_or_is_blank_says_what_its_colours_mean(
    method: str, values: npt.NDArray[np.float64], says: str
) -> None:
    meaning = legend(method, values)
    assert meaning is not None and says in meaning


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "gradient_shap", "lime", "kernel_shap"])
def test_signed_methods_keep_the_signed_legend(method: str) -> None:
    assert legend(method, SIGNED) is None


def _pixels(png: bytes) -> npt.NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def test_the_pictures_draw_the_legend_they_are_given() -> None:
    image = np.random.default_rng(0).random((8, 8))
    values = np.abs(np.random.default_rng(1).normal(size=(8, 8)))
    signed, unsigned = (
        _pixels(render_image_heatmap(image, values, title="t")),
        _pixels(render_image_heatmap(image, values, title="t", legend="saliency is unsigned")),
    )
    assert signed.shape == unsigned.shape and (signed != unsigned).any()
    bars = [0.3, 0.2, 0.1]
    assert (
        _pixels(render_bar_chart(bars, ["a", "b", "c"], title="t"))
        != _pixels(render_bar_chart(bars, ["a", "b", "c"], title="t", legend="saliency is unsigned"))
    ).any()
