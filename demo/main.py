"""``vai-sidecar demo``: the whole loop on a real model, every role in one process.

An embedded Redis; the digits CNN (trained once into ``.vai-data/models`` without the held-out
drift reference); the sidecar on ``--host``/``--port`` (``monitor="external"``: the demo runs the
monitor itself); the fleet monitor and an attribution worker, each on its own event loop in a
thread (:mod:`demo.roles`); and :class:`~demo.traffic.DigitsTraffic` replaying the digits test set,
clean at first and then corrupted (the drift phase). SIGINT/SIGTERM, or the end of ``--duration``,
stop the traffic first, then the server, the worker, the monitor and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import torch
import uvicorn

from common.embedded_redis import EmbeddedRedis
from demo import roles
from demo.models import digits
from demo.models.training import Split
from demo.settings import DATA_DIR, METHODS, MODEL, monitor_settings, sidecar_settings, worker_settings
from demo.traffic import DigitsTraffic
from service.app import create_app
from service.http.protocol import BoundedHttpToolsProtocol
from service.settings import SidecarSettings

log = logging.getLogger(__name__)

DEFAULT_DRIFT_AFTER_S = 60.0
"""When the drift phase starts if the demo runs until Ctrl-C (else after a third of ``--duration``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``vai-sidecar demo [--host H] [--port P] [--duration SECONDS] [--drift-after SECONDS]``."""
    parser = argparse.ArgumentParser(prog="vai-sidecar demo", description="The whole loop on the digits CNN.")
    parser.add_argument("--host", help="bind address (default VAI_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default VAI_PORT or 8000)")
    parser.add_argument(
        "--duration", type=float, default=0.0, metavar="SECONDS", help="stop after this long (default 0: until Ctrl-C)"
    )
    parser.add_argument(
        "--drift-after",
        type=float,
        metavar="SECONDS",
        help=f"when the drift phase starts (default {DEFAULT_DRIFT_AFTER_S:g}, or a third of --duration)",
    )
    args = parser.parse_args(argv)
    if args.duration < 0:
        parser.error("--duration must be 0 (until Ctrl-C) or more")
    if args.drift_after is not None and not 0 <= args.drift_after < math.inf:
        parser.error("--drift-after must be a number of seconds, 0 or more")
    overrides = {name: value for name in ("host", "port") if (value := getattr(args, name)) is not None}
    base = SidecarSettings(**overrides)
    check_role_settings(base)
    base.configure_logging()
    if base.open_without_auth:
        log.error("refusing to bind %s with auth off: set VAI_*_TOKENS or bind 127.0.0.1", base.host)
        return 2
    try:
        code = run_demo(base, duration_s=args.duration, drift_after=args.drift_after)
    except Exception:  # logged here: a thread left running could abort the process before Python prints it
        log.exception("the demo failed")
        code = 1
    return _leave(code)


def check_role_settings(base: SidecarSettings) -> None:
    """Build the monitor's and the worker's settings once before anything starts: they read the environment and the
    file too (``VAI_DRIFT__*``, ``VAI_WORKER_*``), and a mistake found when their threads start was a traceback
    after Redis and the model; raised here, ``vai-sidecar`` names it on one line. The Redis URL is never used."""
    unused = "redis://127.0.0.1:6379/0"  # the embedded Redis's is known only once it runs
    monitor_settings(base, redis_url=unused)
    worker_settings(base, redis_url=unused, model_path=DATA_DIR / "models" / digits.HELD_OUT_FILE_NAME)


def drift_after_s(duration_s: float | None, drift_after: float | None = None) -> float:
    """When the drift phase starts: ``drift_after`` when given, else a third of the run or the default."""
    if drift_after is not None:
        return drift_after
    return duration_s / 3 if duration_s else DEFAULT_DRIFT_AFTER_S


def run_demo(base: SidecarSettings, *, duration_s: float | None = None, drift_after: float | None = None) -> int:
    """Run until SIGINT/SIGTERM or for ``duration_s`` seconds (``None`` or 0: until a signal), with the drift
    phase from ``drift_after`` seconds on (see :func:`drift_after_s`)."""
    _quiet_torchscript()
    torch.set_num_threads(1)  # a tiny model: more intra-op threads only spin against each other
    demo = _Demo(duration_s or None, drift_after_s(duration_s or None, drift_after))
    previous = {signum: signal.signal(signum, demo.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            try:  # first, so a port in use is reported before anything else starts
                listener = stack.enter_context(_listen(base.host, base.port))
            except OSError as error:
                log.error("cannot listen on %s port %d: %s", base.host, base.port, error.strerror or error)
                return 1
            # A fresh Redis each run: the last run's drift alarms and drifted labels would show in this one's clean
            # phase (the calibration window is an hour).
            shutil.rmtree(DATA_DIR / "demo-redis", ignore_errors=True)
            redis = EmbeddedRedis(data_dir=DATA_DIR / "demo-redis", private=True)
            stack.callback(redis.stop)  # registered first: a signal during start() still stops it
            redis.start()
            model_path = _model_file(DATA_DIR / "models")
            urls: dict[str, str] = {}
            threads: list[roles.LoopThread] = []
            for name, thread, port in _roles(base, redis.url, model_path):
                stack.callback(thread.stop)  # stopped in reverse: the worker, then the monitor
                thread.start()
                server = roles.metrics_server(thread.registry, host=base.host, port=port)
                stack.callback(server.server_close)
                stack.callback(server.shutdown)
                urls[name] = f"http://{_display_host(base.host)}:{server.server_port}/metrics"
                threads.append(thread)
            settings = sidecar_settings(base, redis_url=redis.url)
            return demo.serve(_Parts(settings, tuple(threads), listener, model_path, urls))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _roles(base: SidecarSettings, redis_url: str, model_path: Path) -> Iterator[tuple[str, roles.LoopThread, int]]:
    monitor = monitor_settings(base, redis_url=redis_url)
    yield "monitor", roles.monitor_thread(monitor), monitor.monitor_metrics_port
    weights = digits.ensure_digits_weights(model_path)  # the eager model's, so the worker can hook its layers
    worker = worker_settings(base, redis_url=redis_url, model_path=model_path, weights_path=weights)
    yield "worker", roles.worker_thread(worker), worker.worker_metrics_port


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the demo takes SIGINT/SIGTERM itself, to stop the traffic before the server


@dataclass(frozen=True)
class _Parts:
    settings: SidecarSettings
    threads: tuple[roles.LoopThread, ...]
    listener: socket.socket
    model_path: Path
    metrics_urls: dict[str, str]

    @property
    def failed(self) -> bool:
        return any(thread.failed for thread in self.threads)


class _Demo:
    """The run's life: a signal before the server is up aborts the set-up; after, it stops in order."""

    def __init__(self, duration_s: float | None, drift_after_s: float) -> None:
        self.duration_s = duration_s
        self.drift_after_s = drift_after_s
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
            create_app(parts.settings),
            log_level=parts.settings.log_level,
            http=BoundedHttpToolsProtocol,
            access_log=False,
        )
        self._server = _Server(config)
        asyncio.run(self._serve(self._server, parts))
        return 1 if self.failed or parts.failed else 0

    async def _serve(self, server: _Server, parts: _Parts) -> None:
        serving = asyncio.create_task(server.serve(sockets=[parts.listener]))
        while not server.started:
            if serving.done():  # it could not start (uvicorn has logged why)
                await serving
                return
            await asyncio.sleep(0.05)
        port = parts.listener.getsockname()[1]
        base_url = f"http://{_display_host(parts.settings.host)}:{port}"
        split = digits.load_digits_split(hold_out_reference=True)
        traffic, stop_traffic = self._traffic(parts, base_url, split.test), threading.Event()
        admin = parts.settings.admin_tokens
        # The held-out part as the drift reference (never trained on, never replayed); the monitor calibrates
        # on it in the background.
        if split.reference is not None:
            await asyncio.to_thread(traffic.put_reference, split.reference, token=admin[0] if admin else None)
        replay = asyncio.create_task(asyncio.to_thread(traffic.run, stop_traffic))
        print(banner(base_url, parts.metrics_urls, self.duration_s, self.drift_after_s), flush=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.duration_s if self.duration_s else math.inf
        while not (self._stop_requested or parts.failed or loop.time() >= deadline):
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

    def _traffic(self, parts: _Parts, base_url: str, replayed: Split) -> DigitsTraffic:
        model = torch.jit.load(str(parts.model_path), map_location="cpu")  # type: ignore[no-untyped-call]
        tokens = parts.settings.ingest_tokens + parts.settings.admin_tokens
        return DigitsTraffic(
            base_url,
            model=model.eval(),
            split=replayed,
            drift_after_s=self.drift_after_s,
            token=tokens[0] if tokens else None,
        )


def banner(base_url: str, metrics_urls: dict[str, str], duration_s: float | None, drift_at: float) -> str:
    """What to open, and what the phases are."""
    until = f"for {duration_s:g} s" if duration_s else "until Ctrl-C"
    return "\n".join(
        [
            f"vai-sidecar demo: the digits CNN behind the sidecar at {base_url}, running {until}",
            f"  viewer        {base_url}/ui",
            f"  overview      {base_url}/ui/models/{MODEL}",
            f"  OpenAPI       {base_url}/openapi.json",
            f"  metrics       {base_url}/metrics",
            *(f"  {name:13} {url}" for name, url in metrics_urls.items()),
            f"  drift         {base_url}/v1/models/{MODEL}/drift",
            f"  explanations  {base_url}/v1/explanations?model={MODEL}",
            f"phases: 0-{drift_at:.0f} s clean digits test images at 40 events/s; from {drift_at:.0f} s drift: noise, "
            "blur and occlusion corrupt the inputs, confidence drops and the embeddings shift. Every 20th event, "
            f"low-confidence ones (< 0.6) and region=eu ones are sampled and explained with {', '.join(METHODS)}. "
            "The monitor's drift reference is a held-out third of the training data that the model never saw "
            "and the traffic never replays.",
        ]
    )


def _leave(code: int) -> int:
    """``code``, or exit at once with it when a thread is still running (everything else is stopped by now).

    A drift calibration cannot be interrupted (alibi-detect's bootstrap) and runs in a daemon thread; an
    interpreter that finalises while such a thread is inside torch kills it mid-C++, and the process
    aborts ("terminate called without an active exception", status 134) instead of exiting with ``code``.
    """
    running = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if not running:
        return code
    log.info("leaving without waiting for %s", ", ".join(running))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _model_file(cache_dir: Path) -> Path:
    if not (cache_dir / digits.HELD_OUT_FILE_NAME).exists():
        log.info("training the digits CNN once into %s (a few seconds)", cache_dir)
    return digits.ensure_digits_model(cache_dir, hold_out_reference=True)


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so a port in use fails early (``port`` 0 picks a free one). Its protocol is
    named: asyncio sets ``TCP_NODELAY`` on the connections it accepts only for a socket made with ``IPPROTO_TCP``, and
    without it every response after the first on a keep-alive connection waited ~40 ms (Nagle and delayed ACKs)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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
