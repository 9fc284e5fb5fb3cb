"""``vai-sidecar serve``: the sidecar, with an embedded Redis and monitor unless told to use external ones."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

import uvicorn
from prometheus_client import CollectorRegistry, Gauge

from common.embedded_redis import DataDirUnusable, EmbeddedRedis, die_with_parent
from monitors.fleet.settings import MonitorSettings
from service.app import create_app
from service.http.protocol import BoundedHttpToolsProtocol
from service.settings import SidecarSettings

log = logging.getLogger("vai_sidecar")
CRASH_LOOP_S = 10.0
"""An embedded child that exits sooner than this after its start is started again ever more slowly (up to 30 s)."""
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ [A-Z]+ [\w.]+: ")
"""The time, level and logger before a role's log message (``RoleSettings.configure_logging``)."""
CONFIGURATION_ERROR = 2
"""Exit status of a role refused by its settings (``common.cli``): an embedded monitor that exits with it would
only exit again, so it is not started again."""
GRACEFUL_SHUTDOWN_S = 10
"""How long a stopping sidecar waits for open requests before closing their connections (Kubernetes
waits 30 s by default before SIGKILL, and the buffers still have to be written after it)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vai-sidecar serve", description=__doc__)
    parser.add_argument("--host", help="bind address (default VAI_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default VAI_PORT or 8000)")
    args = parser.parse_args(argv)
    overrides = {name: value for name in ("host", "port") if (value := getattr(args, name)) is not None}
    settings = SidecarSettings(**overrides)
    settings.configure_logging()
    return serve_forever(settings)


def serve_forever(settings: SidecarSettings) -> int:
    if _refuses_open_bind(settings) or _refuses_monitor_settings(settings):
        return 2
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turning them into SystemExit
    # lets the embedded Redis below be stopped instead of orphaned.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    embedded: EmbeddedRedis | None = None
    monitor: EmbeddedMonitor | None = None
    stopping = threading.Event()
    registry = CollectorRegistry()
    if settings.redis_url is None:
        try:
            embedded = EmbeddedRedis(data_dir=settings.redis_data_dir, private=True).start()
        except DataDirUnusable as error:
            log.error("VAI_REDIS_DATA_DIR: %s", error)
            return 2
        settings = settings.model_copy(update={"redis_url": embedded.url})
        threading.Thread(target=embedded.watch, args=(stopping,), name="embedded-redis", daemon=True).start()
    try:
        if settings.monitors_enabled and settings.monitor == "embedded":
            monitor = EmbeddedMonitor(settings.redis_url or "", host=settings.host, registry=registry)
            threading.Thread(target=monitor.watch, args=(stopping,), name="embedded-monitor", daemon=True).start()
        app = create_app(settings, registry=registry)
        # What the imports and the app built stays for the process's life: out of the collector's way, a full
        # collection walks ~2,500 objects instead of ~90,000 (~7 instead of ~70 ms, one every ~2 s under load;
        # ~10% less CPU per event for batches of binary tensors over HTTP, in an alternated A/B). No
        # gc.collect() first: it found 5 objects to free and cost start-up 66 ms.
        gc.freeze()
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            loop="uvloop",
            http=BoundedHttpToolsProtocol,  # httptools, with bounds on a request's head
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    finally:  # each child before its watcher ends: one the watcher started again dies with that thread
        if monitor is not None:
            monitor.stop()
        if embedded is not None:
            embedded.stop()
        stopping.set()
    return 0


def start_monitor(redis_url: str, *, host: str) -> subprocess.Popen[bytes]:
    """``vai-sidecar monitor`` as a child on the same Redis (``VAI_MONITOR=embedded``); it dies with us.
    Its ``/metrics`` binds the sidecar's address, so whoever scrapes the sidecar reaches it too."""
    env = {**os.environ, "VAI_REDIS_URL": redis_url, "VAI_HOST": host}
    command = [sys.executable, "-m", "common.cli", "monitor"]
    log.info("starting the embedded monitor (metrics on port %s)", env.get("VAI_MONITOR_METRICS_PORT", "8002"))
    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent, stderr=subprocess.PIPE)


class EmbeddedMonitor:
    """The monitor child of ``VAI_MONITOR=embedded`` (:func:`start_monitor`), started again whenever it exits on
    its own: without it, a monitor that died left drift and calibration unwatched while the sidecar went on. One
    refused by its settings (exit status 2) is not: the error is logged once and ``vai_embedded_monitor_up``
    stays 0."""

    def __init__(self, redis_url: str, *, host: str, registry: CollectorRegistry) -> None:
        self._redis_url, self._host = redis_url, host
        self._up = Gauge(
            "vai_embedded_monitor_up",
            "1 while the monitor child of VAI_MONITOR=embedded runs; 0 while it waits to be started again, or "
            "for good after a configuration error (logged)",
            registry=registry,
        )
        self._stopped = False
        self._start()

    def _start(self) -> None:
        self.process = start_monitor(self._redis_url, host=self._host)
        self._stderr = _StderrTail(self.process.stderr)
        self._started_at = time.monotonic()
        self._up.set(1)

    def watch(self, stop: threading.Event, *, period_s: float = 1.0) -> None:
        """Until ``stop`` is set, or the child refuses its settings, in a thread of its own. A child started here
        dies with this thread (the parent-death signal is per thread): :meth:`stop` the child before setting
        ``stop``."""
        backoff_s = 0.0
        while not stop.wait(period_s):
            if self._stopped or self.process.poll() is None:
                continue
            self._up.set(0)
            if self.process.returncode == CONFIGURATION_ERROR:
                log.error(
                    "the embedded monitor exited with status 2, a configuration error; it is not started again "
                    "(fix the setting and restart serve): %s",
                    self._stderr.last_line(timeout_s=1.0) or "see its error above",
                )
                return
            lived_s = time.monotonic() - self._started_at
            backoff_s = 0.0 if lived_s > CRASH_LOOP_S else min(max(2 * backoff_s, 2.0), 30.0)
            log.error(
                "embedded monitor exited with %s after %.0f s; starting it again in %.0f s",
                self.process.returncode,
                lived_s,
                backoff_s,
            )
            if stop.wait(backoff_s) or self._stopped:
                return
            try:
                self._start()
            except Exception as error:  # this thread must outlive any failure: its child dies with it
                log.error("embedded monitor did not start again: %s", error)

    def stop(self) -> None:
        self._stopped = True
        stop_child(self.process)


class _StderrTail:
    """Copies a child's stderr to ours line by line, keeping the last one: the reason it gave for exiting."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        self._last = b""
        self._thread = threading.Thread(target=self._copy, args=(pipe,), name="embedded-monitor-stderr", daemon=True)
        self._thread.start()

    def _copy(self, pipe: IO[bytes] | None) -> None:
        if pipe is None:
            return
        with pipe:
            for line in pipe:
                if line.strip():
                    self._last = line
                try:
                    sys.stderr.buffer.write(line)
                    sys.stderr.buffer.flush()
                except (OSError, ValueError):  # our stderr is gone: keep draining, or the child blocks writing
                    pass

    def last_line(self, *, timeout_s: float) -> str:
        """The last line the child wrote, once its pipe is drained (or ``timeout_s`` has passed)."""
        self._thread.join(timeout_s)
        return _LOG_PREFIX.sub("", self._last.decode(errors="replace").strip())


def stop_child(process: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _refuses_open_bind(settings: SidecarSettings) -> bool:
    if not settings.open_without_auth:
        if settings.kserve_open:
            log.warning(
                "POST /v1/cloudevents takes events without a token (VAI_KSERVE_OPEN): let a NetworkPolicy admit "
                "only the InferenceServices' pods to port %s",
                settings.port,
            )
        return False
    log.error(
        "refusing to bind %s with auth off: set VAI_INGEST_TOKENS/VAI_READ_TOKENS/VAI_ADMIN_TOKENS (KServe's logger "
        "needs none with VAI_KSERVE_OPEN=true) or bind 127.0.0.1",
        settings.host,
    )
    return True


def _refuses_monitor_settings(settings: SidecarSettings) -> bool:
    """The embedded monitor's settings, checked before anything starts (a bad one raises pydantic's
    ``ValidationError``, reported by ``common.cli``): a monitor refused by them used to exit, be started again and
    exit again for ever while the sidecar looked healthy."""
    if not (settings.monitors_enabled and settings.monitor == "embedded"):
        return False
    port = MonitorSettings(host=settings.host).monitor_metrics_port
    if port == 0:
        return False
    if port == settings.port:
        log.error(
            "VAI_MONITOR_METRICS_PORT: %d is the sidecar's own port (VAI_PORT or --port): give the embedded "
            "monitor's /metrics another one (0: none)",
            port,
        )
        return True
    # With a shared Redis, the monitor of another sidecar on this host covers the models (the leases share them):
    # ours exits with status 2 and is not started again. A private Redis has no monitor but ours.
    if settings.redis_url is None and _listened_on(settings.host, port):
        log.error(
            "VAI_MONITOR_METRICS_PORT: port %d on %s is in use (the embedded monitor of another sidecar on this "
            "host?), and this sidecar's embedded Redis needs a monitor of its own: give it another port (0: none)",
            port,
            settings.host,
        )
        return True
    return False


def _listened_on(host: str, port: int) -> bool:
    """Whether a server listens on ``host:port``: bound as the monitor's HTTP server binds it (address reuse on,
    so a port left in TIME_WAIT reads as free)."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return False  # the monitor says what is wrong with the address
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
