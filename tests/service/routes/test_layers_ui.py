"""The viewer's Layers section in headless Chromium: a real worker inspects the eager digits CNN, the page shows
the layer table and draws the feature maps of the layer picked."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry
from small_models import served_logits

from attribution_workers.main import build_runtimes, make_worker
from attribution_workers.settings import WorkerSettings
from cdp import Browser
from common import keys
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import serve_app, wait_until
from service.app import create_app
from service.settings import SidecarSettings


@pytest.fixture
def inspected_site(
    make_settings: Callable[..., SidecarSettings],
    make_worker_settings: Callable[..., WorkerSettings],
    digits_path: Path,
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
) -> Iterator[str]:
    """The sidecar over two explanations of the eager digits CNN, with layer statistics and feature maps."""
    model = {
        "factory": digits.FACTORY,
        "weights": str(digits.ensure_digits_weights(digits_path)),
        "input_shape": list(digits.INPUT_SHAPE),
        "num_classes": digits.NUM_CLASSES,
    }
    section = {"model": model, "methods": ["saliency"], "fidelity_steps": 2, "fidelity_random_orders": 1}
    worker_settings = make_worker_settings(models={"digits": {"attribution": section}})
    images = digits_split.test.features[:2]
    events = [
        {
            "model": "digits",
            "request_id": f"img{index}",
            "logits": logits.tolist(),
            "input": {
                "shape": list(digits.INPUT_SHAPE),
                "dtype": "float32",
                "data": base64.b64encode(np.ascontiguousarray(image, dtype="<f4").tobytes()).decode(),
            },
        }
        for index, (image, logits) in enumerate(zip(images, served_logits(digits_path, images), strict=True))
    ]
    with serve_app(create_app(make_settings(sampling={"every_n": 1, "max_per_second": 10_000}))) as base:
        assert httpx.post(f"{base}/v1/events", json={"events": events}).json()["accepted"] == 2
        stream = keys.sample_stream("digits")
        wait_until(lambda: redis_client.xlen(stream) == 2, what="2 queued")

        async def work() -> None:
            worker = make_worker(worker_settings, build_runtimes(worker_settings), CollectorRegistry())
            try:
                await worker.ensure_groups()
                deadline = time.monotonic() + 60
                while redis_client.xlen(stream):
                    assert time.monotonic() < deadline, "the worker did not finish in time"
                    await worker.step()
            finally:
                await worker.aclose()

        asyncio.run(work())
        yield base


@pytest.mark.slow
def test_viewer_shows_the_layer_table_and_draws_the_picked_layers_maps(
    inspected_site: str, browser: Browser, tmp_path: Path
) -> None:
    browser.navigate(f"{inspected_site}/ui#digits/img0")
    loaded = "document.querySelector('img.activations-image')?.dataset.state === 'loaded'"
    browser.wait_for(loaded, "the feature maps of the first layer", timeout_s=30)
    rows = browser.evaluate(
        "[...document.querySelectorAll('table.layer-table tbody tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    record = httpx.get(f"{inspected_site}/v1/explanations/digits/img0").json()
    assert [row[0] for row in rows] == [layer["name"] for layer in record["layers"]]
    conv = rows[0]
    assert conv[:3] == ["conv.0", "conv", "16×8×8"] and conv[3] == f"{record['layers'][0]['mean']:.3f}"
    assert browser.evaluate("[...document.querySelectorAll('#activation-layer option')].map(o => o.value)") == [
        "conv.0",
        "conv.3",
    ]
    first = browser.evaluate("document.querySelector('img.activations-image').src")
    browser.evaluate(
        "(() => { const s = document.getElementById('activation-layer'); s.value = 'conv.3';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    browser.wait_for(f"{loaded} && document.querySelector('img.activations-image').src !== {first!r}", "conv.3 maps")
    assert browser.evaluate("document.querySelector('img.activations-image').naturalWidth") > 400
    assert browser.evaluate("document.querySelector('img.activations-image').alt") == "feature maps of layer conv.3"
    assert browser.errors == []
    assert all(url.startswith((inspected_site, "blob:", "data:")) for url in browser.requests), browser.requests
    browser.screenshot(tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 10_000
