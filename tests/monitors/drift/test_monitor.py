from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from threadpoolctl import threadpool_info, threadpool_limits

from monitors.drift.base import DriftBatch, DriftEvent, DriftResult
from monitors.drift.buffer import IngestBuffer
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor, NotCalibratedError, Phase
from monitors.drift.reference import Reference
from monitors.drift.runner import BACKGROUND_NICENESS, DriftRunner
from monitors.drift.states import MonitorState, OnlineState
from previous_release import PreviousDriftConfig

DIM = 16
CONFIG = DriftConfig(
    reference_events=600,
    max_reference=300,
    pca_components=4,
    ert=50,
    window_size=10,
    n_bootstraps=500,
    window_events=100,
    n_permutations=50,
)


def events_batch(rng: np.random.Generator, n: int, *, shift: float = 0.0, t: float = 1.0) -> DriftBatch:
    x = rng.normal(size=(n, DIM))
    x[:, 0] += 3.0
    x[:, 1:] += shift
    return DriftBatch(
        predicted=rng.integers(0, 4, n).astype(np.int64),
        confidence=rng.uniform(0.4, 1.0, n),
        embeddings=x.astype(np.float32),
        time_s=t,
    )


def as_events(batch: DriftBatch) -> list[DriftEvent]:
    assert batch.embeddings is not None
    return [
        DriftEvent(predicted=int(p), confidence=float(c), embedding=e, time_s=batch.time_s)
        for p, c, e in zip(batch.predicted, batch.confidence, batch.embeddings, strict=True)
    ]


def phase(monitor: DriftMonitor) -> Phase:
    """The phase as a plain call, so the type checker does not narrow it between assertions."""
    return monitor.phase


def skipped(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("vai_drift_events_skipped_total", {"model": "digits"})


def test_phases_warm_up_calibrate_monitor() -> None:
    rng = np.random.default_rng(0)
    registry = CollectorRegistry()
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=DriftMetrics(registry=registry))
    assert phase(monitor) is Phase.WARMING_UP and not monitor.needs_calibration
    assert monitor.warmup_progress == (0, 600)

    monitor.update(events_batch(rng, 400))
    assert phase(monitor) is Phase.WARMING_UP and monitor.warmup_progress == (400, 600)
    monitor.update(events_batch(rng, 250))  # 200 complete the reference, 50 are skipped
    assert phase(monitor) is Phase.CALIBRATING and monitor.needs_calibration
    assert monitor.warmup_progress is None
    monitor.update(events_batch(rng, 100))
    assert skipped(registry) == 150
    assert monitor.examined_total == 600, "the rows collected into the warm-up; not those skipped"

    monitor.calibrate()
    assert phase(monitor) is Phase.MONITORING
    results = monitor.update(events_batch(rng, 100))
    assert monitor.examined_total == 700
    assert {r.name for r in results} == {
        "mmd_online",
        "window_mmd",
        "window_ks",
        "embedding_distance",
        "output_class_chi2",
        "output_confidence_ks",
    }
    for r in results:
        labels = {"model": "digits", "detector": r.name}
        assert registry.get_sample_value("vai_drift_score", labels) == pytest.approx(r.score)
        assert registry.get_sample_value("vai_drift_threshold", labels) == pytest.approx(r.threshold)
        assert registry.get_sample_value("vai_drift_detected", labels) == (1.0 if r.drift else 0.0)


def _calibrated(
    reference: Reference, config: DriftConfig = CONFIG, registry: CollectorRegistry | None = None
) -> DriftMonitor:
    """A monitor of model ``digits`` calibrated on ``reference``, exporting to ``registry`` (one of its own)."""
    metrics = DriftMetrics(registry=registry or CollectorRegistry())
    monitor = DriftMonitor(model="digits", config=config, metrics=metrics, reference=reference)
    monitor.calibrate()
    return monitor


def test_since_marks_start_of_drift_run() -> None:
    rng = np.random.default_rng(1)
    reference = Reference.from_batch(events_batch(rng, 600))
    # ERT 200: at ERT 50 a clean prefix of 30 events alarms about half the time, and ``since`` would mark it.
    config = CONFIG.model_copy(update={"ert": 200})
    monitor = _calibrated(reference, config)
    assert not any(r.drift for r in monitor.update(events_batch(rng, 30, t=10.0)) if r.name == "mmd_online")
    monitor.update(events_batch(rng, 100, shift=1.0, t=20.0))
    monitor.update(events_batch(rng, 100, shift=1.0, t=30.0))
    online = {r.name: r for r in monitor.results()}["mmd_online"]
    assert online.drift and online.since == 20.0


def test_exported_monitor_continues_identically() -> None:
    rng = np.random.default_rng(2)
    monitor = _calibrated(Reference.from_batch(events_batch(rng, 600)))
    state = MonitorState.model_validate_json(monitor.export_state().model_dump_json())
    restored = DriftMonitor.from_state(state, metrics=DriftMetrics(registry=CollectorRegistry()))
    assert restored.phase is Phase.MONITORING

    for shift in (0.0, 0.0, 0.6):
        batch = events_batch(rng, 100, shift=shift)
        ours = {r.name: r for r in monitor.update(batch)}
        theirs = {r.name: r for r in restored.update(batch)}
        assert ours.keys() == theirs.keys()
        for name, result in ours.items():
            assert theirs[name].score == result.score
            if name != "window_mmd":  # its threshold comes from fresh random permutations
                assert theirs[name].threshold == result.threshold and theirs[name].drift == result.drift


def test_the_tests_behind_each_verdict_are_counted_per_detector() -> None:
    """Every event with an embedding is one test of the online detector, every window one of a windowed test; on
    drift nearly every event of the online detector is an alarm, whatever the batch size."""
    rng = np.random.default_rng(5)
    registry = CollectorRegistry()
    monitor = _calibrated(Reference.from_batch(events_batch(rng, 600)), registry=registry)

    def counted(name: str, detector: str) -> float | None:
        return registry.get_sample_value(f"vai_drift_{name}_total", {"model": "digits", "detector": detector})

    monitor.update(events_batch(rng, 250))
    assert counted("tests", "mmd_online") == 250
    assert counted("tests", "output_class_chi2") == counted("tests", "window_mmd") == 2  # window_events=100
    clean_alarms = counted("alarms", "mmd_online")
    assert clean_alarms is not None and clean_alarms < 50
    for _ in range(3):
        monitor.update(events_batch(rng, 100, shift=1.0))
    assert counted("tests", "mmd_online") == 550
    drift_alarms = (counted("alarms", "mmd_online") or 0) - clean_alarms
    assert drift_alarms > 0.8 * 300
    assert registry.get_sample_value("vai_drift_ert_events", {"model": "digits", "detector": "mmd_online"}) == 50


def test_export_before_calibration_says_what_to_do() -> None:
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
    with pytest.raises(NotCalibratedError, match="once phase is 'monitoring'"):
        monitor.export_state()


def test_model_without_embeddings_gets_output_drift_only() -> None:
    rng = np.random.default_rng(3)
    batch = events_batch(rng, 600)
    reference = Reference(predicted=batch.predicted, confidence=batch.confidence)
    monitor = _calibrated(reference)
    results = monitor.update(events_batch(rng, 100))
    assert {r.name for r in results} == {"output_class_chi2", "output_confidence_ks"}
    assert [d.kind for d in monitor.export_state().detectors] == ["output"]


def _events_with_gaps(batch: DriftBatch, *, every: int, odd_width: int | None = None) -> list[DriftEvent]:
    """The batch's events; every ``every``-th comes without its embedding (or, given ``odd_width``, with one
    of that width)."""
    events = as_events(batch)
    for i in range(0, len(events), every):
        embedding = None if odd_width is None else np.zeros(odd_width, dtype=np.float32)
        events[i] = replace(events[i], embedding=embedding)
    return events


def embeddings_skipped(monitor: DriftMonitor, registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("vai_drift_embeddings_skipped_total", {"model": monitor.model, "reason": reason})


@pytest.mark.parametrize("odd_width", [pytest.param(None, id="missing"), pytest.param(DIM + 1, id="other-width")])
def test_an_event_without_its_embedding_does_not_blind_the_batch(odd_width: int | None) -> None:
    """One event in 50 without an embedding (or with one of another width): the embedding detectors still see
    the other 49 of each 50, exactly as they would alone, and the odd ones are counted."""
    rng = np.random.default_rng(6)
    reference = Reference.from_batch(events_batch(rng, 600))
    registry = CollectorRegistry()
    monitor = _calibrated(reference, registry=registry)
    twin = _calibrated(reference)
    batch = events_batch(rng, 200, shift=1.0)
    events = _events_with_gaps(batch, every=50, odd_width=odd_width)
    kept = np.array([i % 50 != 0 for i in range(200)])

    ours = {r.name: r for r in monitor.update(DriftBatch.from_events(events))}
    assert batch.embeddings is not None
    alone = replace(batch, predicted=batch.predicted[kept], confidence=batch.confidence[kept])
    theirs = {r.name: r for r in twin.update(replace(alone, embeddings=batch.embeddings[kept]))}

    for name in ("mmd_online", "window_mmd", "window_ks", "embedding_distance"):
        assert ours[name].score == theirs[name].score, name
    assert ours["mmd_online"].drift and ours["window_ks"].drift
    assert {"output_class_chi2", "output_confidence_ks"} <= ours.keys()  # every event's outputs
    reason = "missing" if odd_width is None else "width"
    assert embeddings_skipped(monitor, registry, reason) == 4


def test_a_batch_whose_embeddings_all_have_another_width_is_counted_not_raised() -> None:
    rng = np.random.default_rng(7)
    registry = CollectorRegistry()
    monitor = DriftMonitor(
        model="digits",
        config=CONFIG,
        metrics=DriftMetrics(registry=registry),
        reference=Reference.from_batch(events_batch(rng, 600)),
    )
    monitor.calibrate()
    batch = events_batch(rng, 100)
    assert batch.embeddings is not None
    wide = replace(batch, embeddings=np.hstack([batch.embeddings, batch.embeddings]))

    results = monitor.update(wide)

    assert {r.name for r in results} == {"output_class_chi2", "output_confidence_ks"}
    assert embeddings_skipped(monitor, registry, "width") == 100


def test_a_warm_up_keeps_the_events_with_embeddings() -> None:
    rng = np.random.default_rng(8)
    registry = CollectorRegistry()
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=DriftMetrics(registry=registry))
    for _ in range(7):
        monitor.update(DriftBatch.from_events(_events_with_gaps(events_batch(rng, 100), every=50)))
    assert phase(monitor) is Phase.CALIBRATING
    monitor.calibrate()
    assert "mmd_online" in {r.name for r in monitor.update(events_batch(rng, 100))}
    assert skipped(registry) == 7 * 2 + 86  # 14 without an embedding; 686 with one, 600 taken


def unusable(batch: DriftBatch) -> DriftBatch:
    """``batch`` with a negative class index: a reference no calibration takes (the output tests refuse it)."""
    predicted = batch.predicted.copy()
    predicted[0] = -1
    return replace(batch, predicted=predicted)


def test_failed_calibration_is_reported_not_retried() -> None:
    reference = Reference.from_batch(unusable(events_batch(np.random.default_rng(4), 600)))
    monitor = DriftMonitor(
        model="digits", config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()), reference=reference
    )
    with pytest.raises(ValueError):
        monitor.calibrate()
    assert monitor.phase is Phase.CALIBRATING
    assert monitor.calibration_error is not None and not monitor.needs_calibration


def test_failed_calibration_of_a_warm_up_collects_a_new_one() -> None:
    rng = np.random.default_rng(5)
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
    monitor.update(unusable(events_batch(rng, 600)))
    assert phase(monitor) is Phase.CALIBRATING
    with pytest.raises(ValueError):
        monitor.calibrate()
    assert phase(monitor) is Phase.WARMING_UP and monitor.calibration_error is not None
    monitor.update(events_batch(rng, 600))
    assert monitor.needs_calibration and monitor.calibration_error is None
    monitor.calibrate()
    assert phase(monitor) is Phase.MONITORING


def test_runner_logs_a_repeated_calibration_failure_once(wait_until, caplog) -> None:  # type: ignore[no-untyped-def]
    """Unusable traffic fails every warm-up calibration: one traceback, not one per warm-up."""
    rng = np.random.default_rng(6)
    metrics = DriftMetrics(registry=CollectorRegistry())
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=metrics)
    buffer = IngestBuffer(capacity_events=5_000)
    runner = DriftRunner(poll_interval_s=0.01, max_batch_events=600)
    runner.add(monitor=monitor, buffer=buffer)
    identical = unusable(events_batch(rng, 600))
    caplog.set_level(logging.DEBUG, logger="monitors.drift.runner")

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "calibration failed" in r.getMessage()]

    runner.start()
    try:
        for attempt in range(1, 4):
            for event in as_events(identical):
                buffer.append(event)
            wait_until(lambda: len(failures()) == attempt, timeout_s=30)  # noqa: B023 - waited on right here
    finally:
        runner.stop()
    assert [r.levelno for r in failures()] == [logging.ERROR, logging.DEBUG, logging.DEBUG]


def test_runner_threads_keep_to_the_thread_limit_at_background_priority(wait_until) -> None:  # type: ignore[no-untyped-def]
    """torch's thread count and the CPU priority are per thread: the detection and calibration threads
    set both themselves, and the caller's thread keeps its own."""
    seen: list[tuple[str, int, int]] = []

    def record(kind: str) -> None:
        seen.append((kind, torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    class Recording(DriftMonitor):
        def update(self, batch: DriftBatch) -> list[DriftResult]:
            record("update")
            return super().update(batch)

        def calibrate(self) -> None:
            record("calibrate")
            super().calibrate()

    blas_before = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    own_priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    wanted = torch.get_num_threads() + 2  # neither this thread's count nor a new thread's default
    monitor = Recording(model="digits", config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()))
    buffer = IngestBuffer(capacity_events=5_000)
    runner = DriftRunner(poll_interval_s=0.01, max_batch_events=600, math_threads=wanted, background_priority=True)
    runner.add(monitor=monitor, buffer=buffer)
    runner.start()
    try:
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} <= {wanted}
        for event in as_events(events_batch(np.random.default_rng(7), 600)):
            buffer.append(event)
        wait_until(lambda: {kind for kind, _, _ in seen} == {"update", "calibrate"}, timeout_s=30)
    finally:
        runner.stop()
        if blas_before:
            threadpool_limits(limits=blas_before[0], user_api="blas")
    assert {(threads, priority) for _, threads, priority in seen} == {(wanted, BACKGROUND_NICENESS)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own_priority


def test_runner_warms_up_calibrates_in_background_and_detects(wait_until) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry=registry)
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=metrics)
    buffer = IngestBuffer(capacity_events=5_000, skipped=metrics.skipped("digits"))
    runner = DriftRunner(poll_interval_s=0.01, max_batch_events=200)
    runner.add(monitor=monitor, buffer=buffer)
    runner.start()
    try:
        for event in as_events(events_batch(rng, 600)):
            buffer.append(event)
        wait_until(lambda: monitor.phase is Phase.MONITORING, timeout_s=60)
        for event in as_events(events_batch(rng, 300, shift=1.0, t=time.time())):
            buffer.append(event)
        wait_until(lambda: any(r.name == "mmd_online" and r.drift for r in monitor.results()), timeout_s=30)
    finally:
        runner.stop()
    assert registry.get_sample_value("vai_drift_detected", {"model": "digits", "detector": "mmd_online"}) == 1.0


def test_runner_counts_each_event_it_takes_once_as_examined_or_skipped(wait_until) -> None:  # type: ignore[no-untyped-def]
    """Taken = examined + skipped: the warm-up's rows are examined, what comes past it and while calibrating is
    skipped, and so is a batch the detectors failed on (it is not examined again)."""
    rng = np.random.default_rng(6)
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry=registry)
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=metrics)
    buffer = IngestBuffer(capacity_events=5_000, skipped=metrics.skipped("digits"))
    runner = DriftRunner(poll_interval_s=0.01, max_batch_events=250)
    runner.add(monitor=monitor, buffer=buffer)
    runner.start()
    try:
        for event in as_events(events_batch(rng, 650)):  # 600 make the reference, 50 come past it
            buffer.append(event)
        wait_until(lambda: monitor.phase is Phase.MONITORING, timeout_s=60)
        for event in as_events(events_batch(rng, 300)):
            buffer.append(event)
        wait_until(lambda: buffer.settled_total == 950, timeout_s=30)
        assert buffer.examined_total + (skipped(registry) or 0) == buffer.taken_total == 950
        assert 600 + 300 >= buffer.examined_total >= 600 and (skipped(registry) or 0) >= 50

        def broken(batch: DriftBatch) -> list[DriftResult]:
            raise RuntimeError("detector failure")

        monitor.update = broken  # type: ignore[method-assign]  # a failing batch, on purpose
        before = (buffer.examined_total, skipped(registry) or 0)
        for event in as_events(events_batch(rng, 100)):
            buffer.append(event)
        wait_until(lambda: buffer.settled_total == 1050, timeout_s=30)
    finally:
        runner.stop()
    assert (buffer.examined_total, skipped(registry)) == (before[0], before[1] + 100)


def test_buffer_drops_oldest_and_counts() -> None:
    registry = CollectorRegistry()
    buffer = IngestBuffer(capacity_events=3, skipped=DriftMetrics(registry=registry).skipped("digits"))
    for i in range(5):
        buffer.append(DriftEvent(predicted=i, confidence=0.5, embedding=None, time_s=float(i)))
    assert len(buffer) == 3
    assert skipped(registry) == 2
    assert [e.predicted for e in buffer.drain(2)] == [2, 3]
    assert [e.predicted for e in buffer.drain(10)] == [4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"ert": 1000, "n_bootstraps": 1000}, "at least 10000", id="bootstraps-below-10x-ert"),
        pytest.param({"window_size": 300}, "shrink window_size", id="window-too-large-for-reference"),
        pytest.param({"reference_events": 200}, "raise them", id="warm-up-too-small-at-any-width"),
    ],
)
def test_config_errors_name_the_fix(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DriftConfig(**kwargs)


@pytest.mark.parametrize(
    ("width", "online"), [pytest.param(4, True, id="no-pca-at-4-d"), pytest.param(DIM, False, id="pca-at-16-d")]
)
def test_a_warm_up_too_small_for_pca_at_its_width_says_so(width: int, online: bool) -> None:
    """60 events start (the online detector needs 41 rows at window_size=10) and calibrate 4-d embeddings, which
    PCA to 4 dimensions leaves alone; 16-d ones need 81, PCA fitting on half of them. That warm-up calibrates
    without the online detector and window tests, whose absence the status names with the setting and the bound
    (not the 30 rows PCA left, as the online detector counts them); the output tests watch meanwhile."""
    config = CONFIG.model_copy(update={"reference_events": 60})
    assert DriftConfig.model_validate(config.model_dump()) == config, "60 events pass the start-up check"
    monitor = DriftMonitor(model="digits", config=config, metrics=DriftMetrics(registry=CollectorRegistry()))
    rng = np.random.default_rng(5)
    batch = events_batch(rng, 60)
    assert batch.embeddings is not None
    monitor.update(replace(batch, embeddings=np.ascontiguousarray(batch.embeddings[:, :width])))
    monitor.calibrate()
    assert phase(monitor) is Phase.MONITORING
    if online:
        assert monitor.calibration_error is None and monitor.online_reference_rows is not None
        return
    message = (
        "the online detector and window tests are off: the reference's 60 events have only 60 distinct 16-d "
        "embeddings, fewer than the 81 these drift settings need (PCA to pca_components=4 fits on pca_share=0.5 of "
        "them, and the online detector needs 41 of the rest for window_size=10); the output tests and "
        "embedding_distance run. For a warm-up raise VAI_DRIFT__REFERENCE_EVENTS to 81 or more"
    )
    assert monitor.calibration_error is not None and message in monitor.calibration_error
    assert monitor.online_reference_rows is None
    names = {r.name for r in monitor.update(events_batch(rng, 100))}
    assert names == {"output_class_chi2", "output_confidence_ks", "embedding_distance"}


def test_reference_rows_fit_pca_then_the_detectors_and_the_rest_only_calibrate() -> None:
    """``pca_share`` of the rows fit PCA; ``max_reference`` of the rest are the detectors' reference; the rows
    left over (here 150) calibrate the online detector as spare rows, projected by the same PCA."""
    from monitors.drift.online import OnlineDriftDetector
    from monitors.drift.reduction import Pca
    from monitors.drift.states import OnlineState, PcaState

    config = DriftConfig(**{**CONFIG.model_dump(), "pca_share": 0.25, "steady_steps_per_ert": 100})
    reference = Reference.from_batch(events_batch(np.random.default_rng(3), 600))
    state = _calibrated(reference, config).export_state()

    rng = np.random.default_rng(config.seed)
    pca_rows, rest = reference.split(150, rng)
    kept, left = rest.subsample(300, rng)
    assert left is not None and len(left) == 150
    pca = Pca.fit(pca_rows.embeddings, n_components=4)  # type: ignore[arg-type]
    torch.manual_seed(config.seed)
    expected = OnlineDriftDetector.calibrate(
        pca.transform(kept.embeddings),  # type: ignore[arg-type]
        method="mmd",
        ert=config.ert,
        window_size=config.window_size,
        n_bootstraps=config.bootstraps,
        steady_steps=100 * config.ert,
        spare=pca.transform(left.embeddings),  # type: ignore[arg-type]
    ).export_state()
    assert isinstance(state.pca, PcaState) and state.pca == pca.export_state()
    assert next(d for d in state.detectors if isinstance(d, OnlineState)) == expected


def test_a_state_stored_before_pca_share_is_adopted_and_scores_alike() -> None:
    """States written before ``pca_share`` existed fitted PCA on half the rows, as the default still does: they
    load with that default, so an owner with the same settings adopts them (``DriftStates.start`` compares the
    settings) and scores as the monitor that stored them."""
    rng = np.random.default_rng(4)
    monitor = _calibrated(Reference.from_batch(events_batch(rng, 600)))
    stored = monitor.export_state().model_dump(mode="json")
    assert "pca_share" not in stored["config"]  # at its default the state reads as the earlier version wrote it

    state = MonitorState.model_validate(stored)
    restored = DriftMonitor.from_state(state, metrics=DriftMetrics(registry=CollectorRegistry()))

    assert state.config == CONFIG.resolved(600)
    batch = events_batch(rng, 100)
    assert [r.score for r in restored.update(batch)] == [r.score for r in monitor.update(batch)]


@pytest.mark.parametrize("rows", [pytest.param(1999, id="odd"), pytest.param(2000, id="even")])
def test_default_pca_share_splits_as_the_halves_did(rows: int) -> None:
    """The default must fit PCA on ``rows // 2`` rows, as before ``pca_share``, or adopted states would not match."""
    assert DriftConfig().pca_rows(rows) == rows // 2
    assert DriftConfig(pca_share=0.25).pca_rows(rows) == rows // 4


def test_a_calibration_s_draws_are_its_own_while_other_threads_draw_from_torch() -> None:
    """Two models calibrate at once in the runner's threads, and window tests permute meanwhile: the MMD
    calibration draws from a generator of its own, so the same reference and seed give the same thresholds."""
    reference = Reference.from_batch(events_batch(np.random.default_rng(8), 600))

    def thresholds() -> tuple[float, ...]:
        (online,) = [d for d in _calibrated(reference).export_state().detectors if isinstance(d, OnlineState)]
        return online.thresholds

    alone = thresholds()
    stop = threading.Event()

    def draw_forever() -> None:
        while not stop.is_set():
            torch.randperm(1000)

    noise = threading.Thread(target=draw_forever)
    noise.start()
    try:
        meanwhile = thresholds()
    finally:
        stop.set()
        noise.join()
    assert meanwhile == alone


def _online(state: MonitorState) -> OnlineState:
    return next(d for d in state.detectors if isinstance(d, OnlineState))


@pytest.mark.parametrize(
    ("rows", "steady", "other"),
    [pytest.param(4999, 0, 1000, id="below-5000-sequential"), pytest.param(5000, 1000, 0, id="5000-steady")],
)
def test_the_automatic_setting_calibrates_steady_from_5000_reference_rows(rows: int, steady: int, other: int) -> None:
    """At the default the monitor builds what the explicit setting for its reference's size builds, and stores
    that integer: a monitor of the previous release reads the state, and below 5,000 rows the stored settings are
    the ones it wrote at its own default."""
    config = CONFIG.model_copy(update={"window_tests": False})
    reference = Reference.from_batch(events_batch(np.random.default_rng(5), rows))

    state = _calibrated(reference, config).export_state()
    same = _calibrated(reference, config.model_copy(update={"steady_steps_per_ert": steady})).export_state()
    different = _calibrated(reference, config.model_copy(update={"steady_steps_per_ert": other})).export_state()

    assert state.config.steady_steps_per_ert == steady
    assert _online(state) == _online(same)
    assert _online(state).thresholds[-1] != _online(different).thresholds[-1], "the setting changes the build"
    stored = json.loads(state.model_dump_json())["config"]
    assert type(stored["steady_steps_per_ert"]) is int and stored["steady_steps_per_ert"] == steady
    assert PreviousDriftConfig.model_validate(stored).steady_steps_per_ert == steady  # refuses null, unknown keys
    if steady == 0:
        assert stored == PreviousDriftConfig(**config.model_dump(exclude={"steady_steps_per_ert"})).model_dump()


def test_a_pca_share_other_than_the_default_is_stored() -> None:
    config = DriftConfig(pca_share=0.25)
    assert config.model_dump()["pca_share"] == 0.25
    assert DriftConfig.model_validate(config.model_dump()) == config
    assert DriftConfig.model_validate(DriftConfig().model_dump()) == DriftConfig()


def test_a_warm_up_batch_without_embeddings_or_of_another_width_cannot_turn_embedding_drift_off() -> None:
    """Low traffic: a batch of events without embeddings comes first, and others with none or with another width
    come between: the reference still holds embeddings (of the first width), and the embedding detectors run."""
    rng = np.random.default_rng(9)
    registry = CollectorRegistry()
    monitor = DriftMonitor(model="digits", config=CONFIG, metrics=DriftMetrics(registry=registry))

    def bare(n: int) -> list[DriftEvent]:
        return [replace(e, embedding=None) for e in as_events(events_batch(rng, n))]

    def wide(n: int) -> list[DriftEvent]:
        return [replace(e, embedding=np.zeros(DIM + 3, np.float32)) for e in as_events(events_batch(rng, n))]

    monitor.update(DriftBatch.from_events(bare(30)))  # collected while no embedding has come
    assert monitor.embedding_width is None
    for _ in range(7):
        events = as_events(events_batch(rng, 100))
        monitor.update(DriftBatch.from_events(events, width=monitor.embedding_width))
        assert monitor.embedding_width == DIM
        monitor.update(DriftBatch.from_events(bare(5), width=monitor.embedding_width))
        monitor.update(DriftBatch.from_events(wide(5), width=monitor.embedding_width))
    assert phase(monitor) is Phase.CALIBRATING
    monitor.calibrate()

    assert monitor.embedding_width == DIM
    assert "mmd_online" in {r.name for r in monitor.update(events_batch(rng, 100))}
    assert skipped(registry) == 30 + 7 * 10 + 100  # the first bare batch, the odd ones, 100 past the reference


def test_embeddings_too_large_for_float32_arithmetic_are_left_out_not_scored_nan() -> None:
    """1e20 fits float32 but its square does not: such rows would turn every embedding score into NaN (read as
    "no drift"); they are left out and counted, and the rest of the batch is scored as it would be alone."""
    rng = np.random.default_rng(10)
    reference = Reference.from_batch(events_batch(rng, 600))
    registry = CollectorRegistry()
    monitor = _calibrated(reference, registry=registry)
    twin = _calibrated(reference)
    batch = events_batch(rng, 100)
    assert batch.embeddings is not None
    huge = batch.embeddings.copy()
    huge[[3, 40], 1] = 1e20

    ours = {r.name: r for r in monitor.update(replace(batch, embeddings=huge))}
    kept = np.array([i not in (3, 40) for i in range(100)])
    theirs = {
        r.name: r
        for r in twin.update(
            replace(
                batch,
                predicted=batch.predicted[kept],
                confidence=batch.confidence[kept],
                embeddings=batch.embeddings[kept],
            )
        )
    }

    assert all(np.isfinite(r.score) for r in ours.values())
    assert ours["mmd_online"].score == theirs["mmd_online"].score
    assert embeddings_skipped(monitor, registry, "too_large") == 2


def test_a_batch_keeps_the_embeddings_of_the_width_asked_for_even_when_fewer() -> None:
    wide = [DriftEvent(predicted=0, confidence=0.9, embedding=np.ones(8, np.float32), time_s=1.0)] * 3
    narrow = [DriftEvent(predicted=1, confidence=0.8, embedding=np.ones(4, np.float32), time_s=2.0)]
    bare = [DriftEvent(predicted=2, confidence=0.7, embedding=None, time_s=3.0)]
    events = [*wide, *narrow, *bare]

    most = DriftBatch.from_events(events)
    asked = DriftBatch.from_events(events, width=4)

    assert most.embeddings is not None and most.embeddings.shape == (3, 8) and most.sent_without == 1
    assert asked.embeddings is not None and asked.embeddings.shape == (1, 4) and asked.unembedded == 4
    part = asked.embedded_part()
    assert part is not None and part.predicted.tolist() == [1] and len(asked) == 5


class _Calibrating:
    """Just enough of a drift monitor for the runner's calibration threads."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.needs_calibration = True
        self.embedding_width = None

    def calibrate(self) -> None:
        self.needs_calibration = False


def test_runner_keeps_no_calibration_thread_of_a_replaced_or_removed_monitor(wait_until) -> None:  # type: ignore[no-untyped-def]
    """A new reference replaces the model's monitor: the finished calibration of the old one is not kept."""
    runner = DriftRunner(poll_interval_s=0.01)
    buffer = IngestBuffer(capacity_events=10)
    for _ in range(3):
        monitor = _Calibrating("digits")
        runner.add(monitor=monitor, buffer=buffer)  # type: ignore[arg-type]
        runner.run_once()
        wait_until(lambda m=monitor: not m.needs_calibration)
    assert len(runner._calibrations) <= 1
    runner.remove("digits")
    assert not runner._calibrations


class _Watched(DriftMonitor):
    """A real monitor whose calibrations are counted (how many at once) and can be held until released."""

    def __init__(self, model: str, reference: Reference, tally: dict[str, int], lock: threading.Lock) -> None:
        super().__init__(
            model=model, config=CONFIG, metrics=DriftMetrics(registry=CollectorRegistry()), reference=reference
        )
        self.tally, self.lock = tally, lock
        self.release = threading.Event()
        self.release.set()
        self.calibrated = False

    def calibrate(self) -> None:
        with self.lock:
            self.tally["now"] += 1
            self.tally["most"] = max(self.tally["most"], self.tally["now"])
        try:
            self.release.wait()
            super().calibrate()
            self.calibrated = True
        finally:
            with self.lock:
                self.tally["now"] -= 1


def test_runner_calibrates_no_more_models_at_once_than_allowed(wait_until) -> None:  # type: ignore[no-untyped-def]
    """Each calibration holds its kernel matrices at once: three references arriving together calibrate
    one after another under ``max_calibrations=1``, and all of them do."""
    reference = Reference.from_batch(events_batch(np.random.default_rng(7), 600))
    tally, lock = {"now": 0, "most": 0}, threading.Lock()
    monitors = [_Watched(f"m{i}", reference, tally, lock) for i in range(3)]
    runner = DriftRunner(poll_interval_s=0.01, max_calibrations=1)
    for monitor in monitors:
        runner.add(monitor=monitor, buffer=IngestBuffer(capacity_events=10))
    runner.run_once()  # one thread per model, started together
    wait_until(lambda: all(m.calibrated for m in monitors), timeout_s=60)
    assert tally["most"] == 1
    with pytest.raises(ValueError, match="max_calibrations"):
        DriftRunner(max_calibrations=0)


def test_a_calibration_waiting_its_turn_is_dropped_when_its_monitor_is_replaced(wait_until) -> None:  # type: ignore[no-untyped-def]
    """A new reference replaces a model's monitor while its calibration waits for a slot: the old one is
    never calibrated (its work would be thrown away), the new one is."""
    reference = Reference.from_batch(events_batch(np.random.default_rng(8), 600))
    tally, lock = {"now": 0, "most": 0}, threading.Lock()
    busy, old, new = (_Watched(name, reference, tally, lock) for name in ("busy", "digits", "digits"))
    busy.release.clear()
    runner = DriftRunner(poll_interval_s=0.01, max_calibrations=1)
    runner.add(monitor=busy, buffer=IngestBuffer(capacity_events=10))
    runner.run_once()
    wait_until(lambda: tally["now"] == 1)  # the busy model holds the slot
    runner.add(monitor=old, buffer=IngestBuffer(capacity_events=10))
    runner.run_once()  # its thread waits for the slot
    runner.add(monitor=new, buffer=IngestBuffer(capacity_events=10))
    runner.run_once()  # a thread for the new monitor, waiting as well
    busy.release.set()

    def calibrating() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("drift-calibrate-")]

    wait_until(lambda: not calibrating(), timeout_s=60)  # both threads of "digits" have ended
    assert new.calibrated and busy.calibrated
    assert not old.calibrated and old.needs_calibration


@pytest.mark.parametrize("method", ["mmd", "lsdd"])
@pytest.mark.parametrize("width", [CONFIG.pca_components or 0, DIM], ids=["without-pca", "with-pca"])
def test_least_rows_is_the_smallest_reference_that_calibrates(method: str, width: int) -> None:
    """What a sidecar refuses an upload below (``DriftConfig.least_rows``) is exactly where the online detector
    starts to calibrate: one distinct row fewer leaves it out (saying so), and repeated rows do not count, though the
    MMD detector takes them (as many as would fill its reference here)."""
    config = CONFIG.model_copy(update={"online_detector": method})
    least = config.least_rows(width)
    if width > (config.pca_components or 0):
        assert least > config.least_reference, "PCA takes its share of the rows first"
    else:
        assert least == config.least_reference
    rng = np.random.default_rng(6)

    def monitor_of(rows: int, repeats: int = 0) -> DriftMonitor:
        batch = events_batch(rng, rows)
        assert batch.embeddings is not None
        x = batch.embeddings[:, :width]
        x = np.concatenate([x, x[:repeats]])  # repeated rows: they count once
        reference = Reference(
            predicted=np.resize(batch.predicted, len(x)), confidence=np.resize(batch.confidence, len(x)), embeddings=x
        )
        return DriftMonitor(
            model="digits", config=config, metrics=DriftMetrics(registry=CollectorRegistry()), reference=reference
        )

    enough = monitor_of(least)
    enough.calibrate()
    assert enough.online_reference_rows is not None and enough.calibration_error is None
    fewer = monitor_of(least - 1, repeats=least)
    fewer.calibrate()  # the output tests and embedding_distance, without the online detector
    assert fewer.online_reference_rows is None
    assert fewer.calibration_error is not None and f"only {least - 1} distinct" in fewer.calibration_error
