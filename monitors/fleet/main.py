"""``vai-sidecar monitor``: run a monitor process until SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from common.metrics_server import start_metrics_server
from monitors.fleet.served_metrics import ServedMetrics
from monitors.fleet.settings import MonitorSettings

if TYPE_CHECKING:
    from monitors.fleet.process import MonitorProcess

log = logging.getLogger(__name__)


def run_monitor(settings: MonitorSettings) -> int:
    if settings.redis_url is None:
        log.error("the monitor needs VAI_REDIS_URL: the Redis its sidecars publish to")
        return 2
    registry = CollectorRegistry()
    served = ServedMetrics(registry)
    if settings.monitor_metrics_port and not _serve_metrics(settings, served):
        return 2
    # The detectors' libraries (torch, alibi-detect: ~2.5 s) load once the port is ours: a refused start is quick.
    from monitors.drift.detectors import preload
    from monitors.fleet.process import MonitorProcess

    process = MonitorProcess(settings, registry=registry)
    served.exported = process.lease_round.exported  # a model's series only while its lease is surely held
    started = time.perf_counter()
    if preload(settings.drift):
        log.info("drift detectors (alibi-detect) loaded in %.1f s", time.perf_counter() - started)
    # Start-up's objects stay for the process's life: ~230,000 (torch among them), ~475,000 with the detectors
    # preloaded. Frozen out of the collector, a full collection no longer walks them (~140 ms each without the
    # detectors, ~280 ms with them, holding the GIL the lease renewals need).
    gc.freeze()
    asyncio.run(_run(process))
    return 0


def _serve_metrics(settings: MonitorSettings, registry: ServedMetrics) -> bool:
    """Serve ``/metrics``, or say in one line why it cannot be (a configuration error: the caller exits 2)."""
    try:
        start_metrics_server(settings.monitor_metrics_port, host=settings.host, registry=registry)
    except OSError as error:
        in_use = error.errno == errno.EADDRINUSE
        log.error(
            "VAI_MONITOR_METRICS_PORT (--metrics-port): cannot serve /metrics on %s port %d: %s%s",
            settings.host,
            settings.monitor_metrics_port,
            error.strerror or error,
            " (another monitor on this host, or a second sidecar's embedded one?): give each its own port, or 0 for "
            "no /metrics"
            if in_use
            else "",
        )
        return False
    return True


async def _run(process: MonitorProcess) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await process.run(stop)


def main(argv: list[str] | None = None) -> int:
    """``vai-sidecar monitor [--metrics-port N]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="vai-sidecar monitor",
        description="Drift, calibration and cohort quality for the whole fleet of each model it owns (settings: "
        "VAI_* environment variables and VAI_CONFIG_FILE, see the README).",
    )
    parser.add_argument("--metrics-port", type=int, dest="monitor_metrics_port", help="port of the monitor's /metrics")
    args = parser.parse_args(argv)
    overrides = {} if args.monitor_metrics_port is None else {"monitor_metrics_port": args.monitor_metrics_port}
    settings = MonitorSettings(**overrides)
    settings.configure_logging()
    return run_monitor(settings)
