"""The monitor and the attribution worker of the demo, each on its own event loop in a thread.

In production they are processes of their own (``vai-sidecar monitor``, ``vai-sidecar worker``);
the demo runs the same classes in threads, so that one Ctrl-C stops everything in order and
nothing outlives the demo.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from collections.abc import Awaitable, Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from attribution_workers.main import build_runtimes, make_worker
from attribution_workers.settings import WorkerSettings
from monitors.fleet.process import MonitorProcess
from monitors.fleet.settings import MonitorSettings

log = logging.getLogger(__name__)

Body = Callable[[asyncio.Event], Awaitable[None]]
"""A role's life on its loop: run until the event is set, then clean up and return."""


class LoopThread:
    """``body(stop)`` on its own event loop in a thread; :meth:`stop` sets ``stop`` and waits for it to return."""

    def __init__(self, name: str, body: Body, *, registry: CollectorRegistry, stop_timeout_s: float) -> None:
        self.name = name
        self.registry = registry
        self.stop_timeout_s = stop_timeout_s
        self.failed = False
        self._body = body
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._lock = threading.Lock()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the body to return, and wait up to ``stop_timeout_s`` for it (the demo then leaves it behind)."""
        with self._lock:
            self._stopping = True
            if self._loop is not None and self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.stop_timeout_s)
        if self._thread.is_alive():
            log.warning("%s still busy after %.0f s; leaving it behind", self.name, self.stop_timeout_s)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:
            log.exception("%s crashed", self.name)
            self.failed = True

    async def _run(self) -> None:
        stop = asyncio.Event()
        with self._lock:
            if self._stopping:
                return
            self._loop, self._stop = asyncio.get_running_loop(), stop
        try:
            await self._body(stop)
        finally:
            with self._lock:
                self._loop = None


def worker_thread(settings: WorkerSettings) -> LoopThread:
    """The attribution worker (models loaded here, before the thread starts); it finishes its batch on stop."""
    runtimes = build_runtimes(settings)
    registry = CollectorRegistry()

    async def body(stop: asyncio.Event) -> None:
        worker = make_worker(settings, runtimes, registry)
        for name, runtime in runtimes.items():
            log.info("worker explains %s on %s with %s", name, runtime.model.device, ", ".join(runtime.methods))
        try:
            await worker.run(stop)
        finally:
            await worker.aclose()
            log.info("worker stopped after %d explanations", worker.processed)

    return LoopThread("attribution-worker", body, registry=registry, stop_timeout_s=30.0)  # its batch ends first


def monitor_thread(settings: MonitorSettings) -> LoopThread:
    """The fleet monitor: it takes the model's lease, calibrates on the uploaded reference and watches the feed."""
    registry = CollectorRegistry()

    async def body(stop: asyncio.Event) -> None:
        await MonitorProcess(settings, registry=registry).run(stop)

    return LoopThread("monitor", body, registry=registry, stop_timeout_s=10.0)  # hands its leases back in < 1 s


def metrics_server(registry: CollectorRegistry, *, host: str, port: int) -> WSGIServer:
    """``/metrics`` of ``registry`` on ``port``, or on a free port when that one is taken (0: a free one)."""
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        log.warning("port %d is taken; serving those metrics on a free port instead", port)
        server, _ = start_http_server(0, addr=host, registry=registry)
    return server
