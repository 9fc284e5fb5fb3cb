"""``vai-sidecar demo``: the whole loop on a real model, in one process.

An embedded Redis, the digits CNN (trained once into ``.vai-data/models``), the
sidecar on ``--host``/``--port``, an attribution worker on its own event loop in a
thread, and :class:`~service.traffic.DigitsTraffic` replaying the digits test set,
clean at first and then corrupted (the drift phase). SIGINT/SIGTERM, or the end of
``--duration``, stop the traffic first, then the server, the worker and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import uvicorn
from prometheus_client import CollectorRegistry, start_http_server

from attribution_workers.main import build_runtimes, make_worker
from attribution_workers.models import digits
from attribution_workers.runtime import ModelRuntime
from common.embedded_redis import EmbeddedRedis
from service.app import create_app
from service.settings import Settings
from service.traffic import DigitsTraffic

log = logging.getLogger(__name__)

DATA_DIR = Path(".vai-data")
"""Everything the demo keeps lives here, relative to the working directory."""
MODEL = "digits"
METHODS = ("gradcam", "integrated_gradients", "occlusion", "saliency", "gradient_shap")
SAMPLING: dict[str, Any] = {
    "every_n": 20,
    "confidence_below": 0.6,
    "flagged_cohorts": [{"region": "eu"}],
    "require_input": True,
    "max_per_second": 20,
}
DEFAULT_DRIFT_AFTER_S = 60.0
"""When the drift phase starts if the demo runs until Ctrl-C (else after a third of ``--duration``)."""


def demo_settings(base: Settings, *, redis_url: str, model_path: Path) -> Settings:
    """``base`` (environment and arguments) with the demo's Redis, policy and attribution section."""
    attribution = {
        "model": {"torchscript": str(model_path.resolve()), "input_shape": list(digits.INPUT_SHAPE), "num_classes": 10},
        "methods": list(METHODS),
        "ig_steps": 16,
        "shap_samples": 8,
        "fidelity_steps": 8,
        "fidelity_random_orders": 2,
        "sanity_every_s": 60,
    }
    return Settings.model_validate(
        {
            **base.model_dump(),
            "redis_url": redis_url,
            "redis_data_dir": DATA_DIR / "demo-redis",
            "cohort_keys": ("region", "device"),
            "models": {MODEL: {"sampling": SAMPLING, "attribution": attribution}},
            "worker_block_ms": 500,
        }
    )


def drift_after_s(duration_s: float | None) -> float:
    return duration_s / 3 if duration_s else DEFAULT_DRIFT_AFTER_S


def run_demo(base: Settings, *, duration_s: float | None = None) -> int:
    """Run until SIGINT/SIGTERM or for ``duration_s`` seconds (``None`` or 0: until a signal)."""
    _quiet_torchscript()
    torch.set_num_threads(1)  # a tiny model: more intra-op threads only spin against each other
    demo = _Demo(duration_s or None)
    previous = {signum: signal.signal(signum, demo.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            try:  # first, so a port in use is reported before anything else starts
                listener = stack.enter_context(_listen(base.host, base.port))
            except OSError as error:
                log.error("cannot listen on %s port %d: %s", base.host, base.port, error.strerror or error)
                return 1
            redis = EmbeddedRedis(data_dir=DATA_DIR / "demo-redis")
            stack.callback(redis.stop)  # registered first: a signal during start() still stops it
            redis.start()
            model_path = _model_file(DATA_DIR / "models")
            settings = demo_settings(base, redis_url=redis.url, model_path=model_path)
            worker = WorkerThread(settings, build_runtimes(settings))
            stack.callback(worker.stop)
            worker.start()
            metrics_server, _ = start_http_server(0, addr=settings.host, registry=worker.registry)
            stack.callback(metrics_server.server_close)
            stack.callback(metrics_server.shutdown)
            worker_url = f"http://{_display_host(settings.host)}:{metrics_server.server_port}"
            return demo.serve(_Parts(settings, worker, listener, model_path, worker_url))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class WorkerThread:
    """An attribution worker on its own event loop in a thread; :meth:`stop` lets it finish its batch."""

    def __init__(self, settings: Settings, runtimes: dict[str, ModelRuntime]) -> None:
        self.registry = CollectorRegistry()
        self.failed = False
        self._settings = settings
        self._runtimes = runtimes
        self._thread = threading.Thread(target=self._main, name="attribution-worker", daemon=True)
        self._lock = threading.Lock()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout_s: float = 30.0) -> None:
        with self._lock:
            self._stopping = True
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("attribution worker still busy after %.0f s; leaving it behind", timeout_s)

    def _main(self) -> None:
        try:
            asyncio.run(self._work())
        except Exception:
            log.exception("attribution worker crashed")
            self.failed = True

    async def _work(self) -> None:
        stop = asyncio.Event()
        with self._lock:
            if self._stopping:
                return
            self._loop, self._stop = asyncio.get_running_loop(), stop
        worker = make_worker(self._settings, self._runtimes, self.registry)
        for name, runtime in self._runtimes.items():
            log.info("worker explains %s on %s with %s", name, runtime.model.device, ", ".join(runtime.methods))
        try:
            await worker.run(stop)
        finally:
            with self._lock:
                self._loop = None
            await worker.aclose()
            log.info("worker stopped after %d explanations", worker.processed)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the demo takes SIGINT/SIGTERM itself, to stop the traffic before the server


@dataclass(frozen=True)
class _Parts:
    settings: Settings
    worker: WorkerThread
    listener: socket.socket
    model_path: Path
    worker_url: str


class _Demo:
    """The run's life: a signal before the server is up aborts the set-up; after, it stops in order."""

    def __init__(self, duration_s: float | None) -> None:
        self.duration_s = duration_s
        self.failed = False
        self._server: _Server | None = None
        self._stop_requested = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        first, self._stop_requested = not self._stop_requested, True
        if self._server is None:
            if first:  # still setting up: unwind (which stops Redis); later signals must not cut the unwinding short
                raise SystemExit(0)
        elif not first:  # a second signal while serving: skip the graceful part
            self._server.should_exit = self._server.force_exit = True

    def serve(self, parts: _Parts) -> int:
        config = uvicorn.Config(
            create_app(parts.settings), log_level=parts.settings.log_level, http="httptools", access_log=False
        )
        self._server = _Server(config)
        asyncio.run(self._serve(self._server, parts))
        return 1 if self.failed or parts.worker.failed else 0

    async def _serve(self, server: _Server, parts: _Parts) -> None:
        serving = asyncio.create_task(server.serve(sockets=[parts.listener]))
        while not server.started:
            if serving.done():  # it could not start (uvicorn has logged why)
                await serving
                return
            await asyncio.sleep(0.05)
        port = parts.listener.getsockname()[1]
        base_url = f"http://{_display_host(parts.settings.host)}:{port}"
        traffic, stop_traffic = self._traffic(parts, base_url), threading.Event()
        admin = parts.settings.admin_tokens
        # The training split as the drift reference, so the detectors calibrate at once (in the background).
        await asyncio.to_thread(
            traffic.put_reference, digits.load_digits_split().train, token=admin[0] if admin else None
        )
        replay = asyncio.create_task(asyncio.to_thread(traffic.run, stop_traffic))
        print(banner(base_url, parts.worker_url, self.duration_s), flush=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.duration_s if self.duration_s else math.inf
        while not (self._stop_requested or parts.worker.failed or loop.time() >= deadline):
            if serving.done() or replay.done():
                break
            await asyncio.wait({serving, replay}, timeout=0.2)
        stop_traffic.set()
        try:
            await replay  # while the server still answers, so no request of the replay is cut off
        except Exception:
            log.exception("traffic replay crashed")
            self.failed = True
        server.should_exit = True
        await serving

    def _traffic(self, parts: _Parts, base_url: str) -> DigitsTraffic:
        model = torch.jit.load(str(parts.model_path), map_location="cpu")  # type: ignore[no-untyped-call]
        tokens = parts.settings.ingest_tokens + parts.settings.admin_tokens
        return DigitsTraffic(
            base_url,
            model=model.eval(),
            split=digits.load_digits_split().test,
            drift_after_s=drift_after_s(self.duration_s),
            token=tokens[0] if tokens else None,
        )


def banner(base_url: str, worker_url: str, duration_s: float | None) -> str:
    """What to open, and what the phases are."""
    drift_at = drift_after_s(duration_s)
    until = f"for {duration_s:g} s" if duration_s else "until Ctrl-C"
    return "\n".join(
        [
            f"vai-sidecar demo: the digits CNN behind the sidecar at {base_url}, running {until}",
            f"  viewer        {base_url}/ui",
            f"  API docs      {base_url}/docs",
            f"  metrics       {base_url}/metrics",
            f"  worker        {worker_url}/metrics",
            f"  explanations  {base_url}/v1/explanations?model={MODEL}",
            f"phases: 0-{drift_at:.0f} s clean digits test images at 40 events/s; from {drift_at:.0f} s drift: noise, "
            "blur and occlusion corrupt the inputs, confidence drops and the embeddings shift. Every 20th event, "
            "low-confidence ones (< 0.6) and region=eu ones are sampled and explained with 5 methods. "
            "The drift detectors use the training split as their reference.",
        ]
    )


def _model_file(cache_dir: Path) -> Path:
    if not (cache_dir / digits.FILE_NAME).exists():
        log.info("training the digits CNN once into %s (a few seconds)", cache_dir)
    return digits.ensure_digits_model(cache_dir)


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so a port in use fails early (``port`` 0 picks a free one)."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError:
        listener.close()
        raise
    return listener


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _quiet_torchscript() -> None:
    """torch 2.13 deprecates TorchScript on every call; the reference models are TorchScript by design."""
    for name in ("script", "save", "load"):
        warnings.filterwarnings("ignore", message=rf"`torch\.jit\.{name}` is deprecated", category=DeprecationWarning)
