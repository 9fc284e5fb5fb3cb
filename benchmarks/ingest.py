"""Ingest throughput and latency of the sidecar beside a bare FastAPI + orjson floor.

    .venv/bin/python -m benchmarks.ingest [--seconds 8] [--rounds 2]

Events carry 1000 logits and a 768-float embedding. Three servers, each one
uvicorn process pinned to CPU 0 (uvloop, httptools): the floor, the sidecar
with its monitors off, and the sidecar as configured by default (monitors on);
the load generator and Redis run pinned to CPU 1. Phases alternate between the
floor and the monitors-off sidecar for ``--rounds`` rounds; the monitors-on
sidecar is then measured in one stretch as long as those rounds together (its
drift detection is capped at a share of wall time, see below). The servers
not being measured are paused (SIGSTOP), so that background work of one (the
monitors' drift backlog, say) is charged to it and not to the next phase.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks import loadgen
from common.embedded_redis import EmbeddedRedis

SLOT = b"@" * 12
ROOT = Path(__file__).resolve().parent.parent


def make_template(events_per_request: int, *, seed: int = 0) -> loadgen.Template:
    rng = np.random.default_rng(seed)
    events: list[dict[str, Any]] = []
    for index in range(events_per_request):
        logits = rng.normal(0.0, 2.0, 1000)
        logits[rng.integers(1000)] += 12.0 if index % 10 else 2.0  # one in ten is unsure
        events.append(
            {
                "model": "bench",
                "model_version": "v1",
                "request_id": SLOT.decode(),
                "logits": logits.round(6).tolist(),
                "embedding": rng.normal(0.0, 1.0, 768).round(6).tolist(),
                "cohort": {"region": ("eu", "us", "apac")[index % 3], "device": "mobile"},
            }
        )
    body = orjson.dumps(events[0] if events_per_request == 1 else {"events": events})
    slots, start = [], 0
    while (found := body.find(SLOT, start)) >= 0:
        slots.append(found)
        start = found + len(SLOT)
    return loadgen.Template(bytearray(body), slots, len(SLOT))


@contextmanager
def server(command: list[str], port: int, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, preexec_fn=lambda: os.sched_setaffinity(0, {0})
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=0.5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{command} did not start") from None
                time.sleep(0.1)
        yield process
    finally:
        process.send_signal(signal.SIGCONT)  # a paused process would not act on SIGTERM
        process.terminate()
        process.wait(10)


def only(running: subprocess.Popen[bytes], servers: list[subprocess.Popen[bytes]]) -> None:
    """Let ``running`` run and pause the other servers."""
    for process in servers:
        process.send_signal(signal.SIGCONT if process is running else signal.SIGSTOP)


def measure(
    port: int, template: loadgen.Template, *, connections: int, seconds: float, first_id: int
) -> loadgen.Result:
    result = loadgen.run(port, template, connections=connections, seconds=seconds, first_id=first_id)
    if result.errors:
        raise RuntimeError(f"{result.errors} of {result.requests} requests failed on port {port}")
    return result


def distinct_ports(count: int) -> list[int]:
    """Free loopback ports, held open together so that no two are the same."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def calibrated(port: int, *, timeout_s: float = 300.0) -> None:
    """Give the monitors-on sidecar a drift reference (2000 rows like the traffic's embeddings) and
    wait until its detectors are calibrated, so that steady state is what gets measured."""
    rng = np.random.default_rng(1)
    reference = {"embeddings": rng.normal(0.0, 1.0, (2000, 768)).round(6).tolist()}
    response = httpx.put(f"http://127.0.0.1:{port}/v1/models/bench/reference", json=reference, timeout=60)
    response.raise_for_status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"http://127.0.0.1:{port}/v1/models/bench/drift", timeout=5).json()
        if status["state"] == "monitoring":
            return
        if status.get("calibration_error"):
            raise RuntimeError(f"drift calibration failed: {status['calibration_error']}")
        time.sleep(0.5)
    raise RuntimeError("the drift monitor did not calibrate in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, {1})
    batch, single = make_template(100), make_template(1)
    floor_port, bare_port, sidecar_port = distinct_ports(3)
    sidecar_env = {"VAI_LOG_LEVEL": "warning", "VAI_COHORT_KEYS": "region,device"}
    uvicorn_flags = ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
    with (
        tempfile.TemporaryDirectory() as data,
        EmbeddedRedis(data_dir=Path(data)) as redis_server,
        server(
            [sys.executable, "-m", "uvicorn", "benchmarks.floor:app", "--port", str(floor_port), *uvicorn_flags],
            floor_port,
            {},
        ) as floor,
        server(
            [sys.executable, "-m", "common.cli", "serve", "--port", str(bare_port)],
            bare_port,
            {**sidecar_env, "VAI_REDIS_URL": redis_server.url, "VAI_MONITORS_ENABLED": "false"},
        ) as bare,
        server(
            [sys.executable, "-m", "common.cli", "serve", "--port", str(sidecar_port)],
            sidecar_port,
            {**sidecar_env, "VAI_REDIS_URL": redis_server.url},
        ) as sidecar,
    ):
        # Steady state: calibrating the drift detectors is a one-off of seconds of CPU, done before measuring.
        calibrated(sidecar_port)
        servers = {"floor": (floor_port, floor), "monitors off": (bare_port, bare), "sidecar": (sidecar_port, sidecar)}
        processes = [process for _, process in servers.values()]
        figures: dict[tuple[str, str], list[loadgen.Result]] = {}
        next_id = 0
        for phase, template, connections in (("batch100", batch, 4), ("single", single, 8)):
            for port, process in servers.values():
                only(process, processes)
                measure(port, template, connections=connections, seconds=1.0, first_id=next_id)  # warm-up
                next_id += 10_000_000
            for _ in range(args.rounds):
                for name in ("floor", "monitors off"):
                    port, process = servers[name]
                    only(process, processes)
                    result = measure(port, template, connections=connections, seconds=args.seconds, first_id=next_id)
                    next_id += 10_000_000
                    figures.setdefault((phase, name), []).append(result)
            # In one stretch: drift detection's CPU cap is a share of wall time, and wall time that passed
            # while this server was paused would let it catch up inside a short phase.
            port, process = servers["sidecar"]
            only(process, processes)
            stretch = args.seconds * args.rounds
            result = measure(port, template, connections=connections, seconds=stretch, first_id=next_id)
            next_id += 10_000_000
            figures[(phase, "sidecar")] = [result]
    report(figures)


def report(figures: dict[tuple[str, str], list[loadgen.Result]]) -> None:
    def mean(phase: str, name: str, what: str) -> float:
        results = figures[(phase, name)]
        if what == "rps":
            return sum(r.req_per_s for r in results) / len(results)
        return sum(r.percentile_ms(float(what)) for r in results) / len(results)

    names = ("floor", "monitors off", "sidecar")
    floor_eps = mean("batch100", "floor", "rps") * 100
    print("batches of 100 events (1000 logits + 768-float embedding each), 4 connections:")
    for name in names:
        eps = mean("batch100", name, "rps") * 100
        print(f"  {name:12} {eps:8.0f} events/s   ratio to floor {eps / floor_eps:.2f}")
    on_off = mean("batch100", "sidecar", "rps") / mean("batch100", "monitors off", "rps")
    print(f"  monitors on / off {on_off:.2f} (target >= 0.9); sidecar / floor target >= 0.9")
    print("single events, 8 connections:")
    floor_rps = mean("single", "floor", "rps")
    for name in names:
        rps = mean("single", name, "rps")
        print(
            f"  {name:12} {rps:8.0f} req/s   p50 {mean('single', name, '50'):6.2f} ms"
            f"   p99 {mean('single', name, '99'):6.2f} ms   ratio to floor {rps / floor_rps:.2f}"
        )
    print("  sidecar / floor target >= 0.5")


if __name__ == "__main__":
    main()
