"""``vai-sidecar``: the command line."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
from collections.abc import Sequence

import uvicorn

from common.embedded_redis import EmbeddedRedis
from service.app import create_app
from service.settings import Settings

log = logging.getLogger("vai_sidecar")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vai-sidecar", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP sidecar (embedded Redis unless VAI_REDIS_URL)")
    serve.add_argument("--host", help="bind address (default VAI_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default VAI_PORT or 8000)")
    worker = commands.add_parser("worker", help="run an attribution worker (needs VAI_REDIS_URL and a config file)")
    worker.add_argument("--metrics-port", type=int, dest="worker_metrics_port", help="port of the worker's /metrics")
    demo = commands.add_parser(
        "demo", help="the whole loop on the digits CNN: embedded Redis, sidecar, worker and replayed traffic"
    )
    demo.add_argument("--host", help="bind address (default VAI_HOST or 127.0.0.1)")
    demo.add_argument("--port", type=int, help="port (default VAI_PORT or 8000)")
    demo.add_argument(
        "--duration", type=float, default=0.0, metavar="SECONDS", help="stop after this long (default 0: until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    if getattr(args, "duration", 0.0) < 0:
        parser.error("--duration must be 0 (until Ctrl-C) or more")
    names = ("host", "port", "worker_metrics_port")
    overrides = {name: value for name in names if (value := getattr(args, name, None)) is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "worker":
        from attribution_workers.main import run_worker  # torch is only imported by the commands that need it

        return run_worker(settings)
    if args.command == "demo":
        if _refuses_open_bind(settings):
            return 2
        from service.demo import run_demo  # torch is only imported by the commands that need it

        return run_demo(settings, duration_s=args.duration)
    return serve_forever(settings)


def serve_forever(settings: Settings) -> int:
    if _refuses_open_bind(settings):
        return 2
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; turning them into SystemExit
    # lets the embedded Redis below be stopped instead of orphaned.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    embedded: EmbeddedRedis | None = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(data_dir=settings.redis_data_dir).start()
        settings = settings.model_copy(update={"redis_url": embedded.url})
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            loop="uvloop",
            http="httptools",
            access_log=False,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _refuses_open_bind(settings: Settings) -> bool:
    if settings.auth_enabled or _is_loopback(settings.host):
        return False
    log.error(
        "refusing to bind %s with auth off: set VAI_INGEST_TOKENS/VAI_READ_TOKENS/VAI_ADMIN_TOKENS or bind 127.0.0.1",
        settings.host,
    )
    return True


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
