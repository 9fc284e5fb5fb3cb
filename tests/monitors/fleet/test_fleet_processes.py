"""The fleet as it runs: three `serve` replicas and two `monitor` processes on one real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from common import keys
from common.embedded_redis import EmbeddedRedis, free_port
from helpers import PROCESS_DRIFT_ENV, role_env, start_fleet_monitor, start_role, stop_process, wait_http, wait_until
from monitors.calibration import calibration_of
from monitors.quality import quality_of
from monitors.records import LabelledPrediction

pytestmark = pytest.mark.slow


@dataclass
class Fleet:
    redis_url: str
    sidecars: list[str]
    monitors: dict[str, tuple[subprocess.Popen[bytes], str]]
    """monitor id -> (process, metrics URL)."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    server = EmbeddedRedis(data_dir=workdir / "redis", append_only=False).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sidecars = []
        for _ in range(3):
            port = free_port()
            env = role_env(
                VAI_REDIS_URL=server.url,
                VAI_MONITOR="external",
                VAI_SAMPLING__EVERY_N="1000000",
                VAI_MODELS='{"gamma": {"delayed_labels": true}}',
            )
            process = start_role("serve", "--port", str(port), env=env, cwd=workdir)
            processes.append(process)
            sidecars.append((f"http://127.0.0.1:{port}", process))
        monitors = {}
        for name in ("monitor-a", "monitor-b"):
            monitors[name] = start_fleet_monitor(server.url, name, cwd=workdir, **PROCESS_DRIFT_ENV)
            processes.append(monitors[name][0])
        for url, process in sidecars:
            wait_http(f"{url}/livez", process)
        for process, metrics_url in monitors.values():
            wait_http(metrics_url, process)
        yield Fleet(server.url, [url for url, _ in sidecars], monitors)
    finally:
        for process in processes:
            stop_process(process)
        server.stop()


def _events(
    model: str, start: int, count: int, rng: np.random.Generator, *, shift: float = 0.0
) -> list[dict[str, Any]]:
    events = []
    for i in range(start, start + count):
        logits = rng.normal(size=3) * 2
        events.append(
            {
                "model": model,
                "request_id": f"{model}-{i}",
                "logits": logits.tolist(),
                "embedding": (rng.normal(size=16) + shift).tolist(),
            }
        )
    return events


def _post_round_robin(fleet: Fleet, events: list[dict[str, Any]], *, batch: int = 50) -> None:
    for n, at in enumerate(range(0, len(events), batch)):
        url = fleet.sidecars[n % len(fleet.sidecars)]
        response = httpx.post(f"{url}/v1/events", json={"events": events[at : at + batch]}, timeout=10)
        assert response.status_code == 202, response.text


def _drift(url: str, model: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/v1/models/{model}/drift", timeout=5)
    if response.status_code != 200:
        return None
    status: dict[str, Any] = response.json()
    return status


def _monitoring(fleet: Fleet, model: str) -> dict[str, Any]:
    """Wait for the model's detectors to be calibrated, then feed them until each has a verdict."""

    def calibrated() -> dict[str, Any] | None:
        status = _drift(fleet.sidecars[0], model)
        return status if status and status["state"] == "monitoring" else None

    status = wait_until(calibrated, timeout_s=120, what=f"drift calibration of {model}", interval_s=0.2)
    if status["detectors"]:
        return status
    _post_round_robin(fleet, _events(model, 10_000, 100, np.random.default_rng(9)))

    def judged() -> dict[str, Any] | None:
        status = _drift(fleet.sidecars[0], model)
        return status if status and status["detectors"] else None

    return wait_until(judged, timeout_s=60, what=f"drift verdicts on {model}", interval_s=0.2)


def _series_lines(fleet: Fleet, prefix: str, model: str) -> list[str]:
    lines = []
    for process, metrics_url in fleet.monitors.values():
        if process.poll() is None:
            text = httpx.get(metrics_url, timeout=5).text
            lines += [line for line in text.splitlines() if line.startswith(prefix) and f'model="{model}"' in line]
    return lines


def _written(url: str, model: str) -> float:
    """Monitoring records of ``model`` a sidecar wrote to the monitor's feed."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    wanted = ("vai_feed_records_written_total{", f'model="{model}"', 'feed="predictions"')
    return sum(float(line.split()[-1]) for line in text.splitlines() if all(part in line for part in wanted))


def test_drift_is_computed_once_per_model_and_answered_by_every_replica(fleet: Fleet) -> None:
    rng = np.random.default_rng(1)
    _post_round_robin(fleet, _events("alpha", 0, 600, rng) + _events("beta", 0, 600, rng))
    alpha, beta = _monitoring(fleet, "alpha"), _monitoring(fleet, "beta")
    assert {alpha["owner"], beta["owner"]} == set(fleet.monitors), "two monitors share two models"
    for url in fleet.sidecars:
        answered = _drift(url, "alpha")
        assert answered is not None and answered["owner"] == alpha["owner"]
        assert [d["name"] for d in answered["detectors"]] == [d["name"] for d in alpha["detectors"]]
    # Exactly one series per model and detector in the whole fleet, whichever monitor exports it.
    wait_until(lambda: len(_series_lines(fleet, "vai_drift_threshold{", "alpha")) == len(alpha["detectors"]))
    names = [
        line.split('detector="')[1].split('"')[0] for line in _series_lines(fleet, "vai_drift_threshold{", "alpha")
    ]
    assert sorted(names) == sorted(d["name"] for d in alpha["detectors"])

    # Every record the replicas wrote is examined (the warm-up's 400 rows, then by the detectors) or skipped
    # (while calibrating), in one series each: written = examined + skipped once the feed is empty.
    def accounted() -> tuple[float, float, float] | None:
        examined = _series_lines(fleet, "vai_monitor_records_examined_total{", "alpha")
        skipped = _series_lines(fleet, "vai_drift_events_skipped_total{", "alpha")
        written = sum(_written(url, "alpha") for url in fleet.sidecars)
        if len(examined) != 1 or len(skipped) > 1:
            return None
        seen = float(examined[0].split()[-1]), float(skipped[0].split()[-1]) if skipped else 0.0, written
        return seen if seen[0] + seen[1] == written else None

    examined, _, written = wait_until(accounted, what="every record the replicas wrote examined or skipped")
    assert 400 < examined <= written


def test_labels_posted_to_different_replicas_give_the_pooled_figures(fleet: Fleet) -> None:
    rng = np.random.default_rng(2)
    n = 240
    probabilities = rng.dirichlet(np.ones(4) * 0.7, size=n)
    labels = rng.integers(0, 4, size=n)
    events = [
        {"model": "gamma", "request_id": f"g{i}", "probabilities": (p / p.sum()).tolist(), "cohort": {"r": "x"}}
        for i, p in enumerate(probabilities)
    ]
    _post_round_robin(fleet, events, batch=20)
    sent = [np.asarray(e["probabilities"], dtype=np.float64) for e in events]
    with redis.Redis.from_url(fleet.redis_url) as client:  # labels come late: every record is in Redis by then
        wait_until(lambda: len(list(client.scan_iter("vai:pred:gamma:*", count=1000))) == n, what="all records")
    for replica in range(3):  # labels of events sent to replica k go to replica k+1
        mine = [i for i in range(n) if (i // 20) % 3 == replica]
        body = {"labels": [{"model": "gamma", "request_id": f"g{i}", "label": int(labels[i])} for i in mine]}
        answer = httpx.post(f"{fleet.sidecars[(replica + 1) % 3]}/v1/labels", json=body, timeout=5)
        assert answer.status_code == 200 and answer.json()["matched"] == len(mine)

    def series() -> dict[str, Any] | None:
        found = httpx.get(f"{fleet.sidecars[2]}/v1/models/gamma/calibration?cohort=all", timeout=5).json()["series"]
        return found[0] if found and found[0]["count"] == n else None

    got = wait_until(series, timeout_s=30, what="the pooled calibration of gamma", interval_s=0.1)
    pooled = [
        LabelledPrediction(
            model="gamma",
            version="unversioned",
            predicted=int(p.argmax()),
            confidence=float(p.max()),
            label=int(labels[i]),
            time_s=0.0,
            probabilities=p,
        )
        for i, p in enumerate(sent)
    ]
    calibration, quality = calibration_of(pooled), quality_of(pooled).accuracy
    assert got["ece"] == pytest.approx(calibration.ece, abs=1e-9)
    assert got["brier_score"] == pytest.approx(calibration.brier_score, abs=1e-9)
    assert got["accuracy"] == pytest.approx(quality.value, abs=1e-9)
    assert got["accuracy_lower"] == pytest.approx(quality.lower, abs=1e-9)
    assert got["accuracy_upper"] == pytest.approx(quality.upper, abs=1e-9)
    assert [b["count"] for b in got["bins"]] == [b.count for b in calibration.bins]


def test_a_killed_owner_is_replaced_with_its_calibrated_state(fleet: Fleet) -> None:
    before = _monitoring(fleet, "alpha")
    with redis.Redis.from_url(fleet.redis_url) as client:
        version = client.get(keys.drift_version("alpha"))
    assert version is not None
    owner, _ = fleet.monitors[before["owner"]]
    killed_at = time.monotonic()
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    survivor = next(name for name in fleet.monitors if name != before["owner"])

    def taken_over() -> dict[str, Any] | None:
        status = _drift(fleet.sidecars[1], "alpha")
        return status if status and status["owner"] == survivor else None

    status = wait_until(taken_over, timeout_s=15, what="the surviving monitor to take alpha over", interval_s=0.05)
    took_s = time.monotonic() - killed_at
    assert status["state"] == "monitoring", "adopted the stored calibration, no recalibration"
    with redis.Redis.from_url(fleet.redis_url) as client:
        assert client.get(keys.drift_version("alpha")) == version
    # It keeps examining what the replicas publish.
    examined = status["examined"]
    _post_round_robin(fleet, _events("alpha", 1000, 150, np.random.default_rng(3)))
    wait_until(lambda: (_drift(fleet.sidecars[0], "alpha") or {}).get("examined", 0) >= examined + 150)
    print(f"takeover after SIGKILL: {took_s:.1f} s")


def test_redis_down_gives_503_from_every_redis_backed_route_and_ingest_goes_on(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis", append_only=False).start()
    port = free_port()
    process = start_role(
        "serve", "--port", str(port), env=role_env(VAI_REDIS_URL=server.url, VAI_MONITOR="external"), cwd=tmp_path
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/livez", process)
        assert (
            httpx.post(f"{base}/v1/events", json={"model": "m", "request_id": "a", "logits": [1, 2]}).status_code == 202
        )
        server.stop()
        with httpx.Client(base_url=base, timeout=10) as client:
            answers = {
                "events": client.post("/v1/events", json={"model": "m", "request_id": "b", "logits": [1, 2]}),
                "labels": client.post("/v1/labels", json={"labels": [{"model": "m", "request_id": "a", "label": 1}]}),
                "drift": client.get("/v1/models/m/drift"),
                "calibration": client.get("/v1/models/m/calibration"),
                "reference": client.put("/v1/models/m/reference", json={"embeddings": [[0.0, 1.0], [1.0, 0.0]]}),
                "sampling": client.put("/v1/models/m/sampling", json={"every_n": 5}),
                "explanations": client.get("/v1/explanations?model=m"),
                "explanation": client.get("/v1/explanations/m/a"),
            }
        assert answers.pop("events").status_code == 202
        for route, response in answers.items():
            assert response.status_code == 503, (route, response.status_code, response.text)
            assert response.headers.get("retry-after"), route
            assert "error" in response.json(), route
            assert "127.0.0.1" not in response.text, route
    finally:
        stop_process(process)
        server.stop()
