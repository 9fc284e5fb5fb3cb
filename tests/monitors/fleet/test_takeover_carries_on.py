"""A killed owner's figures carried on by its successor, on real processes: a `serve` replica, two `monitor`s and
one Redis. Right after the takeover, the drift alarm goes on with its `since` (and `vai_drift_detected`), and the
accuracy estimates are answered over the predictions the killed owner had examined."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from common.embedded_redis import EmbeddedRedis, free_port
from helpers import PROCESS_DRIFT_ENV, role_env, start_fleet_monitor, start_role, stop_process, wait_http, wait_until

pytestmark = pytest.mark.slow

MODEL = "delta"


@dataclass
class Fleet:
    sidecar: str
    monitors: dict[str, tuple[subprocess.Popen[bytes], str]]
    """monitor id -> (process, metrics URL)."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("takeover")
    server = EmbeddedRedis(data_dir=workdir / "redis", append_only=False).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        env = role_env(
            VAI_REDIS_URL=server.url,
            VAI_MONITOR="external",
            VAI_SAMPLING__EVERY_N="1000000",
            VAI_MONITOR_MAX_PER_SECOND="100000",  # every event reaches the monitor: the counts below are exact
        )
        sidecar = start_role("serve", "--port", str(port), env=env, cwd=workdir)
        processes.append(sidecar)
        monitors = {}
        for name in ("monitor-a", "monitor-b"):
            monitors[name] = start_fleet_monitor(server.url, name, cwd=workdir, **PROCESS_DRIFT_ENV)
            processes.append(monitors[name][0])
        wait_http(f"http://127.0.0.1:{port}/livez", sidecar)
        for process, metrics_url in monitors.values():
            wait_http(metrics_url, process)
        yield Fleet(f"http://127.0.0.1:{port}", monitors)
    finally:
        for process in processes:
            stop_process(process)
        server.stop()


def _post(fleet: Fleet, start: int, count: int, *, shift: float = 0.0, labelled: int = 0) -> None:
    rng = np.random.default_rng(start)
    events = []
    for i in range(start, start + count):
        logits = rng.normal(size=3) * 2
        event: dict[str, Any] = {
            "model": MODEL,
            "request_id": f"{MODEL}-{i}",
            "logits": logits.tolist(),
            "embedding": (rng.normal(size=16) + shift).tolist(),
        }
        if i - start < labelled:
            event["label"] = int(logits.argmax()) if rng.random() < 0.7 else int(rng.integers(0, 3))
        events.append(event)
    for at in range(0, count, 50):
        answer = httpx.post(f"{fleet.sidecar}/v1/events", json={"events": events[at : at + 50]}, timeout=10)
        assert answer.status_code == 202, answer.text


def _get(fleet: Fleet, route: str) -> dict[str, Any] | None:
    answer = httpx.get(f"{fleet.sidecar}/v1/models/{MODEL}/{route}", timeout=5)
    body: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
    return body


def _online(status: dict[str, Any] | None) -> dict[str, Any] | None:
    found = [d for d in (status or {}).get("detectors", []) if d["name"] == "mmd_online"]
    return found[0] if found else None


def _estimate(report: dict[str, Any] | None) -> dict[str, Any] | None:
    found = [e for e in (report or {}).get("estimates", []) if e["cohort"] == "all"]
    return found[0] if found else None


def _gauge(fleet: Fleet, monitor: str, line_start: str) -> float | None:
    text = httpx.get(fleet.monitors[monitor][1], timeout=5).text
    found = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(found[0].split()[-1]) if found else None


def test_a_killed_owners_alarm_and_estimates_are_carried_on_by_its_successor(fleet: Fleet) -> None:
    _post(fleet, 0, 400, labelled=80)  # the warm-up reference (80 of them labelled)
    wait_until(
        lambda: (_get(fleet, "drift") or {}).get("state") == "monitoring",
        timeout_s=120,
        what="the drift calibration",
        interval_s=0.2,
    )
    _post(fleet, 1000, 200, shift=3.0)
    total = 600

    def alarmed() -> dict[str, Any] | None:
        status = _get(fleet, "drift")
        online = _online(status)
        return status if status and online and online["drift"] and status["examined"] == total else None

    before = wait_until(alarmed, timeout_s=60, what="the online detector's alarm", interval_s=0.2)
    since = _online(before)["since"]  # type: ignore[index]
    estimated = wait_until(
        lambda: (e := _estimate(_get(fleet, "calibration"))) is not None and e["predictions"] == total and e,
        timeout_s=30,
        what="the accuracy estimate over every examined prediction",
    )
    killed, survivor = before["owner"], next(name for name in fleet.monitors if name != before["owner"])
    owner = fleet.monitors[killed][0]
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    killed_at, killed_epoch = time.monotonic(), time.time()

    status = wait_until(
        lambda: (s := _get(fleet, "drift")) is not None and s["owner"] == survivor and s,
        timeout_s=15,
        what="the survivor to take the model over",
        interval_s=0.05,
    )
    online = _online(status)
    assert status["state"] == "monitoring" and online is not None, status
    assert (online["drift"], online["since"], online["carried"]) == (True, since, True), status
    assert status["carried_over"]["owner"] == killed and status["examined"] >= total
    assert _gauge(fleet, survivor, f'vai_drift_detected{{detector="mmd_online",model="{MODEL}"}}') == 1.0

    report = wait_until(
        lambda: (r := _get(fleet, "calibration")) is not None and r["updated_at"] > killed_epoch and r,
        timeout_s=15,
        what="the survivor's first quality report",
        interval_s=0.05,
    )
    assert time.monotonic() - killed_at < 15
    estimate = _estimate(report)
    assert estimate is not None, report
    assert (estimate["predictions"], estimate["estimated_accuracy"]) == (total, estimated["estimated_accuracy"])
    assert _gauge(fleet, survivor, f'vai_estimated_accuracy{{cohort="all",model="{MODEL}"') is not None

    # The survivor's own results replace the carried ones; the alarm that goes on keeps its start.
    _post(fleet, 2000, 100, shift=3.0)

    def own() -> dict[str, Any] | None:
        found = _online(_get(fleet, "drift"))
        return found if found and not found["carried"] else None

    mine = wait_until(own, timeout_s=30, what="the survivor's own verdict")
    assert (mine["drift"], mine["since"]) == (True, since)
