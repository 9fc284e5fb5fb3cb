"""The sidecar's settings: one object per process, from ``VAI_*`` variables and a TOML file.

Precedence, highest first: arguments, environment variables, the TOML file
named by ``VAI_CONFIG_FILE``, the defaults below. Nothing here imports FastAPI, so the
workers read the same settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from monitors.drift.config import DriftConfig
from sampler.policy import SamplingPolicy

Tokens = Annotated[tuple[str, ...], NoDecode]


class ModelConfig(BaseModel):
    """Per-model section of the config file (``[models.NAME]``)."""

    model_config = ConfigDict(extra="allow")

    sampling: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the default sampling policy for this model."""


class Settings(BaseSettings):
    """Every setting of a sidecar or worker process."""

    model_config = SettingsConfigDict(
        env_prefix="VAI_",
        env_nested_delimiter="__",
        extra="forbid",
        use_attribute_docstrings=True,
    )

    host: str = "127.0.0.1"
    """Address the HTTP server binds."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port the HTTP server binds."""
    log_level: str = "info"
    """Python logging level name."""
    config_file: Path | None = None
    """TOML file with per-model policies (read once at start-up)."""

    redis_url: str | None = None
    """Redis to use; unset starts a private embedded ``redis-server`` on loopback."""
    redis_data_dir: Path = Path(".vai-data/redis")
    """Data directory of the embedded Redis (append-only file lives here)."""
    redis_timeout_s: float = Field(default=0.5, gt=0)
    """Socket timeout of every Redis call made by the sidecar."""

    ingest_tokens: Tokens = ()
    """Bearer tokens allowed to post events and labels (comma-separated)."""
    read_tokens: Tokens = ()
    """Bearer tokens allowed to read status and explanations (comma-separated)."""
    admin_tokens: Tokens = ()
    """Bearer tokens allowed to change policies; they may also ingest and read."""

    max_batch: int = Field(default=1000, ge=1)
    """Most events in one ``POST /v1/events``."""
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413 without being read whole."""
    max_reference_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Largest drift-reference upload accepted."""
    max_models: int = Field(default=20, ge=1)
    """Distinct model names accepted per process; events of further models are rejected."""
    max_versions_per_model: int = Field(default=5, ge=1)
    """Distinct versions kept as metric labels per model; the rest count as ``__other__``."""
    cohort_keys: Tokens = ()
    """Cohort keys exported as metric labels (comma-separated allowlist)."""
    max_cohort_values: int = Field(default=20, ge=1)
    """Distinct values kept per cohort key; the rest count as ``__other__``."""
    dedupe_window: int = Field(default=10_000, ge=0)
    """Recent request ids remembered per model to reject duplicates (0 disables)."""

    sampling: SamplingPolicy = SamplingPolicy()
    """Default sampling policy (``VAI_SAMPLING__EVERY_N=10`` or ``[sampling]`` in the file)."""
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    """Per-model sections of the config file."""
    policy_refresh_s: float = Field(default=2.0, gt=0)
    """How often a replica re-reads run-time policy changes from Redis."""

    queue_max_length: int = Field(default=10_000, ge=1)
    """Backlog per model stream above which new samples are dropped (``queue_full``)."""
    stream_maxlen: int = Field(default=50_000, ge=1)
    """Approximate ``MAXLEN`` of each stream: a safety net far above the backlog cap."""
    queue_poll_s: float = Field(default=1.0, gt=0)
    """How often queue lengths are read from Redis."""
    buffer_max_events: int = Field(default=10_000, ge=1)
    """Sampled events held in memory while Redis is slow or down."""
    buffer_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Bytes of encoded sampled events held in memory while Redis is slow or down."""
    flush_batch: int = Field(default=200, ge=1)
    """Most stream entries written in one pipelined round trip."""
    flush_retry_s: float = Field(default=0.5, gt=0)
    """Wait before retrying after a failed flush."""
    explanation_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    """Retention of stored explanations and their indices (every key gets this TTL)."""

    monitors_enabled: bool = True
    """Run drift detection and keep predictions for delayed labels (off: only the ingest metrics)."""
    drift: DriftConfig = DriftConfig()
    """Drift detectors (``VAI_DRIFT__ERT=1000``, ``[drift]`` in the file)."""
    drift_buffer_events: int = Field(default=10_000, ge=1)
    """Events per model waiting for the drift detectors; beyond it the oldest are skipped and counted."""
    drift_cpu_share: float = Field(default=0.1, gt=0, le=1)
    """Most of the wall time the drift thread may spend detecting (it shares the GIL with requests)."""
    drift_threads: int = Field(default=1, ge=1)
    """Torch and BLAS threads for drift detection. The sidecar shares its host with the model server,
    and on a busy or pinned CPU extra math threads spin against the request path instead of helping."""
    drift_sync_s: float = Field(default=5.0, gt=0)
    """How often calibrated drift states are stored to / adopted from Redis."""
    prediction_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long a prediction waits in Redis for its delayed label."""
    prediction_buffer_events: int = Field(default=50_000, ge=1)
    """Prediction records waiting in memory to be written to Redis; beyond it the oldest are dropped."""
    brier_max_classes: int = Field(default=32, ge=2)
    """Keep the full probability vector (for the Brier score) of models with at most this many classes."""
    calibration_window_s: float = Field(default=3600.0, gt=0)
    """Sliding window of labelled predictions behind calibration and quality figures."""
    calibration_window_max: int = Field(default=10_000, ge=1)
    """Most labelled predictions per window (per model version and cohort slice)."""

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
    worker_retry_after_ms: int = Field(default=30_000, ge=1)
    """Idle time after which a failed entry, or one of a dead worker, is claimed again."""
    worker_heartbeat_ttl_s: int = Field(default=15, ge=1)
    """TTL of the worker's heartbeat key (refreshed every third of it)."""
    worker_metrics_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the worker's own /metrics (0 disables it)."""
    worker_device: str | None = None
    """Torch device for attribution (``cuda``, ``cpu``); default CUDA when available."""
    worker_torch_threads: int = Field(default=1, ge=0)
    """Torch intra-op CPU threads of a worker (0: torch's default). Small models run fastest on one:
    measured here, 16 digits events with 5 methods went from 5-10 to ~115 events/s going from 2 threads to 1."""

    @field_validator("ingest_tokens", "read_tokens", "admin_tokens", "cohort_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check_model_policies(self) -> Settings:
        for name in self.models:
            try:
                self.model_policy(name)
            except ValidationError as error:
                raise ValueError(f"models.{name}.sampling: {error}") from None
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments, then the environment, then the TOML file.
        kwargs = getattr(init_settings, "init_kwargs", {})
        path = kwargs.get("config_file") or os.environ.get("VAI_CONFIG_FILE")
        if not path:
            return init_settings, env_settings
        if not Path(path).is_file():
            raise FileNotFoundError(f"VAI_CONFIG_FILE: no such file: {path}")
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.ingest_tokens or self.read_tokens or self.admin_tokens)

    def model_policy(self, model: str) -> SamplingPolicy:
        """Default policy with the config file's overrides for ``model`` applied."""
        section = self.models.get(model)
        return self.sampling.merged(section.sampling) if section else self.sampling
