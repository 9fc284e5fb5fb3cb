"""``vai-sidecar worker``: build the runtimes from settings and work until SIGTERM.

Exit status: 0 after SIGTERM/SIGINT; :data:`~attribution_workers.bounded.EXIT_TIMED_OUT` (3) when a
batch overran ``VAI_WORKER_JOB_TIMEOUT_S`` (its entries stay pending for the restarted worker). A Redis
outage does not end the worker: it waits for Redis, also at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal

import torch
from prometheus_client import CollectorRegistry, start_http_server

from attribution_workers.bounded import EXIT_TIMED_OUT, WorkTimedOut
from attribution_workers.config import attribution_configs
from attribution_workers.errors import AttributionError
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.settings import WorkerSettings
from attribution_workers.worker import AttributionWorker
from common.names import process_id
from common.redis import REDIS_FAILED, connect
from sampler.explanations import ExplanationStore

log = logging.getLogger(__name__)
CLOSE_S = 2.0
"""How long closing the Redis connections may take at exit."""


def build_runtimes(settings: WorkerSettings) -> dict[str, ModelRuntime]:
    configs = attribution_configs(settings.models)
    if not configs:
        raise SystemExit("no model has an [models.NAME.attribution] section in VAI_CONFIG_FILE")
    runtimes = {}
    for name, config in configs.items():
        try:
            runtimes[name] = ModelRuntime(name, config, device=settings.worker_device)
        except (AttributionError, OSError) as error:  # the config does not fit the model: say which, no traceback
            raise SystemExit(f"[models.{name}.attribution]: {error}") from error
    return runtimes


NO_REDIS = (
    "the worker needs VAI_REDIS_URL (the sidecar's embedded Redis is private to it; "
    "`vai-sidecar demo` runs both on one)"
)


def make_worker(
    settings: WorkerSettings, runtimes: dict[str, ModelRuntime], registry: CollectorRegistry
) -> AttributionWorker:
    if settings.redis_url is None:
        raise SystemExit(NO_REDIS)
    # Reads block for worker_block_ms, so the socket timeout must be longer than that.
    redis = connect(settings.redis_url, timeout_s=max(settings.redis_timeout_s, settings.worker_block_ms / 1000 + 5))
    return AttributionWorker(
        redis,
        ExplanationStore(redis, ttl_s=settings.explanation_ttl_s),
        runtimes,
        WorkerMetrics(registry),
        consumer=settings.worker_consumer or process_id(),
        batch_size=settings.worker_batch_size,
        block_ms=settings.worker_block_ms,
        job_timeout_s=settings.worker_job_timeout_s,
        max_deliveries=settings.worker_max_deliveries,
        retry_after_ms=settings.worker_retry_after_ms,
        heartbeat_ttl_s=settings.worker_heartbeat_ttl_s,
        dead_letter_max_entries=settings.worker_dead_letter_max_entries,
        dead_letter_ttl_s=settings.explanation_ttl_s,
        dead_letter_max_input_bytes=settings.worker_dead_letter_max_input_bytes,
    )


def run_worker(settings: WorkerSettings) -> int:
    if settings.redis_url is None:  # before the models load (minutes on a GPU for a large one)
        log.error(NO_REDIS)
        return 2
    if settings.worker_torch_threads:
        torch.set_num_threads(settings.worker_torch_threads)
    registry = CollectorRegistry()
    runtimes = build_runtimes(settings)
    worker = make_worker(settings, runtimes, registry)
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host, registry=registry)
    for name, runtime in runtimes.items():
        log.info(
            "worker %s explains %s on %s with %s",
            worker.consumer,
            name,
            runtime.model.device,
            ", ".join(runtime.methods),
        )
    # The imports and the loaded models (~280,000 objects) stay for the process's life: frozen out of the
    # collector, a full collection no longer walks them (~160 ms each, holding the GIL the heartbeat needs).
    gc.freeze()
    try:
        asyncio.run(_work(worker))
    except WorkTimedOut as error:
        log.critical("%s: exiting with status %d for the supervisor to restart the worker", error, EXIT_TIMED_OUT)
        logging.shutdown()
        os._exit(EXIT_TIMED_OUT)  # not sys.exit: the interpreter would wait for the hung thread
    return 0


async def _work(worker: AttributionWorker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await worker.run(stop)
    finally:
        with contextlib.suppress(TimeoutError, *REDIS_FAILED):
            async with asyncio.timeout(CLOSE_S):  # a hung Redis must not hold up the exit
                await worker.aclose()
    log.info("worker %s stopped after %d explanations", worker.consumer, worker.processed)


def main(argv: list[str] | None = None) -> int:
    """``vai-sidecar worker [--metrics-port N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="vai-sidecar worker", description="Explain sampled events with Captum.")
    parser.add_argument("--metrics-port", type=int, dest="worker_metrics_port", help="port of the worker's /metrics")
    args = parser.parse_args(argv)
    overrides = {} if args.worker_metrics_port is None else {"worker_metrics_port": args.worker_metrics_port}
    settings = WorkerSettings(**overrides)
    settings.configure_logging()
    return run_worker(settings)
