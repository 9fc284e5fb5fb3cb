"""What a drift monitor tells its owner about the warm-up it collects, so the owner can store it as it grows."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitors.drift.base import DriftBatch, DriftEvent
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.warmup import WarmupMark, WarmupRows

CONFIG = DriftConfig(
    reference_events=100, max_reference=100, pca_components=4, ert=50, window_size=10, window_tests=False
)


def rows(rng: np.random.Generator, n: int, *, width: int | None = 8) -> DriftBatch:
    return DriftBatch(
        predicted=rng.integers(0, 3, n).astype(np.int64),
        confidence=rng.uniform(0.4, 1.0, n),
        embeddings=None if width is None else rng.normal(size=(n, width)).astype(np.float32),
        time_s=1.0,
    )


def monitor() -> DriftMonitor:
    return DriftMonitor(model="m", config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))


def same(a: DriftBatch | None, b: DriftBatch) -> bool:
    assert a is not None and a.embeddings is not None and b.embeddings is not None
    return (
        np.array_equal(a.predicted, b.predicted)
        and np.array_equal(a.confidence, b.confidence)
        and np.array_equal(a.embeddings, b.embeddings)
    )


def test_the_rows_past_a_mark_are_the_new_ones_until_calibrated() -> None:
    rng = np.random.default_rng(1)
    watched = monitor()
    first, second, third = rows(rng, 30), rows(rng, 50), rows(rng, 40)
    watched.update(first)
    everything = watched.warmup_rows(None)
    assert everything is not None and everything.start == 0 and same(everything.batch, first)
    mark = WarmupMark(everything.epoch, 30)
    watched.update(second)
    new = watched.warmup_rows(mark)
    assert new is not None and new.start == 30 and same(new.batch, second)
    mark = WarmupMark(new.epoch, 80)
    assert watched.warmup_rows(mark) == WarmupRows(new.epoch, 80, None), "nothing new"

    watched.update(third)  # completes the warm-up: 20 of these 40 rows, the reference now
    complete = watched.warmup_rows(mark)
    assert watched.phase.value == "calibrating"
    assert complete is not None and complete.epoch == new.epoch and same(complete.batch, third.rows(np.arange(20)))
    watched.calibrate()
    assert watched.warmup_rows(mark) is None, "calibrated: no warm-up to keep"


def test_letting_the_rows_go_numbers_a_fresh_warm_up() -> None:
    """Rows without embeddings give way to the first that has one; the stored copy must be replaced, not added to."""
    rng = np.random.default_rng(2)
    watched = monitor()
    watched.update(rows(rng, 20, width=None))
    before = watched.warmup_rows(None)
    assert before is not None and before.batch is not None and before.batch.embeddings is None
    embedded = rows(rng, 10)
    watched.update(embedded)
    after = watched.warmup_rows(WarmupMark(before.epoch, 20))
    assert after is not None and after.epoch != before.epoch and after.start == 0 and same(after.batch, embedded)


def test_a_resumed_warm_up_goes_on_and_is_let_go_when_the_feed_has_another_width(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(3)
    stored = rows(rng, 60)
    resumed = monitor()
    mark = resumed.resume_warmup(stored)
    assert mark.rows == 60 and resumed.warmup_progress == (60, 100) and resumed.embedding_width == 8
    assert resumed.warmup_rows(mark) == WarmupRows(mark.epoch, 60, None)

    going_on = monitor()
    going_on.resume_warmup(stored)
    going_on.update(rows(rng, 10))
    assert going_on.warmup_progress == (70, 100)

    wider = [DriftEvent(1, 0.9, rng.normal(size=16).astype(np.float32), 2.0) for _ in range(10)]
    with caplog.at_level(logging.WARNING, logger="monitors.drift.monitor"):
        resumed.update(DriftBatch.from_events(wider, width=resumed.embedding_width))
    assert resumed.warmup_progress == (0, 100) and resumed.embedding_width is None
    assert len([r for r in caplog.records if "resumed warm-up" in r.getMessage()]) == 1
    fresh = resumed.warmup_rows(mark)
    assert fresh is not None and fresh.epoch != mark.epoch and fresh.batch is None
    resumed.update(DriftBatch.from_events(wider, width=resumed.embedding_width))
    assert resumed.warmup_progress == (10, 100) and resumed.embedding_width == 16


def test_only_a_fresh_monitor_resumes_and_never_more_than_the_reference() -> None:
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match="more than reference_events=100"):
        monitor().resume_warmup(rows(rng, 101))
    collecting = monitor()
    collecting.update(rows(rng, 5))
    with pytest.raises(RuntimeError, match="fresh monitor"):
        collecting.resume_warmup(rows(rng, 5))
