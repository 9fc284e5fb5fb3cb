"""Ingest throughput and latency of the sidecar beside a bare FastAPI + orjson floor.

    .venv/bin/python -m benchmarks.ingest [--seconds 8] [--rounds 2]

Events carry 1000 logits and a 768-float embedding, in batches of 100 and one per
request. Three servers, each one uvicorn process pinned to CPU 0 (uvloop,
httptools):

* the floor: a bare FastAPI endpoint that parses the body with orjson;
* the sidecar with its monitors off (``VAI_MONITORS_ENABLED=false``);
* the sidecar as deployed by default, monitors on, with ``VAI_MONITOR=external``:
  every accepted event becomes a monitoring record that a background task writes
  to Redis (the prediction record that waits for a delayed label and, within
  ``VAI_MONITOR_MAX_PER_SECOND``, an entry of the drift feed).

Beside it runs one real ``vai-sidecar monitor`` process, which reads the drift
feed (and deletes what it read). It is pinned to CPU 1 with the load generator
and Redis at the lowest CPU priority (nice 19: in a deployment it has machines
of its own; here it gets what the load generator and Redis leave) and is never
paused (it would lose its lease and take the model over again). It gets a drift
reference (2,000 rows like the traffic's embeddings) through the sidecar, and
measuring starts once its detectors are calibrated; its CPU share, the records
it examined and the feed left in Redis are printed.

Phases rotate floor, monitors off, monitors on for ``--rounds`` rounds, after a
one-second warm-up of each. The servers not being measured are paused
(SIGSTOP), so that background work of one is charged to it and not to the
next phase. Each server's CPU time is read from /proc around its phases: CPU
per event is the figure the host's other load changes least. After each
monitors-on phase the sidecar runs unloaded for ``--drain`` seconds, so that
records its writer still held reach Redis before it is paused. The writer's
figures come from the sidecar's ``/metrics`` (``vai_events_total``,
``vai_feed_records_written_total``, ``vai_feed_records_dropped_total``)
read just before and just after each monitors-on phase, and again after the
drain.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import redis

from benchmarks import loadgen
from common import keys
from common.embedded_redis import EmbeddedRedis

SLOT = b"@" * 12
ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench"


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


def cpus() -> tuple[int, int]:
    """The servers' CPU and the one of the load generator, Redis and the monitor (the same on a one-core host)."""
    available = sorted(os.sched_getaffinity(0))
    return available[0], available[1 if len(available) >= 2 else 0]


def host_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


@contextmanager
def started(
    command: list[str], ready_url: str, env: dict[str, str], *, cpu: int, nice: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    def place() -> None:
        os.sched_setaffinity(0, {cpu})
        os.nice(nice)

    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, preexec_fn=place)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(ready_url, timeout=0.5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{command} did not start") from None
                time.sleep(0.1)
        yield process
    finally:
        process.send_signal(signal.SIGCONT)  # a paused process would not act on SIGTERM
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def only(running: set[subprocess.Popen[bytes]], processes: list[subprocess.Popen[bytes]]) -> None:
    """Let ``running`` run and pause the other processes."""
    for process in processes:
        process.send_signal(signal.SIGCONT if process in running else signal.SIGSTOP)


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


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a ``/metrics`` page, keyed by name and label set."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **where: str) -> float:
    wanted = set(where.items())
    return sum(value for (sample, labels), value in samples.items() if sample == name and wanted <= labels)


def by_label(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, *label_names: str
) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            found = dict(labels)
            key = tuple(found.get(label, "") for label in label_names)
            out[key] = out.get(key, 0.0) + value
    return out


def calibrated(port: int, *, timeout_s: float = 300.0) -> float:
    """Give the monitor a drift reference (2000 rows like the traffic's embeddings) through the sidecar and wait
    until its detectors are calibrated, so that steady state is what gets measured. Returns the seconds taken."""
    started_at = time.monotonic()
    rng = np.random.default_rng(1)
    reference = {"embeddings": rng.normal(0.0, 1.0, (2000, 768)).round(6).tolist()}
    response = httpx.put(f"http://127.0.0.1:{port}/v1/models/{MODEL}/reference", json=reference, timeout=60)
    response.raise_for_status()
    while time.monotonic() - started_at < timeout_s:
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/models/{MODEL}/drift", timeout=5)
        if answer.status_code == 200:
            status = answer.json()
            if status.get("calibration_error"):
                raise RuntimeError(f"drift calibration failed: {status['calibration_error']}")
            if status["state"] == "monitoring":
                return time.monotonic() - started_at
        time.sleep(0.5)
    raise RuntimeError("the monitor did not calibrate in time")


@dataclass
class WriterPhase:
    """What the monitors-on sidecar's writer and the monitor did during one phase."""

    seconds: float
    events: float
    written: dict[tuple[str, ...], float]
    """Records written during the phase, by feed."""
    drained: dict[tuple[str, ...], float]
    """Records written in the unloaded drain after it, by feed."""
    dropped: dict[tuple[str, ...], float]
    """Records dropped during the phase and the drain, by feed and reason."""
    examined: float
    """Feed records the monitor examined during the phase and the drain."""
    feed_length: int
    """Entries left in the drift feed after the drain (the monitor's backlog in Redis)."""
    redis_mb: float


@dataclass
class Figures:
    results: dict[tuple[str, str], list[loadgen.Result]] = field(default_factory=dict)
    writer: dict[str, list[WriterPhase]] = field(default_factory=dict)
    cpu: dict[tuple[str, str], list[tuple[float, ...]]] = field(default_factory=dict)
    """Per phase: CPU seconds per second of the server measured and of the monitor."""
    calibration_s: float = 0.0
    loads: list[str] = field(default_factory=list)


WRITTEN, DROPPED, EVENTS = "vai_feed_records_written_total", "vai_feed_records_dropped_total", "vai_events_total"
EXAMINED = "vai_monitor_records_examined_total"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--drain", type=float, default=1.0, help="unloaded seconds after each monitors-on phase")
    args = parser.parse_args()
    server_cpu, client_cpu = cpus()
    os.sched_setaffinity(0, {client_cpu})  # Redis, started from here, inherits it
    batch, single = make_template(100), make_template(1)
    floor_port, bare_port, sidecar_port, monitor_port = distinct_ports(4)
    sidecar_env = {"VAI_LOG_LEVEL": "warning", "VAI_COHORT_KEYS": "region,device"}
    uvicorn_flags = ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
    serve = [sys.executable, "-m", "common.cli", "serve", "--port"]
    figures = Figures(loads=[host_load()])
    with (
        tempfile.TemporaryDirectory() as data,
        EmbeddedRedis(data_dir=Path(data)) as redis_server,
        started(
            [sys.executable, "-m", "uvicorn", "benchmarks.floor:app", "--port", str(floor_port), *uvicorn_flags],
            f"http://127.0.0.1:{floor_port}/docs",
            {},
            cpu=server_cpu,
        ) as floor,
        started(
            [*serve, str(bare_port)],
            f"http://127.0.0.1:{bare_port}/docs",
            {**sidecar_env, "VAI_REDIS_URL": redis_server.url, "VAI_MONITORS_ENABLED": "false"},
            cpu=server_cpu,
        ) as bare,
        started(
            [*serve, str(sidecar_port)],
            f"http://127.0.0.1:{sidecar_port}/docs",
            {**sidecar_env, "VAI_REDIS_URL": redis_server.url, "VAI_MONITOR": "external"},
            cpu=server_cpu,
        ) as sidecar,
        started(
            [sys.executable, "-m", "common.cli", "monitor"],
            f"http://127.0.0.1:{monitor_port}/metrics",
            {
                **sidecar_env,
                "VAI_REDIS_URL": redis_server.url,
                "VAI_MONITOR_METRICS_PORT": str(monitor_port),
            },
            cpu=client_cpu,
            nice=19,  # another machine's work in a deployment: here it gets what the load generator leaves
        ) as monitor,
        contextlib.closing(redis.Redis.from_url(redis_server.url)) as client,
    ):
        # The monitor is never paused: it would lose its lease (VAI_MONITOR_LEASE_TTL_S) and take the model over
        # again. Between monitors-on phases it has nothing to read.
        processes = [floor, bare, sidecar]
        only({sidecar}, processes)
        figures.calibration_s = calibrated(sidecar_port)
        servers = {
            "floor": (floor_port, floor),
            "monitors off": (bare_port, bare),
            "monitors on": (sidecar_port, sidecar),
        }
        next_id = 0
        for phase, template, connections in (("batch100", batch, 4), ("single", single, 8)):
            for port, process in servers.values():
                only({process}, processes)
                measure(port, template, connections=connections, seconds=1.0, first_id=next_id)  # warm-up
                next_id += 10_000_000
            for _ in range(args.rounds):
                for name, (port, process) in servers.items():
                    only({process}, processes)
                    if name == "monitors on":
                        time.sleep(args.drain)  # what the writer held from the warm-up or the last phase
                        before, examined_before = scrape(port), total(scrape(monitor_port), EXAMINED, model=MODEL)
                    cpu_before = cpu_s(process.pid), cpu_s(monitor.pid)
                    result = measure(port, template, connections=connections, seconds=args.seconds, first_id=next_id)
                    cpu_after = cpu_s(process.pid), cpu_s(monitor.pid)
                    next_id += 10_000_000
                    figures.results.setdefault((phase, name), []).append(result)
                    figures.cpu.setdefault((phase, name), []).append(
                        tuple((a - b) / args.seconds for a, b in zip(cpu_after, cpu_before, strict=True))
                    )
                    if name == "monitors on":
                        after = scrape(port)
                        time.sleep(args.drain)
                        drained = scrape(port)
                        examined = total(scrape(monitor_port), EXAMINED, model=MODEL) - examined_before
                        figures.writer.setdefault(phase, []).append(
                            WriterPhase(
                                seconds=args.seconds,
                                events=total(after, EVENTS) - total(before, EVENTS),
                                written=_minus(by_label(after, WRITTEN, "feed"), by_label(before, WRITTEN, "feed")),
                                drained=_minus(by_label(drained, WRITTEN, "feed"), by_label(after, WRITTEN, "feed")),
                                dropped=_minus(
                                    by_label(drained, DROPPED, "feed", "reason"),
                                    by_label(before, DROPPED, "feed", "reason"),
                                ),
                                examined=examined,
                                feed_length=int(client.xlen(keys.prediction_feed(MODEL))),
                                redis_mb=int(client.info("memory")["used_memory"]) / 2**20,
                            )
                        )
        figures.loads.append(host_load())
    report(figures, args)


def _minus(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value - before.get(key, 0.0)}


def report(figures: Figures, args: argparse.Namespace) -> None:
    results = figures.results

    def mean(phase: str, name: str, what: str) -> float:
        found = results[(phase, name)]
        if what == "rps":
            return sum(r.req_per_s for r in found) / len(found)
        return sum(r.percentile_ms(float(what)) for r in found) / len(found)

    def cpu(phase: str, name: str) -> str:
        """The server's CPU share, its CPU per event (what the host's other load changes least) and the monitor's."""
        shares = figures.cpu[(phase, name)]
        server = sum(share[0] for share in shares) / len(shares)
        monitor = sum(share[1] for share in shares) / len(shares)
        per_event = sum(
            share[0] / (r.req_per_s * per_request[phase])
            for share, r in zip(shares, results[(phase, name)], strict=True)
        ) / len(shares)
        return f"server CPU {server:4.0%} = {per_event * 1e6:4.0f} us/event, monitor CPU {monitor:4.0%}"

    per_request = {"batch100": 100, "single": 1}
    names = ("floor", "monitors off", "monitors on")
    print(f"--seconds {args.seconds:g} --rounds {args.rounds}; {figures.loads[0]} at start, {figures.loads[-1]} at end")
    print(f"monitor calibrated {figures.calibration_s:.1f} s after the reference was uploaded")
    floor_eps = mean("batch100", "floor", "rps") * 100
    print("batches of 100 events (1000 logits + 768-float embedding each), 4 connections:")
    for name in names:
        eps = mean("batch100", name, "rps") * 100
        per_round = " ".join(f"{r.req_per_s * 100:.0f}" for r in results[("batch100", name)])
        print(
            f"  {name:12} {eps:8.0f} events/s   ratio to floor {eps / floor_eps:.2f}   {cpu('batch100', name)}"
            f"   (rounds: {per_round})"
        )
    print("  target: monitors on / floor >= 0.9")
    print("single events, 8 connections:")
    floor_rps = mean("single", "floor", "rps")
    for name in names:
        rps = mean("single", name, "rps")
        per_round = " ".join(f"{r.req_per_s:.0f}" for r in results[("single", name)])
        print(
            f"  {name:12} {rps:8.0f} req/s   p50 {mean('single', name, '50'):6.2f} ms"
            f"   p99 {mean('single', name, '99'):6.2f} ms   ratio to floor {rps / floor_rps:.2f}"
            f"   {cpu('single', name)}"
            f"   (rounds: {per_round})"
        )
    print("  target: monitors on / floor >= 0.5")
    print("monitors on: the sidecar's feed writer and the monitor, per phase (per second of the phase):")
    for phase, phases in figures.writer.items():
        for index, w in enumerate(phases):
            written = sum(w.written.values())
            feeds = ", ".join(f"{feed} {count / w.seconds:.0f}" for (feed,), count in sorted(w.written.items()))
            drained = sum(w.drained.values())
            dropped = ", ".join(f"{feed}/{reason} {count:.0f}" for (feed, reason), count in sorted(w.dropped.items()))
            print(
                f"  {phase:8} round {index + 1}: events accepted {w.events / w.seconds:7.0f}/s; records written "
                f"{written / w.seconds:7.0f}/s ({feeds}); label_join written / events "
                f"{w.written.get(('label_join',), 0) / w.events if w.events else float('nan'):.3f}; "
                f"written in the {args.drain:g} s drain after {drained:.0f}; dropped {dropped or 'none'}"
            )
            print(
                f"           monitor examined {w.examined / w.seconds:6.0f}/s; "
                f"drift feed left in Redis {w.feed_length}; "
                f"Redis used memory {w.redis_mb:.0f} MiB"
            )


if __name__ == "__main__":
    main()
