"""The attribution worker end to end: real Redis, the real digits model, the sidecar in front."""

from __future__ import annotations

import base64
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client import CollectorRegistry
from small_models import served_logits

from attribution_workers.settings import WorkerSettings
from common import keys
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import drain_worker, hash_field, stream_entries, wait_until
from poison_net import POISON

METHODS = ["gradcam", "integrated_gradients", "occlusion", "saliency", "gradient_shap"]

SAMPLE_EVERY_EVENT = {"every_n": 1, "max_per_second": 10_000}


def attribution_section(path: Path, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "model": {"torchscript": str(path), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10},
        "methods": METHODS,
        "ig_steps": 8,
        "shap_samples": 4,
        "fidelity_steps": 4,
        "fidelity_random_orders": 1,
    }
    section.update(extra)
    return section


def image_event(
    index: int, image: npt.NDArray[np.floating[Any]], logits: npt.NDArray[np.floating[Any]], **fields: Any
) -> dict[str, Any]:
    """An event posting ``image`` with ``logits``: for a digit, the model's own (``served_logits``), as a server
    running it sends them."""
    data = base64.b64encode(np.ascontiguousarray(image, dtype="<f4").tobytes()).decode()
    body = {
        "model": "digits",
        "request_id": f"img{index}",
        "logits": logits.tolist(),
        "input": {"shape": list(image.shape), "dtype": "float32", "data": data},
        "cohort": {"region": "eu" if index % 2 else "us"},
    }
    body.update(fields)
    return body


@pytest.fixture
def worker_settings(
    make_worker_settings: Callable[..., WorkerSettings], digits_path: Path
) -> Callable[..., WorkerSettings]:
    def make(**overrides: Any) -> WorkerSettings:
        section = overrides.pop("attribution", {})
        values: dict[str, Any] = {
            "models": {"digits": {"attribution": attribution_section(digits_path, **section)}},
            "worker_retry_after_ms": 100,
        }
        values.update(overrides)
        return make_worker_settings(**values)

    return make


def stored(client: redis.Redis, model: str = "digits") -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for key in client.scan_iter(f"vai:expl:{model}:*"):
        found[key.decode().rsplit(":", 1)[1]] = hash_field(client, key, "status")
    return found


def test_sampled_events_become_explanations_with_every_method(
    worker_settings: Callable[..., WorkerSettings],
    make_client: Callable[..., TestClient],
    digits_path: Path,
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
) -> None:
    settings = worker_settings()
    client = make_client(sampling=SAMPLE_EVERY_EVENT, cohort_keys=("region",))  # the keys the list filters by
    images, labels = digits_split.test.features[:6], digits_split.test.labels[:6]
    logits = served_logits(digits_path, images)
    events = [image_event(i, images[i], logits[i], label=int(labels[(i + 1) % 6])) for i in range(6)]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 6
    wait_until(lambda: redis_client.xlen(keys.sample_stream("digits")) == 6, what="6 queued")
    assert set(stored(redis_client).values()) == {b"queued"}

    registry = CollectorRegistry()
    drain_worker(settings, lambda: set(stored(redis_client).values()) == {b"done"}, registry=registry)

    assert redis_client.xlen(keys.sample_stream("digits")) == 0
    assert redis_client.xpending(keys.sample_stream("digits"), keys.CONSUMER_GROUP)["pending"] == 0
    listing = client.get("/v1/explanations", params={"model": "digits"}).json()
    assert len(listing["items"]) == 6 and {item["status"] for item in listing["items"]} == {"done"}
    assert all(tuple(item["methods"]) == tuple(METHODS) for item in listing["items"])

    record = client.get("/v1/explanations/digits/img0").json()
    assert record["predicted"] == int(labels[0])  # the model is right on these digits
    assert record["worker_prediction"]["matches"] and record["worker_prediction"]["confidence_check"] == "passed"
    for method in METHODS:
        attribution = record["attributions"][method]
        assert attribution["shape"] == [1, 8, 8] and np.isfinite(np.asarray(attribution["values"])).all()
        assert 0.0 <= attribution["fidelity"]["deletion_auc"] <= 1.0
    if labels[1] != labels[0]:
        assert record["attributions"]["saliency@label"]["target"] == int(labels[1])
    assert record["input"]["shape"] == [1, 8, 8]
    assert -1.0 <= record["agreement"] <= 1.0
    assert record["attributions"]["integrated_gradients"]["convergence_delta"] is not None

    png = client.get("/v1/explanations/digits/img0/heatmap.png", params={"method": "gradcam"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size[0] > 300
    assert client.get("/v1/explanations/digits/img0/heatmap.png", params={"method": "nope"}).status_code == 404
    assert client.get("/v1/explanations/digits/missing").status_code == 404

    eu = client.get("/v1/explanations", params={"model": "digits", "cohort": "region:eu"}).json()["items"]
    assert sorted(item["request_id"] for item in eu) == ["img1", "img3", "img5"]
    assert (
        registry.get_sample_value("vai_explanations_total", {"model": "digits", "method": "saliency", "status": "ok"})
        == 6
    )
    assert registry.get_sample_value("vai_explanation_lag_seconds_count", {"model": "digits"}) == 6


def test_undecodable_and_pickled_entries_are_dead_lettered_unexecuted(
    worker_settings: Callable[..., WorkerSettings], redis_client: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    stream = keys.sample_stream("digits")

    def add_entries() -> None:
        redis_client.xadd(stream, {"m": pickle.dumps(Exploit())})
        redis_client.xadd(stream, {"payload": b"\x80\x04garbage"})

    drain_worker(
        worker_settings(), lambda: redis_client.xlen(keys.dead_letter_stream("digits")) == 2, before=add_entries
    )
    assert not marker.exists()
    assert redis_client.xlen(stream) == 0
    dead = stream_entries(redis_client, keys.dead_letter_stream("digits"))
    assert all(b"undecodable entry" in fields[b"error"] for _, fields in dead)


def test_poison_event_is_dead_lettered_after_max_deliveries_while_others_flow(
    worker_settings: Callable[..., WorkerSettings],
    make_client: Callable[..., TestClient],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    import poison_net

    weights = tmp_path / "poison.pt"
    torch.save(poison_net.build().state_dict(), weights)
    model = {"factory": "poison_net:build", "weights": str(weights), "input_shape": [64], "num_classes": 10}
    settings = worker_settings(
        attribution={"model": model, "methods": ["saliency", "integrated_gradients"]}, worker_max_deliveries=2
    )
    client = make_client(sampling=SAMPLE_EVERY_EVENT)
    rng = np.random.default_rng(0)
    rows = [rng.random(64).astype(np.float32) for _ in range(5)]
    rows[2][10] = POISON
    made_up = np.where(np.arange(10) == 1, 3.0, -2.0)  # nothing looks at the poison net's maps
    client.post("/v1/events", json={"events": [image_event(i, row, made_up) for i, row in enumerate(rows)]})
    wait_until(lambda: redis_client.xlen(keys.sample_stream("digits")) == 5, what="5 queued")

    drain_worker(settings, lambda: redis_client.xlen(keys.dead_letter_stream("digits")) == 1, timeout_s=30)
    statuses = stored(redis_client)
    assert statuses.pop("img2") == b"failed"
    assert set(statuses.values()) == {b"done"}
    ((_, dead),) = stream_entries(redis_client, keys.dead_letter_stream("digits"))
    assert b"poison input" in dead[b"error"] and dead[b"deliveries"] == b"2"
    assert redis_client.xlen(keys.sample_stream("digits")) == 0
    record = client.get("/v1/explanations/digits/img2").json()
    assert record["status"] == "failed" and "poison input" in record["error"]


def test_lost_consumer_group_is_recreated(
    worker_settings: Callable[..., WorkerSettings],
    make_client: Callable[..., TestClient],
    digits_path: Path,
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
) -> None:
    settings = worker_settings()
    client = make_client(sampling=SAMPLE_EVERY_EVENT)
    image = digits_split.test.features[0]
    event = image_event(0, image, served_logits(digits_path, image[None])[0])

    def lose_group_then_post() -> None:
        redis_client.flushall()  # what a Redis restarted without its data looks like
        client.post("/v1/events", json=event)

    drain_worker(settings, lambda: stored(redis_client).get("img0") == b"done", before=lose_group_then_post)


def test_entries_trimmed_while_pending_are_acked_and_counted(
    worker_settings: Callable[..., WorkerSettings], redis_client: redis.Redis
) -> None:
    stream = keys.sample_stream("digits")
    registry = CollectorRegistry()

    def pending_then_trimmed() -> None:
        for _ in range(3):
            redis_client.xadd(stream, {"m": b"{}"})
        redis_client.xreadgroup(keys.CONSUMER_GROUP, "crashed-consumer", {stream: ">"}, count=3)
        redis_client.xtrim(stream, maxlen=0)

    drain_worker(
        worker_settings(),
        lambda: redis_client.xpending(stream, keys.CONSUMER_GROUP)["pending"] == 0,
        registry=registry,
        before=pending_then_trimmed,
    )
    assert (
        registry.get_sample_value("vai_explanations_total", {"model": "digits", "method": "-", "status": "trimmed"})
        == 3
    )


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def test_worker_killed_mid_batch_leaves_exactly_one_result_per_event(
    worker_settings: Callable[..., WorkerSettings],
    make_client: Callable[..., TestClient],
    digits_split: DatasetSplit,
    digits_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    import os
    import signal
    import subprocess
    import sys

    count = 16
    client = make_client(sampling=SAMPLE_EVERY_EVENT)
    features = digits_split.test.features[:count]
    logits = served_logits(digits_path, features)
    client.post("/v1/events", json={"events": [image_event(i, features[i], logits[i]) for i in range(count)]})
    wait_until(lambda: redis_client.xlen(keys.sample_stream("digits")) == count, what="all queued")

    config = tmp_path / "vai.toml"
    section = attribution_section(digits_path, ig_steps=64)
    config.write_text("[models.digits]\nattribution = " + _toml(section) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
    env.update(
        {
            "VAI_REDIS_URL": redis_url,
            "VAI_CONFIG_FILE": str(config),
            "VAI_WORKER_BATCH_SIZE": "4",
            "VAI_WORKER_METRICS_PORT": "0",
            "VAI_WORKER_BLOCK_MS": "100",
            "VAI_WORKER_RETRY_AFTER_MS": "300",
            "PYTHONPATH": str(Path(__file__).parents[2]),
            "PYTHONWARNINGS": "ignore",
        }
    )

    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "common.cli", "worker"],
            env={**env, "VAI_WORKER_CONSUMER": name},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first = start("first")
    try:
        wait_until(lambda: b"done" in stored(redis_client).values(), timeout_s=60, what="a first stored result")
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    done_before = list(stored(redis_client).values()).count(b"done")
    assert done_before < count, "the first worker finished everything before it was killed"

    second = start("second")
    try:
        wait_until(
            lambda: list(stored(redis_client).values()).count(b"done") == count,
            timeout_s=90,
            what="every event explained after the restart",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0

    assert redis_client.zcard(keys.explanation_index("digits")) == count
    assert redis_client.xlen(keys.sample_stream("digits")) == 0
    assert redis_client.xpending(keys.sample_stream("digits"), keys.CONSUMER_GROUP)["pending"] == 0
    assert redis_client.xlen(keys.dead_letter_stream("digits")) == 0
    assert not redis_client.exists(keys.worker_heartbeat("second")), "a clean stop removes the heartbeat"
