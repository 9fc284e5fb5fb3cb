"""Settings of ``vai-sidecar worker``, the attribution process (its own class; never the sidecar's)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from common.settings import RoleSettings

DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
"""The torch devices a worker explains on (``attribution_workers.loader.resolve_device``)."""


def _device(value: object) -> object:
    """``value`` checked at start-up: torch refused another (``tpu``) only as each model loaded, with a traceback per
    model. Empty is unset, as for the other optional settings."""
    if not isinstance(value, str):
        return value
    device = value.strip().lower()
    if device and not DEVICE.fullmatch(device):
        raise ValueError(f"{value!r} is not a device the worker can use: cpu, cuda or cuda:N (the GPU of index N)")
    return device or None


class ModelSection(BaseModel):
    """A ``[models.NAME]`` section of the shared config file, as the worker reads it."""

    model_config = ConfigDict(extra="ignore")

    attribution: dict[str, Any] | None = None
    """How the model is loaded and explained (checked as ``AttributionConfig`` when the worker starts)."""


class WorkerSettings(RoleSettings):
    """Every setting of an attribution worker process."""

    host: str = "127.0.0.1"
    """Address the worker's ``/metrics`` binds."""
    redis_timeout_s: float = Field(default=10.0, gt=0)
    """Socket timeout of the worker's Redis calls; at least ``worker_block_ms`` + 5 s, which its blocking reads
    wait for."""
    models: dict[str, ModelSection] = Field(default_factory=dict)
    """Per-model sections of the config file; the worker explains those with an ``attribution`` section."""
    explanation_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    """Retention of stored explanations and their indices (every key gets this TTL)."""
    explanations_max_per_model: int = Field(default=20_000, ge=1)
    """Most explanation records kept per model, besides the retention: a save past it removes the model's oldest
    records by event time (from every index too, at most 10 a save, so a lowered cap takes a few saves to reach). At
    the shipped sampling budgets (20-50 samples/s per replica) the retention alone kept tens of GB, and Redis at its
    ``maxmemory`` refuses every write of every role. 20,000 is ~100 MB per model at ~5 KB a record (the digits CNN's;
    records of larger inputs and feature maps weigh more: size it so this times the record size times the models
    explained fits your Redis) and, at 30 samples/s, the last ~11 minutes of a busy model, days of a quiet one. The
    ``queued`` records of a model no worker explains are bounded by it too. Give the sidecars and the workers the same
    value: whichever saves applies its own."""
    worker_consumer: str | None = None
    """Consumer name of an attribution worker in the group; default host-pid."""
    worker_batch_size: int = Field(default=16, ge=1)
    """Most sampled events explained together in one batch."""
    worker_block_ms: int = Field(default=1000, ge=1)
    """How long one read waits for new entries (also bounds the shutdown delay)."""
    worker_job_timeout_s: float = Field(default=120.0, gt=0)
    """A batch taking longer is given up and retried."""
    worker_max_deliveries: int = Field(default=3, ge=1)
    """Deliveries of an entry before it moves to the dead-letter stream."""
    worker_dead_letter_max_entries: int = Field(default=10_000, ge=1)
    """About how many of the newest entries a model's dead-letter stream keeps (``XTRIM MAXLEN ~``: whole
    stream nodes go, so it may hold up to about 100 more); its key has the explanations' retention as its TTL."""
    worker_dead_letter_max_input_bytes: int = Field(default=64 * 1024, ge=0)
    """A dead-lettered message larger than this is kept without its ``input``, its size noted in ``m_bytes``."""
    worker_retry_after_ms: int = Field(default=30_000, ge=1)
    """Idle time after which a failed entry, or one of a dead worker, is claimed again."""
    worker_heartbeat_ttl_s: int = Field(default=15, ge=1)
    """TTL of the worker's heartbeat key (refreshed every third of it)."""
    worker_metrics_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the worker's own /metrics (0 disables it)."""
    worker_require_all_models: bool = False
    """Exit at start (status 1) when any model of the config fails to load. By default the worker logs each model
    it cannot load, exports it as ``vai_worker_model_load_failed``, and explains the others; it exits only when no
    model loads. Strict start suits a rollout that should halt on a bad model rather than go on without it."""
    worker_device: Annotated[str | None, BeforeValidator(_device)] = None
    """Torch device for attribution: ``cpu``, ``cuda`` or ``cuda:N``; default (unset or empty) CUDA when available."""
    worker_torch_threads: int = Field(default=1, ge=0)
    """Torch intra-op CPU threads of a worker (0: torch's default). Small models run fastest on one:
    measured here, 16 digits events with 5 methods went from 5-10 to ~115 events/s going from 2 threads to 1."""
