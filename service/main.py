"""``vai-sidecar serve``: the sidecar, with an embedded Redis and monitor unless told to use external ones."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import uvicorn

from common.embedded_redis import EmbeddedRedis, die_with_parent
from service.app import create_app
from service.settings import SidecarSettings

log = logging.getLogger("vai_sidecar")
CRASH_LOOP_S = 10.0
"""An embedded child that exits sooner than this after its start is started again ever more slowly (up to 30 s)."""
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
    if _refuses_open_bind(settings):
        return 2
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turning them into SystemExit
    # lets the embedded Redis below be stopped instead of orphaned.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    embedded: EmbeddedRedis | None = None
    monitor: EmbeddedMonitor | None = None
    stopping = threading.Event()
    if settings.redis_url is None:
        embedded = EmbeddedRedis(data_dir=settings.redis_data_dir).start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
        threading.Thread(target=embedded.watch, args=(stopping,), name="embedded-redis", daemon=True).start()
    try:
        if settings.monitors_enabled and settings.monitor == "embedded":
            monitor = EmbeddedMonitor(settings.redis_url or "", host=settings.host)
            threading.Thread(target=monitor.watch, args=(stopping,), name="embedded-monitor", daemon=True).start()
        app = create_app(settings)
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
            http="httptools",
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
    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent)


class EmbeddedMonitor:
    """The monitor child of ``VAI_MONITOR=embedded`` (:func:`start_monitor`), started again whenever it exits on
    its own: without it, a monitor that died left drift and calibration unwatched while the sidecar went on."""

    def __init__(self, redis_url: str, *, host: str) -> None:
        self._redis_url, self._host = redis_url, host
        self.process = start_monitor(redis_url, host=host)
        self._started_at = time.monotonic()
        self._stopped = False

    def watch(self, stop: threading.Event, *, period_s: float = 1.0) -> None:
        """Until ``stop`` is set, in a thread of its own. A child started here dies with this thread (the
        parent-death signal is per thread): :meth:`stop` the child before setting ``stop``."""
        backoff_s = 0.0
        while not stop.wait(period_s):
            if self._stopped or self.process.poll() is None:
                continue
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
                self.process, self._started_at = start_monitor(self._redis_url, host=self._host), time.monotonic()
            except Exception as error:  # this thread must outlive any failure: its child dies with it
                log.error("embedded monitor did not start again: %s", error)

    def stop(self) -> None:
        self._stopped = True
        stop_child(self.process)


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


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
