"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import redis
import uvicorn
from prometheus_client import CollectorRegistry

from common.embedded_redis import free_port
from monitors.fleet.process import MonitorProcess
from monitors.fleet.settings import MonitorSettings

if TYPE_CHECKING:
    import torch
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from service.sidecar import Sidecar


def event(request_id: str = "r1", *, model: str = "digits", **fields: Any) -> dict[str, Any]:
    """A valid event; ``fields`` override or add to it."""
    body: dict[str, Any] = {"model": model, "request_id": request_id, "logits": [4.0, 1.0, 0.5]}
    body.update(fields)
    return body


T = TypeVar("T")

StreamEntry = tuple[bytes, dict[bytes, bytes]]
"""One stream entry as a client without ``decode_responses`` returns it: id and fields, all bytes."""


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    *,
    timeout_s: float = 10.0,
    what: str = "condition",
    interval_s: float = 0.01,
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``.

    The short pause between polls leaves the CPU to the process being waited for (2-core runners).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def redis_servers_in(directory: Path) -> list[int]:
    """Pids of processes whose working directory is ``directory`` (redis-server chdirs into its ``--dir``).

    ``pgrep -f DIR`` cannot find them: redis-server rewrites its command line to ``redis-server HOST:PORT``.
    """
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == directory.resolve():
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


@contextmanager
def paused_redis(data_dir: Path) -> Iterator[None]:
    """The redis-server of ``data_dir`` stopped (SIGSTOP) inside the block: connections stay open, nothing is
    answered, as when Redis hangs."""
    (pid,) = redis_servers_in(data_dir)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def full_redis(client: redis.Redis) -> Iterator[None]:
    """Redis out of memory inside the block (``maxmemory`` 1, ``noeviction``: every write that needs memory is
    refused with ``OOM``), as a full Redis is; its own limit and policy are back after the block (the session's
    server is shared)."""
    before = client.config_get("maxmemory*")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        yield
    finally:
        client.config_set("maxmemory", str(before["maxmemory"]))
        client.config_set("maxmemory-policy", str(before["maxmemory-policy"]))


FAST_DRIFT: dict[str, Any] = {
    "reference_events": 400,
    "max_reference": 300,
    "pca_components": 16,
    "ert": 100,
    "window_size": 10,
    "window_events": 100,
    "window_tests": False,
}
"""Drift settings that calibrate in well under a second on small references (no window tests, ERT 100), for tests
that need the monitor watching, not the detectors' power."""


REPO = Path(__file__).parents[1]


def role_env(**values: str) -> dict[str, str]:
    """The environment of a role process: ours without any ``VAI_*``, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
    env.update({"PYTHONPATH": str(REPO), "VAI_LOG_LEVEL": "warning", **values})
    return env


def start_role(role: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """``vai-sidecar ROLE ARGS`` as a real process."""
    return subprocess.Popen([sys.executable, "-m", "common.cli", role, *args], cwd=cwd, env=env)


PROCESS_DRIFT_ENV = {
    "VAI_DRIFT__REFERENCE_EVENTS": "400",
    "VAI_DRIFT__MAX_REFERENCE": "200",
    "VAI_DRIFT__ERT": "100",
    "VAI_DRIFT__WINDOW_SIZE": "20",
    "VAI_DRIFT__PCA_COMPONENTS": "8",
    "VAI_DRIFT__WINDOW_TESTS": "false",
}
"""Drift settings of the multi-process fleet tests: a small warm-up, a short ERT, no window tests."""


def start_fleet_monitor(
    redis_url: str, name: str, *, cwd: Path, **settings: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A ``vai-sidecar monitor`` process named ``name`` on a free metrics port, with short leases and reports (2 s,
    0.5 s; the window of recent predictions stored with each report that changed it) for take-over tests, and
    ``settings`` (``VAI_*`` names); the process and its ``/metrics`` URL."""
    port = free_port()
    env = role_env(
        VAI_REDIS_URL=redis_url,
        VAI_MONITOR_ID=name,
        VAI_MONITOR_METRICS_PORT=str(port),
        VAI_MONITOR_LEASE_TTL_S="2",
        VAI_MONITOR_REPORT_S="0.5",
        VAI_MONITOR_RECENT_SAVE_S="0",
        **settings,
    )
    return start_role("monitor", env=env, cwd=cwd), f"http://127.0.0.1:{port}/metrics"


def wait_http(url: str, process: subprocess.Popen[bytes], *, timeout_s: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``process`` exits."""
    import httpx

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{process.args!r} exited with {process.returncode}")
        try:
            return httpx.get(url, timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout_s=timeout_s, what=f"{url} to answer", interval_s=0.05)


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class MonitorRunner:
    """``MonitorProcess`` instances on the test Redis, each on its own event loop in a thread."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._loops: dict[int, tuple[asyncio.AbstractEventLoop, threading.Thread]] = {}
        self.started: list[MonitorProcess] = []

    def start(self, *, registry: CollectorRegistry | None = None, **overrides: Any) -> MonitorProcess:
        values: dict[str, Any] = {
            "redis_url": self._redis_url,
            "monitor_metrics_port": 0,
            "monitor_lease_ttl_s": 1.0,
            "monitor_status_s": 0.1,
            "monitor_report_s": 0.1,
            "monitor_recent_save_s": 0.0,  # stored with every report that changed it: what a successor restores
        }
        values.update(overrides)
        process = MonitorProcess(MonitorSettings(**values), registry=registry or CollectorRegistry())
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"monitor-{len(self.started)}", daemon=True)
        thread.start()
        asyncio.run_coroutine_threadsafe(process.start(), loop).result(30)
        self._loops[id(process)] = (loop, thread)
        self.started.append(process)
        return process

    def stop(self, process: MonitorProcess) -> None:
        """Stop one (giving its leases back); again is harmless."""
        loop, thread = self._loops[id(process)]
        if not process.stopped:
            asyncio.run_coroutine_threadsafe(process.stop(), loop).result(30)
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    def loop_of(self, process: MonitorProcess) -> asyncio.AbstractEventLoop:
        """The event loop ``process`` runs on."""
        return self._loops[id(process)][0]

    def run(self, process: MonitorProcess, coroutine: Any) -> Any:
        """Run a coroutine on ``process``'s loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loops[id(process)][0]).result(30)


def binary_body(document: Any, sections: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A body in the Open Inference Protocol's binary tensor extension and its headers: the JSON ``document``
    followed by ``sections`` in order (their tensors carry ``parameters.binary_data_size`` already)."""
    header = json.dumps(document).encode()
    return header + b"".join(sections), {
        "inference-header-content-length": str(len(header)),
        "content-type": "application/octet-stream",
    }


def binary_tensor(array: Any, datatype: str) -> tuple[dict[str, Any], bytes]:
    """The v2 tensor object of the binary extension for ``array`` (a numpy array), and its section."""
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return {"shape": list(array.shape), "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}, raw


class _Server(uvicorn.Server):
    """uvicorn that says when it is listening (or gave up), so the test waits on an event, not a clock."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()


@contextmanager
def serve_app(app: Any, *, http: type[asyncio.Protocol] | str = "auto") -> Iterator[str]:
    """Run ``app`` (lifespan included) on a free loopback port in a thread, with uvicorn's ``http`` protocol;
    yield its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, log_level="warning", ws="none", lifespan="on", http=http))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        if not (server.ready.wait(timeout=30) and server.started):
            raise AssertionError("uvicorn did not start")
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def drain_worker(
    settings: Any,
    done: Callable[[], bool],
    *,
    registry: CollectorRegistry | None = None,
    before: Callable[[], object] | None = None,
    timeout_s: float = 60.0,
) -> None:
    """Run an in-process attribution worker (``WorkerSettings``; its own event loop and Redis client) step by step
    until ``done()``, after ``before()`` once its groups exist; an exception out of a step fails the test."""
    from attribution_workers.main import build_runtimes, make_worker

    async def loop() -> None:
        worker = make_worker(settings, build_runtimes(settings), registry or CollectorRegistry())
        try:
            await worker.ensure_groups()
            if before is not None:
                before()
            deadline = time.monotonic() + timeout_s
            while not done():
                if time.monotonic() > deadline:
                    raise AssertionError("the worker did not finish in time")
                await worker.step()
        finally:
            await worker.aclose()

    asyncio.run(loop())


# redis-py types each reply for both ``decode_responses`` modes (and RESP2/RESP3) as one union; the test
# clients never decode, so these narrow the replies the tests read to what Redis sends them.


def stream_entries(client: redis.Redis, stream: str) -> list[StreamEntry]:
    """``XRANGE stream - +``: every entry, oldest first."""
    return cast(list[StreamEntry], client.xrange(stream))


def read_group(
    client: redis.Redis, group: str, consumer: str, stream: str, *, count: int | None = None
) -> list[tuple[bytes, list[StreamEntry]]]:
    """``XREADGROUP`` of new entries (``>``) from one stream: ``[(stream, entries)]``, empty when there are none."""
    return cast(list[tuple[bytes, list[StreamEntry]]], client.xreadgroup(group, consumer, {stream: ">"}, count=count))


def hash_field(client: redis.Redis, key: str | bytes, field: str) -> bytes | None:
    """``HGET``; ``None`` when the key or field is missing."""
    value = client.hget(key, field)
    assert value is None or isinstance(value, bytes), f"a decoding client? {value!r}"
    return value


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.load``, which torch leaves unannotated."""
    import torch

    load: Callable[[str], torch.jit.ScriptModule] = torch.jit.load
    return load(str(path))


def hash_all(client: redis.Redis, key: str) -> dict[bytes, bytes]:
    """``HGETALL``: every field of the hash, empty when the key is missing."""
    return cast(dict[bytes, bytes], client.hgetall(key))


def app_of(client: TestClient) -> FastAPI:
    """The app behind ``client`` (``TestClient`` types it as any ASGI app)."""
    from fastapi import FastAPI

    assert isinstance(client.app, FastAPI)
    return client.app


def sidecar_of(client: TestClient) -> Sidecar:
    """The running app's ``Sidecar`` (the lifespan keeps it in ``app.state``)."""
    from service.sidecar import Sidecar

    sidecar = app_of(client).state.sidecar
    assert isinstance(sidecar, Sidecar)
    return sidecar


def summarise_rows(rows: list[Any], *, from_logits: bool) -> list[tuple[int, float, float]]:
    """``service.events.scores.summarise_matrix`` of equally long score vectors, one (predicted, confidence, margin)
    per vector: what the sidecar computes for each event of a request."""
    import numpy as np

    from service.events.scores import summarise_matrix

    found = summarise_matrix(np.concatenate(rows).reshape(len(rows), -1), from_logits=from_logits, overwrite=True)
    return list(zip(*found, strict=True))
