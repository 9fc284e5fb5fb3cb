"""``vai-sidecar demo`` as a user runs it, its replayed traffic, and the corruptions behind its drift phase."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families

from common.embedded_redis import free_port
from demo.corruptions import CORRUPTIONS, Corruption, blur, corrupt
from demo.models.training import Split
from demo.traffic import DigitsTraffic
from helpers import redis_servers_in, wait_until

REPO = Path(__file__).parents[2]
DURATION_S = 25


def images(count: int = 60) -> NDArray[np.float32]:
    """Digit-like images: dark background, a few bright strokes."""
    rng = np.random.default_rng(0)
    return (rng.random((count, 1, 8, 8)) > 0.7).astype(np.float32)


def test_corruptions_are_seeded_keep_shape_and_range_and_leave_the_input_alone() -> None:
    clean = images()
    before = clean.copy()
    first, kinds = corrupt(clean, seed=3)
    again, kinds_again = corrupt(clean, seed=3)
    other, _ = corrupt(clean, seed=4)

    np.testing.assert_array_equal(first, again)
    assert kinds == kinds_again and set(kinds) == set(CORRUPTIONS)
    assert not np.array_equal(first, other)
    assert first.shape == clean.shape and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(clean, before)


@pytest.mark.parametrize("kind", [pytest.param(kind, id=kind) for kind in CORRUPTIONS])
def test_each_corruption_changes_every_image(kind: Corruption) -> None:
    clean = images()
    corrupted, kinds = corrupt(clean, seed=0, kinds=(kind,))
    assert kinds == [kind] * len(clean)
    changed = np.abs(corrupted - clean).reshape(len(clean), -1).max(axis=1) > 0
    assert changed.all()
    assert corrupted.min() >= 0.0 and corrupted.max() <= 1.0


def test_blur_keeps_a_flat_image_flat_and_occlusion_paints_a_square() -> None:
    flat = np.full((2, 1, 8, 8), 0.25, dtype=np.float32)
    np.testing.assert_allclose(blur(flat), flat, rtol=1e-6)
    occluded, _ = corrupt(np.zeros((5, 1, 8, 8), dtype=np.float32), seed=1, kinds=("occlusion",))
    assert (occluded.reshape(5, -1).sum(axis=1) == 16).all()  # one 4x4 patch at full intensity


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"images": np.zeros((8, 8), dtype=np.float32)}, id="no-batch-axis"),
        pytest.param({"kinds": ()}, id="no-kinds"),
        pytest.param({"severity": 0.0}, id="zero-severity"),
    ],
)
def test_corrupt_refuses_bad_arguments(arguments: dict[str, object]) -> None:
    call = {"images": images(2), "seed": 0, **arguments}
    with pytest.raises(ValueError):
        corrupt(**call)  # type: ignore[arg-type]  # bad arguments on purpose


class ConstantModel:
    """Stands in for the digits CNN: class 3 with confidence near 1, a 64-d embedding of ones."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, 3] = 10.0
        return logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(x), 64)


def traffic(base_url: str, **options: Any) -> DigitsTraffic:
    split = Split(features=images(30), labels=np.arange(30, dtype=np.int64) % 10)
    return DigitsTraffic(base_url, model=ConstantModel(), split=split, **options)


def test_traffic_events_look_like_a_serving_stack_posts_them() -> None:
    replay = traffic("http://127.0.0.1:1", label_fraction=0.5, run_id="t")
    events = replay.events(40, drifting=False)
    assert len({event["request_id"] for event in events}) == 40
    assert all(event["request_id"].startswith("t-") for event in events)
    first = events[0]
    assert first["model"] == "digits" and first["model_version"] == "v1"
    assert len(first["logits"]) == 10 and len(first["embedding"]) == 64
    image = np.frombuffer(base64.b64decode(first["input"]["data"]), dtype="<f4").reshape(first["input"]["shape"])
    assert image.shape == (1, 8, 8) and image.min() >= 0.0 and image.max() <= 1.0
    assert {event["cohort"]["region"] for event in events} <= {"eu", "us", "apac"}
    assert {event["cohort"]["device"] for event in events} <= {"mobile", "web"}
    assert 0 < sum("label" in event for event in events) < 40


def test_a_failed_request_is_counted_never_raised() -> None:
    replay = traffic(f"http://127.0.0.1:{free_port()}", timeout_s=1)  # nothing listens there
    assert replay.post(replay.events(3, drifting=True)) is False
    assert replay.post(replay.events(3, drifting=False)) is False
    assert replay.stats.failed_requests == 2 and replay.stats.accepted == 0 and replay.stats.events == 6
    stop = threading.Event()
    stop.set()
    assert replay.run(stop).requests == 2  # a set stop event posts nothing more


class Output:
    """A process's merged stdout and stderr, read by a thread; :meth:`wait_for` blocks without polling."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, needle: str, *, count: int = 1, timeout_s: float) -> None:
        """Until ``needle`` has been printed ``count`` times; fails at EOF or after ``timeout_s``."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._seen(needle) >= count, timeout=timeout_s)
            if self._seen(needle) < count:
                pytest.fail(f"{needle!r} not printed {count} times (exited: {self._closed}):\n{''.join(self._lines)}")

    def close(self) -> None:
        self._reader.join(timeout=10)

    def _seen(self, needle: str) -> int:
        return "".join(self._lines).count(needle)

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()


@dataclass
class Demo:
    process: subprocess.Popen[str]
    output: Output
    base: str
    redis_dir: Path


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "common.cli", "demo", "--port", str(port), "--duration", str(DURATION_S)]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        output = Output(process.stdout)
        try:
            yield Demo(process, output, f"http://127.0.0.1:{port}", tmp_path / ".vai-data" / "demo-redis")
        finally:
            if process.poll() is None:
                process.terminate()  # SIGTERM, not SIGKILL: the demo must still stop its redis-server
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            output.close()


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=2).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def confidence(base: str) -> tuple[float, float]:
    """(sum, count) of the ``vai_prediction_confidence`` histogram of digits v1."""
    values = samples(f"{base}/metrics")
    labels = (("model", "digits"), ("version", "v1"))
    return values.get(("vai_prediction_confidence_sum", labels), 0.0), values.get(
        ("vai_prediction_confidence_count", labels), 0.0
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs /proc to find the redis-server")
def test_demo_runs_the_whole_loop_then_stops_everything_by_itself(demo: Demo) -> None:
    # Progress is read from the demo's own output: polling HTTP in a loop would steal the CPU it needs.
    demo.output.wait_for("explanations  ", timeout_s=120)  # the banner comes once the server is up
    assert httpx.get(f"{demo.base}/livez").status_code == 200
    for path in ("/ui", "/ui/models/digits", "/openapi.json", "/metrics", "/v1/explanations?model=digits"):
        assert f"{demo.base}{path}" in demo.output.text()
    worker_metrics = re.search(r"worker\s+(http://\S+/metrics)", demo.output.text())
    monitor_metrics = re.search(r"monitor\s+(http://\S+/metrics)", demo.output.text())
    assert worker_metrics is not None and monitor_metrics is not None
    assert len(redis_servers_in(demo.redis_dir)) == 1, "the check at the end would not see a leftover redis-server"

    demo.output.wait_for("drift phase:", timeout_s=DURATION_S)
    clean_sum, clean_count = confidence(demo.base)
    demo.output.wait_for("traffic (drift phase)", count=2, timeout_s=DURATION_S)  # progress lines every 10 s
    drift_sum, drift_count = confidence(demo.base)
    assert clean_count >= 100 and drift_count - clean_count >= 200
    clean_mean, drift_mean = clean_sum / clean_count, (drift_sum - clean_sum) / (drift_count - clean_count)
    assert drift_mean < clean_mean - 0.05, f"mean confidence {clean_mean:.3f} clean, {drift_mean:.3f} drifted"

    def explained() -> bool:
        listing = httpx.get(f"{demo.base}/v1/explanations", params={"model": "digits", "limit": 100}).json()
        return any(item["status"] == "done" for item in listing["items"])

    wait_until(explained, timeout_s=DURATION_S, what="an explanation with status done")
    ok = ("vai_explanations_total", (("method", "gradcam"), ("model", "digits"), ("status", "ok")))
    assert samples(worker_metrics.group(1)).get(ok, 0) > 0
    assert samples(f"{demo.base}/metrics")[("vai_events_total", (("model", "digits"), ("version", "v1")))] > 0

    # The monitor role: it owns the model (its lease), reads the feed and publishes for the sidecar to answer.
    def examining() -> dict[str, Any] | None:
        drift: dict[str, Any] = httpx.get(f"{demo.base}/v1/models/digits/drift", timeout=2).json()
        return drift if drift["state"] == "monitoring" and drift["examined"] > 0 else None

    wait_until(examining, timeout_s=DURATION_S, what="the monitor to examine the demo's traffic")
    assert samples(monitor_metrics.group(1)).get(("vai_monitor_records_examined_total", (("model", "digits"),)), 0) > 0

    assert demo.process.wait(timeout=DURATION_S + 30) == 0
    demo.output.close()
    assert redis_servers_in(demo.redis_dir) == [], "the embedded redis-server outlived the demo"
    assert "worker stopped after" in demo.output.text()
    assert re.search(r"monitor \S+ stopped", demo.output.text())
    assert "Traceback" not in demo.output.text()
