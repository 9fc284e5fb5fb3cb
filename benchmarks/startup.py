"""Sidecar start-up time and resident memory beside an import-only floor.

    .venv/bin/python -m benchmarks.startup [--rounds 5] [--events 2000] [--warmup 1]

Two kinds of process, started alternately ``--rounds`` times (the order flips every round,
after ``--warmup`` uncounted starts of each so that the page cache is warm for both):

* **floor**: a Python process that imports fastapi, uvicorn, numpy, redis (``redis.asyncio``),
  prometheus_client, msgspec, simdjson and pydantic_settings, and serves a trivial ``/livez``
  with uvicorn (uvloop, httptools: the sidecar's server settings);
* **serve**: ``python -m common.cli serve --port P`` with ``VAI_REDIS_URL`` pointing at one
  embedded Redis started by this script and ``VAI_MONITOR=external`` (no monitor child).

Figures: wall time from ``Popen`` to the first ``GET /livez`` answering 200 (polled every 5 ms),
and ``VmRSS`` of ``/proc/PID/status`` right after that answer. For serve also ``VmRSS`` after
``--events`` events (1000 logits + a 768-float embedding each, in batches of 100) and one second
for the feed writer to flush them: its steady state. Servers run pinned to CPU 0, this script and
Redis to CPU 1 (when there are two CPUs).

Before the first start the product's packages are byte-compiled (``compileall``, into their gitignored
``__pycache__``), as ``pip install .`` leaves them in the image: with ``PYTHONDONTWRITEBYTECODE`` set and
no cache, each serve start compiled its ~70 modules again (~60 ms on the development host), which the floor,
importing only compiled wheels, never pays.

Heavy modules: ``/proc/PID/maps`` of every serve process is searched for torch, matplotlib,
sklearn, scipy, alibi_detect and captum after start-up and after the events. Only compiled
extensions show in ``maps`` (alibi_detect and captum are pure Python and would not), so one more
serve process is run under ``python -X importtime``, which lists every module imported, lazily or
not, through the same start-up and events; its slowest imports are printed too.
"""

from __future__ import annotations

import argparse
import compileall
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.startup")

from benchmarks.ingest import make_template
from common.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("common", "service", "sampler", "monitors")
"""The packages ``vai-sidecar serve`` imports (the import-graph test keeps the others out)."""
HEAVY = ("torch", "matplotlib", "sklearn", "scipy", "alibi_detect", "captum")
START_TIMEOUT_S = 60.0
TARGET_RATIO = 1.5

FLOOR_CODE = """
import sys
import fastapi, uvicorn, numpy, redis.asyncio, prometheus_client, msgspec, simdjson, pydantic_settings
from fastapi import FastAPI, Response

app = FastAPI()

@app.get("/livez")
async def livez() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            loop="uvloop", http="httptools", access_log=False)
"""


@dataclass
class Start:
    seconds: float
    rss_kib: int
    rss_after_events_kib: int | None = None
    heavy_at_start: list[str] = field(default_factory=list)
    heavy_after_events: list[str] = field(default_factory=list)


def pin_to(cpu: int) -> Callable[[], None]:
    def pin() -> None:
        if len(os.sched_getaffinity(0)) >= 2:
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[cpu]})

    return pin


def get_status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def wait_live(process: subprocess.Popen[bytes], port: int, started: float) -> float:
    """Seconds from ``started`` until ``/livez`` answers 200."""
    while True:
        if get_status(port, "/livez") == 200:
            return time.perf_counter() - started
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before /livez answered")
        if time.perf_counter() - started > START_TIMEOUT_S:
            raise RuntimeError(f"/livez did not answer within {START_TIMEOUT_S:.0f} s")
        time.sleep(0.005)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def heavy_mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in HEAVY if re.search(rf"/{name}(/|\.libs/)", maps)]


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(command: list[str], env: dict[str, str], **kwargs: object) -> tuple[subprocess.Popen[bytes], float]:
    started = time.perf_counter()
    process = subprocess.Popen(  # type: ignore[call-overload]
        command, cwd=ROOT, env={**os.environ, **env}, preexec_fn=pin_to(0), **kwargs
    )
    return process, started


def live_or_explain(process: subprocess.Popen[bytes], port: int, started: float, err: IO[bytes]) -> float:
    try:
        return wait_live(process, port, started)
    except RuntimeError as error:
        stop(process)
        err.seek(0)
        raise RuntimeError(f"{error}; its stderr ends:\n{err.read()[-1500:].decode(errors='replace')}") from None


def floor_start() -> Start:
    port = free_port()
    with tempfile.TemporaryFile() as err:
        command = [sys.executable, "-c", FLOOR_CODE, str(port)]
        process, started = launch(command, {}, stdout=subprocess.DEVNULL, stderr=err)
        try:
            seconds = live_or_explain(process, port, started, err)
            return Start(seconds, rss_kib(process.pid))
        finally:
            stop(process)


def post_events(port: int, count: int, first_id: int) -> None:
    template = make_template(100)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        for batch in range(-(-count // 100)):
            connection.request(
                "POST",
                "/v1/events",
                body=template.fill(first_id + batch * 100),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            answer = response.read()
            if response.status != 202:
                raise RuntimeError(f"POST /v1/events answered {response.status}: {answer[:200]!r}")
    finally:
        connection.close()


def serve_env(redis_url: str) -> dict[str, str]:
    return {"VAI_REDIS_URL": redis_url, "VAI_MONITOR": "external", "VAI_LOG_LEVEL": "warning"}


def serve_start(redis_url: str, *, events: int, first_id: int) -> Start:
    port = free_port()
    command = [sys.executable, "-m", "common.cli", "serve", "--port", str(port)]
    with tempfile.TemporaryFile() as err:  # the "auth is off" warning, or why it failed
        process, started = launch(command, serve_env(redis_url), stderr=err)
        try:
            seconds = live_or_explain(process, port, started, err)
            result = Start(seconds, rss_kib(process.pid), heavy_at_start=heavy_mapped(process.pid))
            post_events(port, events, first_id)
            time.sleep(1.0)  # the feed writer flushes in the background
            result.rss_after_events_kib = rss_kib(process.pid)
            result.heavy_after_events = heavy_mapped(process.pid)
            children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout
            if children.split():
                print(f"  note: serve pid {process.pid} has children {children.split()} (not counted in its RSS)")
            return result
        finally:
            stop(process)


def importtime_check(redis_url: str, *, events: int, first_id: int) -> tuple[set[str], list[tuple[int, str]]]:
    """Heavy top-level packages imported by serve (start-up and events), and its slowest imports (cumulative µs)."""
    port = free_port()
    command = [sys.executable, "-X", "importtime", "-m", "common.cli", "serve", "--port", str(port)]
    with tempfile.TemporaryFile() as err:
        process, started = launch(command, serve_env(redis_url), stderr=err)
        try:
            wait_live(process, port, started)
            post_events(port, events, first_id)
            time.sleep(1.0)
        finally:
            stop(process)
        err.seek(0)
        lines = err.read().decode(errors="replace").splitlines()
    imported: set[str] = set()
    slowest: list[tuple[int, str]] = []
    for line in lines:
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if not match:
            continue
        name = match.group(4)
        imported.add(name.split(".")[0])
        if len(match.group(3)) <= 1:  # imported at top level
            slowest.append((int(match.group(2)), name))
    return {name for name in HEAVY if name in imported}, sorted(slowest, reverse=True)[:8]


def median(values: list[float]) -> float:
    return statistics.median(values)


def compile_product() -> list[str]:
    """Write the bytecode cache of the product's packages, as an installed package has it.

    ``pip install .`` (the image) compiles every module at install time, and the floor's libraries come
    compiled from their wheels; an editable checkout is compiled on first import and cached, unless the
    environment sets ``PYTHONDONTWRITEBYTECODE`` (this development host does; the image does too, over the
    bytecode pip wrote): then every start compiled ~70 modules again, ~60 ms of the checkout, not the sidecar."""
    packages = [name for name in PRODUCT if (ROOT / name).is_dir()]
    for name in packages:
        if not compileall.compile_dir(ROOT / name, quiet=1):
            raise RuntimeError(f"could not compile {name}")
    return packages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=2000, help="events ingested before the steady-state RSS")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted starts of each kind first")
    args = parser.parse_args()
    pin_to(1)()
    compiled = compile_product()
    print(f"bytecode of {', '.join(compiled)} compiled first (as `pip install .` does for the image)")
    print(f"host load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    floors: list[Start] = []
    serves: list[Start] = []
    next_id = 0
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data_dir=Path(data), append_only=False) as redis_server:
        for _ in range(args.warmup):
            floor_start()
            serve_start(redis_server.url, events=100, first_id=next_id)
            next_id += 1_000_000
        for round_index in range(args.rounds):
            order = ("floor", "serve") if round_index % 2 == 0 else ("serve", "floor")
            for kind in order:
                if kind == "floor":
                    floors.append(floor_start())
                else:
                    serves.append(serve_start(redis_server.url, events=args.events, first_id=next_id))
                    next_id += 1_000_000
            f, s = floors[-1], serves[-1]
            print(
                f"round {round_index + 1}: floor {f.seconds * 1000:6.0f} ms {f.rss_kib / 1024:6.1f} MiB | "
                f"serve {s.seconds * 1000:6.0f} ms {s.rss_kib / 1024:6.1f} MiB, "
                f"{(s.rss_after_events_kib or 0) / 1024:6.1f} MiB after {args.events} events"
                f"   (load {os.getloadavg()[0]:.2f})"
            )
        heavy_imported, slowest = importtime_check(redis_server.url, events=args.events, first_id=next_id)
    report(floors, serves, events=args.events, heavy_imported=heavy_imported, slowest=slowest)
    print(f"host load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")


def report(
    floors: list[Start],
    serves: list[Start],
    *,
    events: int,
    heavy_imported: set[str],
    slowest: list[tuple[int, str]],
) -> None:
    floor_s, serve_s = median([f.seconds for f in floors]), median([s.seconds for s in serves])
    floor_rss, serve_rss = median([f.rss_kib for f in floors]) / 1024, median([s.rss_kib for s in serves]) / 1024
    steady = median([s.rss_after_events_kib or 0 for s in serves]) / 1024
    print(f"\nmedians of {len(floors)} rounds:")
    print(f"  {'':24} {'floor':>10} {'serve':>10} {'serve/floor':>12}   target")
    print(
        f"  {'time to /livez 200':24} {floor_s * 1000:8.0f} ms {serve_s * 1000:7.0f} ms"
        f" {serve_s / floor_s:12.2f}   <= {TARGET_RATIO}"
    )
    print(
        f"  {'RSS after start-up':24} {floor_rss:7.1f} MiB {serve_rss:6.1f} MiB"
        f" {serve_rss / floor_rss:12.2f}   <= {TARGET_RATIO}"
    )
    print(f"  {f'RSS after {events} events':24} {'':>10} {steady:6.1f} MiB {steady / floor_rss:12.2f}   (steady state)")
    at_start = sorted({name for s in serves for name in s.heavy_at_start})
    after = sorted({name for s in serves for name in s.heavy_after_events})
    print(f"heavy modules mapped in serve (/proc/PID/maps, of {', '.join(HEAVY)}):")
    print(f"  after start-up: {', '.join(at_start) or 'none'}; after {events} events: {', '.join(after) or 'none'}")
    print(f"  imported at all (python -X importtime, start-up + events): {', '.join(sorted(heavy_imported)) or 'none'}")
    print("  slowest top-level imports of serve (cumulative):")
    for micros, name in slowest:
        print(f"    {micros / 1000:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
