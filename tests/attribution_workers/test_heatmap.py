from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from attribution_workers.errors import AttributionError
from attribution_workers.heatmap import render_bar_chart, render_image_heatmap

NAMES = tuple(f"feature {index}" for index in range(30))


def _decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert np.asarray(image).shape == (image.height, image.width, 4)
    return image


@pytest.mark.parametrize(
    "attribution",
    [
        pytest.param(np.random.default_rng(0).normal(size=(8, 8)), id="signed"),
        pytest.param(np.zeros((8, 8)), id="all-zero"),
    ],
)
def test_image_heatmap_is_a_legible_png(attribution: NDArray[np.float64]) -> None:
    image = _decoded(render_image_heatmap(np.random.default_rng(1).random((8, 8)), attribution, title="digit 3"))

    assert image.format == "PNG"
    assert image.mode == "RGBA"
    assert image.size == (700, 340)


def test_bar_chart_shows_top_k_and_grows_with_it() -> None:
    values = np.random.default_rng(2).normal(size=30)

    short = _decoded(render_bar_chart(values, NAMES, title="top 5", top_k=5))
    tall = _decoded(render_bar_chart(values, NAMES, title="top 20", top_k=20))

    assert short.format == tall.format == "PNG"
    assert short.width == tall.width
    assert short.height < tall.height


@pytest.mark.parametrize(
    ("render", "message"),
    [
        pytest.param(lambda: render_image_heatmap(np.zeros(64), np.zeros(64), title="x"), "2-D image", id="flat"),
        pytest.param(lambda: render_image_heatmap(np.zeros((8, 8)), np.zeros((4, 4)), title="x"), "same", id="sizes"),
        pytest.param(lambda: render_bar_chart(np.zeros(3), NAMES, title="x"), "one value per", id="names"),
        pytest.param(lambda: render_bar_chart(np.zeros(30), NAMES, title="x", top_k=0), "top_k >= 1", id="top-k"),
    ],
)
def test_rendering_rejects_mismatched_data(render: Callable[[], bytes], message: str) -> None:
    with pytest.raises(AttributionError, match=message):
        render()


def test_concurrent_rendering_gives_identical_pictures() -> None:
    image, attribution = np.eye(8), np.arange(64.0).reshape(8, 8) - 32

    with ThreadPoolExecutor(max_workers=4) as pool:
        pictures = list(pool.map(lambda _: render_image_heatmap(image, attribution, title="same"), range(8)))

    assert len(set(pictures)) == 1
