"""The settings of each role in the demo: one model (``digits``), one Redis, one config for all three.

The demo builds each role's own settings class, as separate deployments would from one config
file: the sidecar's (:class:`SidecarSettings`, with ``monitor="external"`` since the demo runs the
monitor itself), the monitor's and the attribution worker's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attribution_workers.methods import MethodName
from attribution_workers.settings import WorkerSettings
from demo.models import digits
from monitors.fleet.settings import MonitorSettings
from service.settings import SidecarSettings

DATA_DIR = Path(".vai-data")
"""Everything the demo keeps lives here, relative to the working directory."""
MODEL = "digits"
COHORT_KEYS = ("region", "device")
METHODS: tuple[MethodName, ...] = ("gradcam", "saliency", "lime")
"""Three methods of different kinds (a layer's gradients, the input's gradients, a local surrogate). Measured
with these settings on 160 sampled test digits, clean and corrupted, every method passes the randomisation
sanity check, compared on each input's support (the larger of the |map| and signed figures: Grad-CAM -0.12 to
-0.04, saliency +0.06 to +0.13, LIME +0.11 to +0.33; flagged at 0.5). Against random deletion orders of the
ink, saliency and LIME gain +0.11 and +0.23 on average (clean); Grad-CAM about 0 (its maps tell the model's
evidence apart no better than knowing where the digit is), where integrated gradients, gradient SHAP and
occlusion gain +0.23 to +0.24 (``methods`` in the config). Reproduce:
``python -m benchmarks.method_trust [--methods ...]``."""
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
    "sanity_samples": 32,
    "inspect_layers": ["conv.0", "conv.1", "conv.3", "conv.4", "dense.1", "dense.2", "classifier"],
    "inspect_window": 64,
    "feature_map_channels": 8,
}
"""The ``[models.digits.attribution]`` section, less the model file. ``inspect_layers`` names the eager
``DigitsCNN``'s layers: the worker loads it from ``digits.FACTORY`` and the weights of the scripted file."""


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


def worker_settings(
    base: SidecarSettings, *, redis_url: str, model_path: Path, weights_path: Path | None = None
) -> WorkerSettings:
    """The worker's own settings, explaining the digits CNN at ``model_path``.

    With ``weights_path`` (``digits.ensure_digits_weights(model_path)``, as the demo runs it) the worker loads
    the eager ``DigitsCNN`` with those weights and inspects its layers; without, the scripted file, whose
    layers take no hooks (only its ``features`` output is inspected).
    """
    shape = {"input_shape": list(digits.INPUT_SHAPE), "num_classes": digits.NUM_CLASSES}
    attribution = dict(ATTRIBUTION)
    if weights_path is None:
        model: dict[str, Any] = {"torchscript": str(model_path.resolve()), **shape}
        del attribution["inspect_layers"]
    else:
        model = {"factory": digits.FACTORY, "weights": str(weights_path.resolve()), **shape}
    return WorkerSettings(
        redis_url=redis_url,
        host=base.host,
        log_level=base.log_level,
        models={MODEL: {"attribution": {**attribution, "model": model}}},
        worker_block_ms=500,
    )
