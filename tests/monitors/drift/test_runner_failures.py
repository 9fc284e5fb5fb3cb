"""The drift runner outlives a failure of its own: its thread goes on detecting (the monitor's leases and status
would otherwise carry on saying "monitoring" while nothing is examined)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from helpers import wait_until
from monitors.drift.base import DriftEvent
from monitors.drift.buffer import IngestBuffer
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.runner import DriftRunner

CONFIG = DriftConfig(reference_events=600, max_reference=300, pca_components=4, ert=50, window_size=10)
"""A warm-up longer than what the tests send: every event they send is examined as a warm-up row."""


def warming_up(model: str) -> DriftMonitor:
    return DriftMonitor(model=model, config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))


def fill(buffer: IngestBuffer, count: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(count):
        buffer.append(
            DriftEvent(predicted=1, confidence=0.9, embedding=rng.normal(size=8).astype(np.float32), time_s=1.0)
        )


class _Calibrating:
    """Just enough of a drift monitor waiting for its calibration."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.needs_calibration = True
        self.embedding_width = None

    def calibrate(self) -> None:
        self.needs_calibration = False


def test_a_failing_pass_is_logged_once_and_the_runner_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = DriftRunner(poll_interval_s=0.01)
    monitor, buffer = warming_up("digits"), IngestBuffer(capacity_events=100)
    runner.add(monitor=monitor, buffer=buffer)
    run_once, failures = runner.run_once, iter(range(3))

    def failing() -> int:
        if next(failures, None) is not None:
            raise RuntimeError("can't start new thread")
        return run_once()

    monkeypatch.setattr(runner, "run_once", failing)
    caplog.set_level(logging.DEBUG, logger="monitors.drift.runner")
    fill(buffer, 50)
    runner.start()
    try:
        wait_until(lambda: buffer.examined_total == 50, timeout_s=10, what="the events examined")
    finally:
        runner.stop()
    said = [r for r in caplog.records if "drift detection pass failed" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.ERROR, logging.DEBUG, logging.DEBUG]
    assert said[0].exc_info is not None, "the first with its traceback"


def test_a_calibration_thread_that_cannot_start_holds_up_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread to be had for one model's calibration: the pass goes on with every model's batch, and the
    calibration starts at a later pass."""
    runner = DriftRunner(poll_interval_s=0.01)
    stuck = _Calibrating("a-first")
    runner.add(monitor=stuck, buffer=IngestBuffer(capacity_events=10))  # type: ignore[arg-type]
    monitor, buffer = warming_up("b-second"), IngestBuffer(capacity_events=100)
    runner.add(monitor=monitor, buffer=buffer)
    start = runner._start_calibration
    failures = iter(range(1))

    def flaky(watched: DriftMonitor) -> None:
        if watched.model == "a-first" and next(failures, None) is not None:
            raise RuntimeError("can't start new thread")
        start(watched)

    monkeypatch.setattr(runner, "_start_calibration", flaky)
    fill(buffer, 20)
    assert runner.run_once() == 20 and buffer.examined_total == 20
    runner.run_once()
    (calibration,) = [thread for model, (_, thread) in runner._calibrations.items() if model == "a-first"]
    calibration.join(10)
    assert not stuck.needs_calibration
