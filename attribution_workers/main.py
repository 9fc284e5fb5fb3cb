"""``vai-sidecar worker``: build the runtimes from settings and work until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

import torch
from prometheus_client import CollectorRegistry, start_http_server

from attribution_workers.config import attribution_configs
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.worker import AttributionWorker, default_consumer
from common.redis import connect
from sampler.explanations import ExplanationStore
from service.settings import Settings

log = logging.getLogger(__name__)


def build_runtimes(settings: Settings) -> dict[str, ModelRuntime]:
    configs = attribution_configs(settings.models)
    if not configs:
        raise SystemExit("no model has an [models.NAME.attribution] section in VAI_CONFIG_FILE")
    return {name: ModelRuntime(name, config, device=settings.worker_device) for name, config in configs.items()}


def make_worker(
    settings: Settings, runtimes: dict[str, ModelRuntime], registry: CollectorRegistry, *, redis_timeout_s: float = 10.0
) -> AttributionWorker:
    if settings.redis_url is None:
        raise SystemExit(
            "the worker needs VAI_REDIS_URL (the sidecar's embedded Redis is private to it; "
            "`vai-sidecar demo` runs both on one)"
        )
    # Reads block for worker_block_ms, so the socket timeout must be longer than that.
    redis = connect(settings.redis_url, timeout_s=max(redis_timeout_s, settings.worker_block_ms / 1000 + 5))
    return AttributionWorker(
        redis,
        ExplanationStore(redis, ttl_s=settings.explanation_ttl_s),
        runtimes,
        WorkerMetrics(registry),
        consumer=settings.worker_consumer or default_consumer(),
        batch_size=settings.worker_batch_size,
        block_ms=settings.worker_block_ms,
        job_timeout_s=settings.worker_job_timeout_s,
        max_deliveries=settings.worker_max_deliveries,
        retry_after_ms=settings.worker_retry_after_ms,
        heartbeat_ttl_s=settings.worker_heartbeat_ttl_s,
    )


def run_worker(settings: Settings) -> int:
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
    asyncio.run(_work(worker))
    return 0


async def _work(worker: AttributionWorker) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await worker.run(stop)
    log.info("worker %s stopped after %d explanations", worker.consumer, worker.processed)
