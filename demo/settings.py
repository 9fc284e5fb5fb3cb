"""The settings of each role in the demo: one model (``digits``), one Redis, one config for all three.

The demo builds each role's own settings class, as separate deployments would from one config
file: the sidecar's (:class:`SidecarSettings`, with ``monitor="external"`` since the demo runs the
monitor itself), the monitor's and the attribution worker's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attribution_workers.settings import WorkerSettings
from demo.models import digits
from monitors.fleet.settings import MonitorSettings
from service.settings import SidecarSettings

DATA_DIR = Path(".vai-data")
"""Everything the demo keeps lives here, relative to the working directory."""
MODEL = "digits"
COHORT_KEYS = ("region", "device")
METHODS = ("gradcam", "integrated_gradients", "occlusion", "saliency", "gradient_shap")
SAMPLING: dict[str, Any] = {
    "every_n": 20,
    "confidence_below": 0.6,
    "flagged_cohorts": [{"region": "eu"}],
    "require_input": True,
    "max_per_second": 20,
}
ATTRIBUTION: dict[str, Any] = {
    "methods": list(METHODS),
    "ig_steps": 16,
    "shap_samples": 8,
    "fidelity_steps": 8,
    "fidelity_random_orders": 2,
    "sanity_every_s": 60,
}
"""The ``[models.digits.attribution]`` section, less the model file."""


def sidecar_settings(base: SidecarSettings, *, redis_url: str) -> SidecarSettings:
    """``base`` (environment and arguments) with the demo's Redis and sampling policy; the monitor is ours."""
    return SidecarSettings.model_validate(
        {
            **base.model_dump(),
            "redis_url": redis_url,
            "redis_data_dir": DATA_DIR / "demo-redis",
            "cohort_keys": COHORT_KEYS,
            "models": {MODEL: {"sampling": SAMPLING}},
            "monitor": "external",
        }
    )


def monitor_settings(base: SidecarSettings, *, redis_url: str) -> MonitorSettings:
    """The monitor's own settings (environment included: ``VAI_MONITOR_METRICS_PORT``, ``VAI_DRIFT__*``)."""
    return MonitorSettings(redis_url=redis_url, host=base.host, log_level=base.log_level, cohort_keys=COHORT_KEYS)


def worker_settings(base: SidecarSettings, *, redis_url: str, model_path: Path) -> WorkerSettings:
    """The worker's own settings, explaining the digits CNN at ``model_path``."""
    model = {
        "torchscript": str(model_path.resolve()),
        "input_shape": list(digits.INPUT_SHAPE),
        "num_classes": digits.NUM_CLASSES,
    }
    return WorkerSettings(
        redis_url=redis_url,
        host=base.host,
        log_level=base.log_level,
        models={MODEL: {"attribution": {**ATTRIBUTION, "model": model}}},
        worker_block_ms=500,
    )
