"""Settings of ``vai-sidecar monitor``: the fleet-wide drift and labelled-window process."""

from __future__ import annotations

from pydantic import Field

from common.settings import CommaList, RoleSettings
from monitors.drift.config import DriftConfig


class MonitorSettings(RoleSettings):
    """Every setting of a monitor process (``VAI_*`` variables, or keys of the shared config file)."""

    host: str = "127.0.0.1"
    """Address the monitor's ``/metrics`` binds."""
    monitor_metrics_port: int = Field(default=8002, ge=0, le=65535)
    """Port of the monitor's own ``/metrics`` (0 disables it)."""
    monitor_id: str | None = None
    """This process's name in the leases; default host-pid."""
    monitor_lease_ttl_s: float = Field(default=3.0, ge=0.3)
    """Lease of a model; an owner that stops renewing loses its models to another monitor after this long."""
    monitor_read_batch: int = Field(default=500, ge=1)
    """Most records read from a model's feed in one call."""
    monitor_status_s: float = Field(default=0.5, gt=0)
    """How often the drift verdicts and the backlog are published to Redis for the sidecars."""
    monitor_report_s: float = Field(default=2.0, gt=0)
    """How often calibration and quality figures are recomputed and published."""

    drift: DriftConfig = DriftConfig()
    """Drift detectors (``VAI_DRIFT__ERT=1000``, ``[drift]`` in the file)."""
    drift_buffer_events: int = Field(default=10_000, ge=1)
    """Records per model read from Redis and waiting for the detectors."""
    drift_threads: int = Field(default=1, ge=1)
    """Torch and BLAS threads of drift detection and calibration."""

    cohort_keys: CommaList = ()
    """Cohort keys that get their own calibration and accuracy series (allowlist)."""
    max_cohort_values: int = Field(default=20, ge=1)
    """Distinct values kept per cohort key; the rest share the series ``key=__other__``."""
    max_versions_per_model: int = Field(default=5, ge=1)
    """Distinct model versions kept as series per model; the rest count as ``__other__``."""
    calibration_window_s: float = Field(default=3600.0, gt=0)
    """Sliding window of labelled predictions behind calibration and quality figures."""
    calibration_window_max: int = Field(default=10_000, ge=1)
    """Most labelled predictions per window (per model version and cohort slice)."""
