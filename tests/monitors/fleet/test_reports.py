"""The drift status an owner publishes for ``GET /v1/models/{model}/drift``: what the verdicts rest on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitors.drift.base import DriftBatch
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.reference import Reference
from monitors.drift.states import OnlineState
from monitors.fleet.reports import drift_status
from monitors.fleet.results import DriftStatus

CONFIG = DriftConfig(reference_events=449, ert=50, window_tests=False)
"""The defaults but for a short ERT (a quick calibration): PCA to 32 dimensions, window_size=50."""


def reference_batch(rows: int, *, width: int = 64) -> DriftBatch:
    rng = np.random.default_rng(0)
    return DriftBatch(
        predicted=rng.integers(0, 10, rows).astype(np.int64),
        confidence=rng.uniform(0.3, 1.0, rows),
        embeddings=rng.normal(size=(rows, width)).astype(np.float32),
        time_s=1.0,
    )


def status_of(monitor: DriftMonitor) -> DriftStatus:
    return drift_status("digits", monitor, examined=0, backlog=0, waiting_s=0.0, owner="m1")


def new_monitor(config: DriftConfig = CONFIG, reference: Reference | None = None) -> DriftMonitor:
    return DriftMonitor(
        model="digits", config=config, metrics=DriftMetrics(registry=CollectorRegistry()), reference=reference
    )


def test_the_status_says_how_many_reference_rows_the_online_detector_rests_on() -> None:
    """449 rows handed over, as the digits upload: PCA fits on 224, and of the 225 left the MMD detector keeps
    0.7 x (225 - 50) = 122 after setting aside its first test window, the rest held out to calibrate it."""
    monitor = new_monitor()
    assert (status_of(monitor).reference_rows, status_of(monitor).online_reference_rows) == (None, None)
    monitor.update(reference_batch(449))  # the warm-up's 449 events
    calibrating = status_of(monitor)
    assert (calibrating.state, calibrating.reference_rows, calibrating.online_reference_rows) == (
        "calibrating",
        449,
        None,
    )

    monitor.calibrate()
    status = status_of(monitor)
    (online,) = [d for d in monitor.export_state().detectors if isinstance(d, OnlineState)]
    assert (status.state, status.reference_rows, status.online_reference_rows) == ("monitoring", 449, 122)
    assert online.ref_inds.shape == (122,)

    published = json.loads(status.model_dump_json())
    assert (published["reference_rows"], published["online_reference_rows"]) == (449, 122)
    adopted = DriftMonitor.from_state(monitor.export_state(), metrics=DriftMetrics(registry=CollectorRegistry()))
    assert (status_of(adopted).reference_rows, status_of(adopted).online_reference_rows) == (None, 122)


@pytest.mark.parametrize(
    ("config", "width"),
    [
        pytest.param(CONFIG.model_copy(update={"online_detector": "none"}), 64, id="no-online-detector"),
        pytest.param(CONFIG, None, id="no-embeddings"),
    ],
)
def test_without_an_online_detector_its_rows_are_null(config: DriftConfig, width: int | None) -> None:
    batch = reference_batch(449)
    if width is None:
        batch = DriftBatch(predicted=batch.predicted, confidence=batch.confidence, embeddings=None, time_s=1.0)
    monitor = new_monitor(config, Reference.from_batch(batch))
    monitor.calibrate()
    status = status_of(monitor)
    assert (status.state, status.reference_rows, status.online_reference_rows) == ("monitoring", 449, None)


def test_a_status_of_an_earlier_release_reads_without_the_counts() -> None:
    """Published before the fields existed (a monitor of the previous release during a rolling upgrade)."""
    earlier = {"v": 1, "model": "digits", "state": "monitoring", "owner": "m1", "updated_at": 1.0}
    status = DriftStatus.model_validate_json(json.dumps(earlier))
    assert (status.reference_rows, status.online_reference_rows) == (None, None)
