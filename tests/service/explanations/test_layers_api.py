"""Layer inspection end to end: the sidecar samples, a real worker explains and inspects the eager digits CNN,
the sidecar serves the layer statistics, the feature-map PNG and the workers' layer-health reports."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from prometheus_client import CollectorRegistry
from small_models import eager_digits, served_logits, small_inspector
from torch import nn

from attribution_workers.main import build_runtimes, make_worker
from attribution_workers.runtime import ModelRuntime
from attribution_workers.settings import WorkerSettings
from common import keys
from common.embedded_redis import EmbeddedRedis
from demo.corruptions import corrupt
from demo.models.training import DatasetSplit
from helpers import wait_until
from sampler.explanation_records import ExplanationDetail, ExplanationRecord, ExplanationSummary
from service.explanations.layers import map_captions, render_activations

SAMPLE_EVERY_EVENT = {"every_n": 1, "max_per_second": 10_000}
LAYERS = ["conv.0", "conv.1", "conv.3", "conv.4", "dense.1", "dense.2", "classifier"]


def image_event(request_id: str, image: NDArray[np.float32], logits: NDArray[np.float32]) -> dict[str, Any]:
    data = base64.b64encode(np.ascontiguousarray(image, dtype="<f4").tobytes()).decode()
    return {
        "model": "digits",
        "request_id": request_id,
        "logits": logits.tolist(),
        "input": {"shape": list(image.shape), "dtype": "float32", "data": data},
    }


@pytest.fixture
def settings(make_worker_settings: Callable[..., WorkerSettings], digits_path: Path) -> WorkerSettings:
    model = eager_digits(digits_path)
    section = {
        "model": model,
        "methods": ["saliency"],
        "fidelity_steps": 2,
        "fidelity_random_orders": 1,
        "inspect_window": 32,
        "feature_map_channels": 4,
    }
    return make_worker_settings(models={"digits": {"attribution": section}}, worker_consumer="worker-a")


def explain(
    client: TestClient,
    redis_client: redis.Redis,
    settings: WorkerSettings,
    runtimes: dict[str, ModelRuntime],
    images: NDArray[np.float32],
    prefix: str,
    served_by: Path,
) -> CollectorRegistry:
    """Post ``images`` to the sidecar with the logits a server running ``served_by`` returns, run an in-process
    worker until every one is explained; its metrics."""
    logits = served_logits(served_by, images)
    events = [image_event(f"{prefix}{i}", x, row) for i, (x, row) in enumerate(zip(images, logits, strict=True))]
    for start in range(0, len(events), 16):
        chunk = events[start : start + 16]
        assert client.post("/v1/events", json={"events": chunk}).json()["accepted"] == len(chunk)
    stream = keys.sample_stream("digits")
    wait_until(lambda: redis_client.xlen(stream) == len(images), what="events queued")

    async def loop() -> None:
        worker = make_worker(settings, runtimes, registry)
        try:
            await worker.ensure_groups()
            deadline = time.monotonic() + 120
            while redis_client.xlen(stream):
                assert time.monotonic() < deadline, "worker did not finish in time"
                await worker.step()
        finally:
            await worker.aclose()

    registry = CollectorRegistry()
    asyncio.run(loop())
    return registry


def shift(registry: CollectorRegistry, layer: str) -> float | None:
    labels = {"model": "digits", "version": "unversioned", "layer": layer}
    return registry.get_sample_value("vai_layer_activation_shift", labels)


def test_layers_png_and_reports_are_served_and_the_drift_phase_raises_the_shift(
    settings: WorkerSettings,
    make_client: Callable[..., TestClient],
    redis_client: redis.Redis,
    digits_split: DatasetSplit,
    digits_path: Path,
) -> None:
    client = make_client(sampling=SAMPLE_EVERY_EVENT)
    runtimes = build_runtimes(settings)  # one model state (and health window) for every phase
    images = digits_split.test.features
    # baseline 32, then 32 more
    registry = explain(client, redis_client, settings, runtimes, images[:64], "clean", digits_path)

    record = client.get("/v1/explanations/digits/clean0").json()
    assert record["status"] == "done" and "feature_maps" not in record
    assert [layer["name"] for layer in record["layers"]] == LAYERS
    first = record["layers"][0]
    assert set(first) == {
        "name",
        "kind",
        "shape",
        "mean",
        "std",
        "zero_share",
        "saturated_share",
        "feature_map_channels",
    }
    assert first["kind"] == "conv" and first["shape"] == [16, 8, 8] and len(first["feature_map_channels"]) == 4
    assert record["layers"][1]["feature_map_channels"] == [] and 0 < record["layers"][1]["zero_share"] < 1

    png = client.get("/v1/explanations/digits/clean0/activations.png", params={"layer": "conv.3"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(png.content))
    assert picture.size[0] > 400 and len(set(picture.convert("RGB").getdata())) > 20  # panels, a colour bar, text
    for layer in ("dense.1", "nope"):
        missing = client.get("/v1/explanations/digits/clean0/activations.png", params={"layer": layer})
        assert missing.status_code == 404 and missing.json()["field"] == "layer", missing.json()
        assert "conv.0, conv.3" in missing.json()["error"]
    assert client.get("/v1/explanations/digits/clean0/activations.png").status_code == 422
    assert client.get("/v1/explanations/digits/nobody/activations.png", params={"layer": "conv.0"}).status_code == 404

    layers = client.get("/v1/models/digits/layers").json()
    assert layers["model"] == "digits" and len(layers["reports"]) == 1
    report = layers["reports"][0]
    assert (
        report["worker"] == "worker-a" and report["version"] == "unversioned" and report["baseline"] == "first_window"
    )
    assert report["samples"] == 64 and report["window"] == 32 and report["updated_at"] > time.time() - 300
    assert [layer["name"] for layer in report["layers"]] == LAYERS
    by_name = {layer["name"]: layer for layer in report["layers"]}
    assert by_name["conv.0"]["units"] == 16 and by_name["dense.2"]["units"] == 64
    assert by_name["conv.0"]["saturated_ratio"] is None and by_name["conv.0"]["activation_shift"] is not None
    gauge = registry.get_sample_value(
        "vai_layer_dead_units_ratio", {"model": "digits", "version": "unversioned", "layer": "dense.2"}
    )
    assert gauge == pytest.approx(by_name["dense.2"]["dead_ratio"])
    assert registry.get_sample_value("vai_layer_inspection_seconds_count", {"model": "digits"}) == 4  # one per batch
    unknown = client.get("/v1/models/other/layers")
    assert unknown.status_code == 404 and unknown.json()["field"] == "model"
    # A report this sidecar cannot read (a worker of another version) is skipped, not a 500 for all of them.
    unreadable = keys.layer_health("digits", "worker-z", "unversioned")
    redis_client.set(unreadable, b'{"v": 99, "layers": "?"}', ex=60)
    redis_client.zadd(keys.layer_health_index("digits"), {unreadable: time.time(), "worker-y": time.time()})
    assert [r["worker"] for r in client.get("/v1/models/digits/layers").json()["reports"]] == ["worker-a"]

    clean = {name: shift(registry, name) for name in LAYERS}
    drifted, _ = corrupt(images[64:96], seed=3)  # the demo's drift phase: noise, blur, occlusion
    registry = explain(client, redis_client, settings, runtimes, drifted, "drift", digits_path)
    for name, factor in (("conv.0", 3), ("conv.1", 3), ("conv.3", 2), ("conv.4", 2)):
        before, after = clean[name], shift(registry, name)
        assert before is not None and after is not None
        assert after > factor * before and after > 0.4, f"{name}: {before:.3f} clean, {after:.3f} in the drift phase"


def test_layer_reports_answer_503_while_redis_is_down(
    make_client: Callable[..., TestClient], own_redis: EmbeddedRedis
) -> None:
    client = make_client(redis_url=own_redis.url)
    assert client.get("/v1/models/digits/layers").status_code == 404
    own_redis.kill()
    answer = client.get("/v1/models/digits/layers")
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert "try again" in answer.json()["error"]


def _record_of(side: tuple[int, int]) -> ExplanationRecord:
    """The record a worker stores for one input of a real 4-channel convolution on a ``side`` image."""
    torch.manual_seed(0)
    inspector = small_inspector(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1)), (1, *side), feature_map_channels=2)
    inspection = inspector.inspect(torch.rand(1, 1, *side))
    summary = ExplanationSummary(
        model="digits",
        model_version="v1",
        request_id="r1",
        status="done",
        reasons=("every_n",),
        predicted=3,
        confidence=0.9,
        timestamp=time.time(),
    )
    detail = ExplanationDetail(layers=inspection.stats(0), feature_maps=inspection.feature_maps(0))
    return ExplanationRecord(summary=summary, detail=detail)


@pytest.mark.parametrize(
    ("side", "title", "subtitle"),
    [
        pytest.param((8, 8), "digits r1: layer 0 (4x8x8)", "2 strongest channels", id="kept-whole"),
        pytest.param(
            (200, 130),
            "digits r1: layer 0 (4x200x130, stored at 50x33)",
            "averaged over 4×4 blocks; 2 strongest channels",
            id="averaged-down",
        ),
    ],
)
def test_the_maps_picture_says_the_shape_they_were_stored_at(side: tuple[int, int], title: str, subtitle: str) -> None:
    """Maps above 64 px a side are stored averaged down: the picture says so, and at what size, instead of the
    layer's full shape alone."""
    record = _record_of(side)
    stored = record.detail.feature_maps["0"]
    assert map_captions(record, "0", stored)[0] == title
    assert map_captions(record, "0", stored)[1].startswith(subtitle)
    assert Image.open(io.BytesIO(render_activations(record, "0"))).format == "PNG"
