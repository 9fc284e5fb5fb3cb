"""``vai-sidecar worker``: build the runtimes from settings and work until SIGTERM.

Exit status: 0 after SIGTERM/SIGINT; :data:`~attribution_workers.bounded.EXIT_TIMED_OUT` (3) when a
batch overran ``VAI_WORKER_JOB_TIMEOUT_S`` (its entries stay pending for the restarted worker). A Redis
outage does not end the worker: it waits for Redis, also at start.

A model that does not load does not stop the others: it is logged once at ERROR with the reason, exported as
``vai_worker_model_load_failed{model}`` = 1, and the worker explains the models that loaded. Status 1 at start
when none loads, when any does not under ``VAI_WORKER_REQUIRE_ALL_MODELS``, and when an attribution section does
not validate (a mistake in the file, refused as a whole before anything loads); 2 without ``VAI_REDIS_URL``, and
when its ``/metrics`` port cannot be bound (also checked before the models load).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
from collections.abc import Iterable

import torch
from prometheus_client import CollectorRegistry

from attribution_workers.bounded import EXIT_TIMED_OUT, WorkTimedOut
from attribution_workers.config import ConfigError, attribution_configs, section_name
from attribution_workers.errors import AttributionError
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.settings import WorkerSettings
from attribution_workers.worker import AttributionWorker
from common.metrics_server import start_metrics_server
from common.names import process_id
from common.redis import REDIS_FAILED, connect
from common.settings import SettingsError
from sampler.explanations import ExplanationStore

log = logging.getLogger(__name__)
CLOSE_S = 2.0
"""How long closing the Redis connections may take at exit."""


@dataclasses.dataclass(frozen=True)
class LoadFailure:
    """Why one model of the config could not be loaded."""

    reason: str
    """``[models.NAME.attribution]: what went wrong``."""
    error: Exception
    expected: bool
    """The error says what is wrong with the model or its files (:class:`AttributionError`, ``OSError``); otherwise
    (a factory raising something else, a bug) its traceback is worth logging too."""


@dataclasses.dataclass(frozen=True)
class LoadedModels:
    """What the worker could load of its config: the runtimes to serve, and why each other model failed."""

    runtimes: dict[str, ModelRuntime]
    failures: dict[str, LoadFailure]


def load_runtimes(settings: WorkerSettings) -> LoadedModels:
    """Load every model of the config that loads, and say why each other one did not.

    Per model: anything that goes wrong loading it (its file unreadable or not fitting the model, a factory that
    does not import or raises, a method or layer the model does not have, CUDA missing or out of memory). For the
    whole file (``SystemExit``): no ``attribution`` section at all, or a section that does not validate."""
    try:
        configs = attribution_configs(settings.models)
    except ConfigError as error:
        raise SystemExit(f"VAI_CONFIG_FILE: attribution sections that do not validate:\n{error}") from error
    if not configs:
        raise SystemExit("no model has an [models.NAME.attribution] section in VAI_CONFIG_FILE")
    runtimes: dict[str, ModelRuntime] = {}
    failures: dict[str, LoadFailure] = {}
    for name, config in configs.items():
        try:
            runtimes[name] = ModelRuntime(name, config, device=settings.worker_device)
        except Exception as error:  # one model's failure must not stop the worker for the others
            expected = isinstance(error, AttributionError | OSError)
            text = str(error) if expected else f"{type(error).__name__}: {error}"
            failures[name] = LoadFailure(f"{section_name(name)}: {text}", error, expected)
    return LoadedModels(runtimes, failures)


def build_runtimes(settings: WorkerSettings) -> dict[str, ModelRuntime]:
    """Every model of the config, or ``SystemExit`` naming each one that does not load (in-process callers and
    tests, which want all or nothing; ``vai-sidecar worker`` serves what loads, see :func:`run_worker`)."""
    loaded = load_runtimes(settings)
    for failure in loaded.failures.values():
        if not failure.expected:
            raise failure.error
    if loaded.failures:
        raise SystemExit("\n".join(failure.reason for failure in loaded.failures.values()))
    return loaded.runtimes


def report_failures(settings: WorkerSettings, loaded: LoadedModels) -> bool:
    """Log each model that did not load, once, at ERROR; False when the worker must not start (no model loaded,
    or one failed under ``VAI_WORKER_REQUIRE_ALL_MODELS``)."""
    for failure in loaded.failures.values():
        log.error(
            "%s; not explaining this model (vai_worker_model_load_failed)",
            failure.reason,
            exc_info=None if failure.expected else failure.error,
        )
    if not loaded.runtimes:
        log.error("no model of VAI_CONFIG_FILE could be loaded: nothing to explain, exiting")
        return False
    if loaded.failures and settings.worker_require_all_models:
        log.error("VAI_WORKER_REQUIRE_ALL_MODELS is set and %d model(s) did not load: exiting", len(loaded.failures))
        return False
    return True


NO_REDIS = (
    "the worker needs VAI_REDIS_URL (the sidecar's embedded Redis is private to it; "
    "`vai-sidecar demo` runs both on one)"
)


def make_worker(
    settings: WorkerSettings,
    runtimes: dict[str, ModelRuntime],
    registry: CollectorRegistry,
    *,
    failed: Iterable[str] = (),
) -> AttributionWorker:
    """The worker of ``runtimes``; ``failed``: the models of the config that did not load (exported as such)."""
    if settings.redis_url is None:
        raise SystemExit(NO_REDIS)
    metrics = WorkerMetrics(registry)
    for model in failed:
        metrics.load_failed.labels(model).set(1)
    # Reads block for worker_block_ms, so the socket timeout must be longer than that.
    redis = connect(settings.redis_url, timeout_s=max(settings.redis_timeout_s, settings.worker_block_ms / 1000 + 5))
    return AttributionWorker(
        redis,
        ExplanationStore(redis, ttl_s=settings.explanation_ttl_s, max_per_model=settings.explanations_max_per_model),
        runtimes,
        metrics,
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
    serve_metrics(settings, registry)
    loaded = load_runtimes(settings)
    if not report_failures(settings, loaded):
        return 1
    runtimes = loaded.runtimes
    worker = make_worker(settings, runtimes, registry, failed=loaded.failures)
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


def serve_metrics(settings: WorkerSettings, registry: CollectorRegistry) -> None:
    """Serve ``registry`` on ``worker_metrics_port`` (0: not at all), before the models load: a port in use used to
    be found only after every model had loaded (minutes on a GPU for a large one), as a traceback naming no setting.
    Until the worker is built the page is empty."""
    if not settings.worker_metrics_port:
        return
    try:
        start_metrics_server(settings.worker_metrics_port, host=settings.host, registry=registry)
    except OSError as error:
        raise SettingsError(
            f"VAI_WORKER_METRICS_PORT (or --metrics-port) {settings.worker_metrics_port} on VAI_HOST {settings.host}: "
            f"cannot serve /metrics: {error.strerror or error}"
        ) from None


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
