"""Events/s over HTTP of the same events sent three ways, each beside a floor endpoint that only decodes them.

    .venv/bin/python -m benchmarks.tensors_http [--seconds 6] [--rounds 2]

``benchmarks.tensors`` times the app's calls in-process, against floors that are bare ASGI callables: the
CPU cost of the sidecar's own work. This measures what a serving stack sees: each server a uvicorn process
(uvloop, httptools) pinned to CPU 0, driven over loopback by ``benchmarks.loadgen`` (4 keep-alive
connections) from CPU 1, the bodies of ``benchmarks.tensors.bodies`` (batches of 100 events of 1,000
float32 logits and a 768-d embedding: JSON number lists, compact base64, the binary extension). Servers:

* a floor per form, a bare FastAPI endpoint that only decodes the body (``benchmarks.floor``: orjson;
  orjson, base64 and ``np.frombuffer``; the binary split and ``np.frombuffer``), checking nothing;
* the sidecar with its monitors off (``VAI_MONITORS_ENABLED=false``);
* the sidecar as deployed by default, monitors on (``VAI_MONITOR=external``), beside a real
  ``vai-sidecar monitor`` process on CPU 1 at nice 19 that reads the drift feed, calibrated on a
  2,000-row reference before measuring (as in ``benchmarks.ingest``).

Each round runs every form on its floor and both sidecars, one phase each; the servers not measured are
paused (SIGSTOP). Rates are the mean over rounds, and each server's CPU per event comes from /proc (the
figure the host's other load moves least). No assertions: the figures go in the README.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import loadgen
from benchmarks.ingest import calibrated, cpu_s, cpus, distinct_ports, host_load, only, started
from benchmarks.tensors import BATCH, bodies
from common.embedded_redis import EmbeddedRedis

FORMS = ("json", "compact", "binary")
FLOORS = {"json": "app", "compact": "compact_app", "binary": "binary_app"}
"""Each form's floor in ``benchmarks.floor``."""
SERVERS = ("floor", "monitors off", "monitors on")
UVICORN = ["--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server_cpu, client_cpu = cpus()
    os.sched_setaffinity(0, {client_cpu})  # Redis, started from here, inherits it
    forms = bodies()
    ports = distinct_ports(len(FORMS) + 3)
    floor_ports, bare_port, sidecar_port, monitor_port = dict(zip(FORMS, ports, strict=False)), *ports[len(FORMS) :]
    sidecar_env = {"VAI_LOG_LEVEL": "warning", "VAI_COHORT_KEYS": "region", "VAI_MAX_BODY_BYTES": str(64 << 20)}
    serve = [sys.executable, "-m", "common.cli", "serve", "--port"]
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    loads = [host_load()]
    with contextlib.ExitStack() as stack:
        data = stack.enter_context(tempfile.TemporaryDirectory())
        redis_server = stack.enter_context(EmbeddedRedis(data_dir=Path(data)))
        floors = {
            form: stack.enter_context(
                started(
                    [sys.executable, "-m", "uvicorn", f"benchmarks.floor:{FLOORS[form]}", f"--port={port}", *UVICORN],
                    f"http://127.0.0.1:{port}/docs",
                    {},
                    cpu=server_cpu,
                )
            )
            for form, port in floor_ports.items()
        }
        bare = stack.enter_context(
            started(
                [*serve, str(bare_port)],
                f"http://127.0.0.1:{bare_port}/docs",
                {**sidecar_env, "VAI_REDIS_URL": redis_server.url, "VAI_MONITORS_ENABLED": "false"},
                cpu=server_cpu,
            )
        )
        sidecar = stack.enter_context(
            started(
                [*serve, str(sidecar_port)],
                f"http://127.0.0.1:{sidecar_port}/docs",
                {**sidecar_env, "VAI_REDIS_URL": redis_server.url, "VAI_MONITOR": "external"},
                cpu=server_cpu,
            )
        )
        stack.enter_context(
            started(
                [sys.executable, "-m", "common.cli", "monitor"],
                f"http://127.0.0.1:{monitor_port}/metrics",
                {**sidecar_env, "VAI_REDIS_URL": redis_server.url, "VAI_MONITOR_METRICS_PORT": str(monitor_port)},
                cpu=client_cpu,
                nice=19,  # another machine's work in a deployment
            )
        )
        processes = [*floors.values(), bare, sidecar]
        only({sidecar}, processes)
        calibration_s = calibrated(sidecar_port)
        next_id = 0
        for round_index in range(args.rounds + 1):  # round 0 warms every server up
            for form, (template, headers) in forms.items():
                targets = {
                    "floor": (floor_ports[form], floors[form]),
                    "monitors off": (bare_port, bare),
                    "monitors on": (sidecar_port, sidecar),
                }
                for name, (port, process) in targets.items():
                    only({process}, processes)
                    if name == "monitors on":
                        time.sleep(1.0)  # what the writer still held from the last phase reaches Redis
                    before = cpu_s(process.pid)
                    seconds = args.seconds if round_index else 1.0
                    result = loadgen.run(
                        port, template, connections=4, seconds=seconds, first_id=next_id, headers=headers
                    )
                    used = cpu_s(process.pid) - before
                    next_id += 10_000_000
                    if result.errors:
                        raise RuntimeError(f"{result.errors} of {result.requests} {form} requests failed ({name})")
                    if round_index:
                        rates.setdefault((form, name), []).append(result.requests * BATCH / seconds)
                        cpu.setdefault((form, name), []).append(used / (result.requests * BATCH))
        loads.append(host_load())
    _report(rates, cpu, args, calibration_s, loads)


def _report(
    rates: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    args: argparse.Namespace,
    calibration_s: float,
    loads: list[str],
) -> None:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    print(f"--seconds {args.seconds:g} --rounds {args.rounds}; {loads[0]} at start, {loads[-1]} at end; "
          f"monitor calibrated in {calibration_s:.1f} s")  # fmt: skip
    print(f"batches of {BATCH} events (1,000 float32 logits + 768-d embedding), 4 connections, over HTTP")
    print(f"{'form':<8} {'server':<13} {'events/s':>9} {'CPU us/ev':>10} {'of floor':>9} {'CPU of floor':>13} "
          f"{'vs json':>8}   rounds")  # fmt: skip
    for form in FORMS:
        floor_rate, floor_cpu = mean(rates[(form, "floor")]), mean(cpu[(form, "floor")])
        for name in SERVERS:
            rate, used = mean(rates[(form, name)]), mean(cpu[(form, name)])
            versus = rate / mean(rates[("json", name)])
            per_round = " ".join(f"{value:.0f}" for value in rates[(form, name)])
            print(f"{form:<8} {name:<13} {rate:>9,.0f} {used * 1e6:>10.1f} {rate / floor_rate:>9.2f} "
                  f"{floor_cpu / used:>13.2f} {versus:>7.1f}x   ({per_round})")  # fmt: skip
    print("targets: compact or binary >= 4x the JSON lists' events/s, and >= 0.9 of their floor")


if __name__ == "__main__":
    main()
