"""Settings of ``vai-sidecar monitor``: the fleet-wide drift and labelled-window process."""

from __future__ import annotations

from pydantic import Field, field_validator

from common.settings import CohortKeys, CommaList, RoleSettings
from monitors.drift.config import DriftConfig
from monitors.fleet.views import METHODS


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
    monitor_recent_save_s: float = Field(default=30.0, ge=0)
    """Shortest time between two writes of a model's window of recent predictions (written only when it changed,
    and once more when the model is handed back): the whole window is one write, over a megabyte for a busy model,
    and a successor taking over from an owner that died misses at most this long of it."""

    drift: DriftConfig = DriftConfig()
    """Drift detectors (``VAI_DRIFT__ERT=1000``, ``[drift]`` in the file)."""
    drift_buffer_events: int = Field(default=10_000, ge=1)
    """Records per model read from Redis and waiting for the detectors."""
    drift_threads: int = Field(default=1, ge=1)
    """Torch and BLAS threads of drift detection and calibration."""
    drift_calibrations: int = Field(default=2, ge=1)
    """Drift calibrations this process runs at once (others wait their turn): each adds ~0.3 GB resident at its
    peak for a reference of 5,000 rows (~0.15 GB at 2,000), so ten references uploaded together stay in memory."""

    cohort_keys: CohortKeys = ()
    """Cohort keys that get their own calibration and accuracy series (allowlist)."""
    max_cohort_values: int = Field(default=20, ge=1)
    """Distinct values kept per cohort key; the rest share the series ``value="__other__"`` (give every role the
    same cap)."""
    max_versions_per_model: int = Field(default=5, ge=1)
    """Distinct model versions kept as series per model; the rest count as ``__other__``."""
    calibration_window_s: float = Field(default=3600.0, gt=0)
    """Sliding window of labelled predictions behind calibration and quality figures."""
    calibration_window_max: int = Field(default=10_000, ge=1)
    """Most labelled predictions per window (per model version and cohort slice)."""
    estimate_window_s: float = Field(default=900.0, gt=0)
    """Recent predictions (labelled or not) behind the accuracy estimates (ATC)."""
    estimate_window_max: int = Field(default=5_000, ge=1)
    """Most recent predictions kept per model version and cohort slice for the accuracy estimates; each slice is
    cut to the span of its version's whole window."""
    estimate_min_labelled: int = Field(default=30, ge=1)
    """Fewest labelled predictions an accuracy threshold (ATC) or a temperature is fitted on; below, none is shown."""

    projection_methods: CommaList = ("pca", "umap")
    """Embedding projections of the model overview (``pca``, ``umap``), each computed only while asked for."""
    projection_max_reference: int = Field(default=2_000, ge=4, le=5_000)
    """Most reference embeddings in a projection (a seeded random sample of the reference). UMAP fits under
    4,096 rows with exact neighbours; above, NN-descent, whose first compile costs minutes and ~0.5 GiB more."""
    projection_max_production: int = Field(default=2_000, ge=1, le=5_000)
    """Most production embeddings in a projection: the latest examined records that have one (at most 5,000, as
    the reference: every point is ~170 bytes of every page load's body)."""
    projection_refresh_s: float = Field(default=5.0, gt=0)
    """How often projections and distributions are recomputed (only when their inputs changed)."""
    projection_seed: int = 0
    """Seed of the reference sample and of UMAP (reproducible layouts on every owner)."""
    distribution_events: int = Field(default=10_000, ge=1)
    """Latest examined records behind the confidence and margin histograms."""
    drift_history_s: float = Field(default=5.0, gt=0)
    """Least time between two points of the drift-score history (a point is added only when a detector's score,
    threshold or verdict changed)."""
    drift_history_max: int = Field(default=2_000, ge=10)
    """Most points (each with every detector's verdict) kept in a model's drift-score history."""

    @field_validator("projection_methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown projection methods {unknown}; choose among {list(METHODS)}")
        return value
