"""The sidecar's PNGs: attribution maps, bar charts and reliability diagrams drawn with Pillow."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from common.errors import InvalidInput, NotFound
from monitors.calibration import CalibrationReport, compute_calibration
from sampler.contract import InputTensor
from sampler.explanation_records import ExplanationDetail, ExplanationRecord, ExplanationSummary, StoredAttribution
from service.explanations.public import render_heatmap
from service.images import ImageDataError, NothingToDraw, render_bar_chart, render_image_heatmap, render_reliability_png
from service.images._canvas import BLUE, VERMILION, nice_ticks
from service.images.attributions import PANEL_PX

NAMES = tuple(f"feature {index}" for index in range(30))
HAND_REPORT = compute_calibration(
    confidence=[0.95, 0.95, 0.62, 0.62, 0.30, 0.10], predicted=[0, 0, 1, 1, 2, 3], labels=[0, 1, 1, 1, 0, 0]
)
ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("matplotlib", "torch", "captum", "alibi_detect", "sklearn", "attribution_workers")


def _decoded(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert np.asarray(image).shape == (image.height, image.width, 4)
    return image


def _has_colour(image: Image.Image, colour: tuple[int, int, int], *, tolerance: int = 40, at_least: int = 50) -> bool:
    """Whether ``image`` has ``at_least`` pixels within ``tolerance`` (per channel) of ``colour``."""
    rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    close = np.all(np.abs(rgb - np.asarray(colour, dtype=np.int16)) <= tolerance, axis=2)
    return int(close.sum()) >= at_least


@pytest.mark.parametrize(
    "attribution",
    [
        pytest.param(np.random.default_rng(0).normal(size=(8, 8)), id="signed"),
        pytest.param(np.zeros((8, 8)), id="all-zero"),
        pytest.param(np.random.default_rng(0).random((28, 28)), id="28x28-positive"),
    ],
)
def test_image_heatmap_is_a_legible_png(attribution: NDArray[np.float64]) -> None:
    image = np.random.default_rng(1).random(attribution.shape)
    picture = _decoded(render_image_heatmap(image, attribution, title="digits r1: saliency, class 3"))

    assert 700 <= picture.width <= 1200 and 300 <= picture.height <= 500


def test_signed_map_shows_both_diverging_colours() -> None:
    signed = np.linspace(-1.0, 1.0, 64).reshape(8, 8)
    picture = _decoded(render_image_heatmap(np.eye(8), signed, title="signed"))

    assert _has_colour(picture, (33, 102, 172), tolerance=30, at_least=900)  # positive end: 30 px blocks
    assert _has_colour(picture, (179, 88, 6), tolerance=30, at_least=900)  # negative end


def test_small_input_is_drawn_in_whole_blocks() -> None:
    """An 8x8 input fills its panel as 30-pixel blocks, not an 8-pixel thumbnail."""
    image = np.zeros((8, 8))
    image[0, 0] = 1.0  # one white pixel in the top-left corner of the input panel
    picture = np.asarray(_decoded(render_image_heatmap(image, np.zeros((8, 8)), title="x")).convert("L"))

    panel = picture[76 : 76 + PANEL_PX, 20 : 20 + PANEL_PX]  # the input panel, below the title and caption
    rows, cols = np.nonzero(panel == 255)
    assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (0, 0, 30, 30)
    assert int((panel == 0).sum()) == PANEL_PX * PANEL_PX - 30 * 30


def test_bar_chart_shows_top_k_and_grows_with_it() -> None:
    values = np.random.default_rng(2).normal(size=30)

    short = _decoded(render_bar_chart(values, NAMES, title="top 5", top_k=5))
    tall = _decoded(render_bar_chart(values, NAMES, title="top 20", top_k=20))

    assert short.width == tall.width
    assert short.height < tall.height
    assert 600 <= short.width <= 1000


def test_bar_chart_colours_signs_apart() -> None:
    both = _decoded(render_bar_chart(np.array([0.5, -0.4, 0.2]), NAMES[:3], title="signed"))
    positive = _decoded(render_bar_chart(np.array([0.5, 0.4, 0.2]), NAMES[:3], title="positive"))

    assert _has_colour(both, BLUE, tolerance=10, at_least=2000)
    assert _has_colour(both, VERMILION, tolerance=10, at_least=2000)
    assert not _has_colour(positive, VERMILION, tolerance=10, at_least=500)  # only its legend swatch


@pytest.mark.parametrize(
    ("render", "message"),
    [
        pytest.param(lambda: render_image_heatmap(np.zeros(64), np.zeros(64), title="x"), "2-D image", id="flat"),
        pytest.param(lambda: render_image_heatmap(np.zeros((8, 8)), np.zeros((4, 4)), title="x"), "same", id="sizes"),
        pytest.param(
            lambda: render_image_heatmap(np.zeros((2, 2)), np.array([[0, np.nan], [1, 2]]), title="x"),
            "non-finite",
            id="nan-map",
        ),
        pytest.param(lambda: render_bar_chart(np.zeros(3), NAMES, title="x"), "one value per", id="names"),
        pytest.param(lambda: render_bar_chart(np.zeros(30), NAMES, title="x", top_k=0), "top_k >= 1", id="top-k"),
        pytest.param(
            lambda: render_bar_chart(np.array([1.0, np.inf]), NAMES[:2], title="x"), "non-finite", id="inf-bar"
        ),
    ],
)
def test_rendering_rejects_data_it_cannot_draw(render: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ImageDataError, match=message) as caught:
        render()
    assert isinstance(caught.value, InvalidInput) and isinstance(caught.value, ValueError)
    assert caught.value.status == 422


def test_concurrent_rendering_gives_identical_pictures() -> None:
    image, attribution = np.eye(8), np.arange(64.0).reshape(8, 8) - 32

    with ThreadPoolExecutor(max_workers=4) as pool:
        pictures = list(pool.map(lambda _: render_image_heatmap(image, attribution, title="same"), range(8)))

    assert len(set(pictures)) == 1


def test_reliability_png() -> None:
    picture = _decoded(render_reliability_png(HAND_REPORT, title="digits v1"))

    assert picture.width == 640 and 700 <= picture.height <= 1000
    assert _has_colour(picture, BLUE, tolerance=10, at_least=2000)  # accuracy bars
    assert _has_colour(picture, VERMILION, tolerance=10, at_least=200)  # gaps to the diagonal


def test_reliability_png_scales_with_width_and_dpi() -> None:
    small = _decoded(render_reliability_png(HAND_REPORT, title="digits v1"))
    large = _decoded(render_reliability_png(HAND_REPORT, title="digits v1", width_px=960, dpi=150))

    assert large.width == 960 and large.height > small.height


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        pytest.param(0.0, 1.0, [0.0, 0.25, 0.5, 0.75, 1.0], id="unit"),
        pytest.param(-0.0844, 0.0813, [-0.05, 0.0, 0.05], id="signed"),
        pytest.param(0.0, 0.0844, [0.0, 0.025, 0.05, 0.075], id="positive"),
    ],
)
def test_nice_ticks(low: float, high: float, expected: list[float]) -> None:
    assert nice_ticks(low, high) == pytest.approx(expected)


def _record(values: NDArray[np.float64], model_input: NDArray[np.float64] | None) -> ExplanationRecord:
    stored = (
        StoredAttribution.from_array(values, target=3)
        if values.size
        else StoredAttribution(shape=values.shape, scale=1.0, data="", target=3)
    )
    return ExplanationRecord(
        summary=ExplanationSummary(
            model="digits",
            model_version="v1",
            request_id="r1",
            status="done",
            reasons=("every_n",),
            predicted=3,
            confidence=0.9,
            timestamp=1.0,
            methods=("saliency",),
        ),
        detail=ExplanationDetail(
            attributions={"saliency": stored},
            input=InputTensor.of(model_input) if model_input is not None else None,
        ),
    )


@pytest.mark.parametrize(
    ("values", "model_input", "size"),
    [
        pytest.param(np.ones((1, 8, 8)), np.ones((1, 8, 8)), (926, 378), id="image"),
        pytest.param(np.ones((1, 8, 8)), None, (926, 378), id="image-without-input"),
        pytest.param(np.linspace(-1, 1, 30)[None, :], np.ones((1, 30)), (720, None), id="tabular"),
    ],
)
def test_render_heatmap_of_a_stored_record(
    values: NDArray[np.float64], model_input: NDArray[np.float64] | None, size: tuple[int, int | None]
) -> None:
    picture = _decoded(render_heatmap(_record(values, model_input), "saliency", feature_names=None))

    assert picture.width == size[0] and picture.height == (size[1] or picture.height)


def test_render_heatmap_answers_4xx_for_what_it_cannot_draw() -> None:
    with pytest.raises(NotFound, match="no 'gradcam' map") as missing:
        render_heatmap(_record(np.ones((8, 8)), None), "gradcam", feature_names=None)
    with pytest.raises(NotFound, match="empty") as empty:
        render_heatmap(_record(np.ones((0, 8, 8)), None), "saliency", feature_names=None)
    with pytest.raises(InvalidInput, match="does not fit the stored input") as misfit:
        render_heatmap(_record(np.ones((1, 8, 8)), np.ones((1, 10, 10))), "saliency", feature_names=None)

    assert (missing.value.status, missing.value.field) == (404, "method")
    assert (empty.value.status, empty.value.field) == (404, "method")
    assert (misfit.value.status, misfit.value.field) == (422, "method")


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("import service.images", id="images"),
        pytest.param(
            "import numpy as np\n"
            "from service.images import render_bar_chart, render_image_heatmap\n"
            "render_image_heatmap(np.eye(8), np.eye(8), title='x')\n"
            "render_bar_chart(np.ones(3), ['a', 'b', 'c'], title='x')",
            id="images-after-drawing",
        ),
        pytest.param("import service.app", id="sidecar-app"),
    ],
)
def test_the_sidecar_does_not_load_heavy_libraries(code: str) -> None:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )

    assert result.stdout.strip() == ""


def test_the_sidecar_app_loads_pillow_only_when_drawing() -> None:
    probe = "import sys\nimport service.app\nprint('PIL' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )

    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "render",
    [
        pytest.param(lambda: render_image_heatmap(np.zeros((0, 8)), np.zeros((0, 8)), title="x"), id="empty-map"),
        pytest.param(lambda: render_bar_chart(np.zeros(0), (), title="x"), id="no-features"),
        pytest.param(
            lambda: render_reliability_png(CalibrationReport(1, 0.0, 0.0, None, 0, ()), title="x"), id="no-bins"
        ),
    ],
)
def test_nothing_to_draw_is_not_found(render: Callable[[], bytes]) -> None:
    with pytest.raises(NothingToDraw, match="nothing to draw") as caught:
        render()
    assert isinstance(caught.value, NotFound) and caught.value.status == 404
