"""Drift, delayed labels, calibration and cohort quality, wired to the request path and Redis.

The request path only appends: embeddings and outputs go to a bounded buffer
that a background thread feeds to the drift detectors, and a compact record of
each prediction goes to a bounded buffer that a background task writes to Redis
(with a TTL) for delayed labels to join. Calibration and quality figures are
computed when Prometheus scrapes, from sliding windows of labelled predictions.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis

from monitors.cohorts import CohortGuard
from monitors.collector import QualityCollector
from monitors.drift.base import DriftEvent, DriftResult
from monitors.drift.buffer import IngestBuffer
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.reference import Reference
from monitors.drift.runner import DriftRunner
from monitors.drift.states import MonitorState
from monitors.records import LabelledPrediction
from monitors.window import WindowStore
from common import keys
from common.redis import REDIS_DOWN
from service.settings import Settings
from service.validation import Prediction, softmax

log = logging.getLogger(__name__)

_SET_ALL = """
for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end
return #KEYS
"""
"""One round trip and one command for a whole batch of prediction records (a pipeline of SETs
cost ~40 µs of event-loop time per record)."""


@dataclass(frozen=True, slots=True)
class LabelVerdict:
    index: int
    request_id: str
    outcome: str
    """``matched``, ``unmatched`` (never seen, expired or labelled already) or ``rejected``."""
    error: str | None = None


@dataclass(slots=True)
class LabelsResult:
    matched: int = 0
    unmatched: list[LabelVerdict] = field(default_factory=list)
    rejected: list[LabelVerdict] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DriftStatus:
    state: str
    detectors: tuple[DriftResult, ...]
    calibration_error: str | None


class Monitoring:
    def __init__(
        self, settings: Settings, redis: Redis, registry: CollectorRegistry, *, known_model: Callable[[str], bool]
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._known_model = known_model
        guard = CohortGuard(keys=settings.cohort_keys, max_values_per_key=settings.max_cohort_values)
        self.windows = WindowStore(
            guard=guard, horizon_s=settings.calibration_window_s, max_items=settings.calibration_window_max
        )
        QualityCollector(store=self.windows, registry=registry)
        self._drift_metrics = DriftMetrics(registry=registry)
        self.runner = DriftRunner(
            busy_share=settings.drift_cpu_share,
            max_batch_events=200,
            math_threads=settings.drift_threads,
            background_priority=True,
        )
        self._buffers: dict[str, IngestBuffer] = {}
        self._versions: dict[str, str] = {}
        """Drift-state version each model's monitor came from (or was stored as)."""
        self._pending: dict[tuple[str, str], bytes] = {}
        self._set_all = redis.register_script(_SET_ALL)
        self.labels = Counter(
            "vai_labels",
            "Delayed labels by whether they found their prediction.",
            ["model", "matched"],
            registry=registry,
        )
        self.records_dropped = Counter(
            "vai_prediction_records_dropped",
            "Prediction records not kept for label joins (buffer full).",
            ["model"],
            registry=registry,
        )

    # --- request path -------------------------------------------------------------------------

    def observe(self, prediction: Prediction, version: str) -> None:
        """Hand one accepted prediction to the monitors (O(1), no I/O)."""
        model = prediction.model
        buffer = self._buffers.get(model)
        if buffer is None:  # not ``or``: an empty buffer is falsy
            buffer = self._start_model(model)
        buffer.append(
            DriftEvent(prediction.predicted, prediction.confidence, prediction.embedding, prediction.timestamp)
        )
        probabilities = self._probabilities(prediction)
        if prediction.label is not None:
            self._add_labelled(
                model,
                version,
                prediction.predicted,
                prediction.confidence,
                prediction.label,
                prediction.timestamp,
                prediction.cohort,
                probabilities,
            )
            self.labels.labels(model, "true").inc()
            return
        if len(self._pending) >= self._settings.prediction_buffer_events:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self.records_dropped.labels(oldest[0]).inc()  # counted against the model whose record is lost
        self._pending[(model, prediction.request_id)] = orjson.dumps(
            (
                version,
                prediction.predicted,
                prediction.confidence,
                prediction.num_classes,
                probabilities,
                prediction.cohort,
                prediction.timestamp,
            )
        )

    def _probabilities(self, prediction: Prediction) -> list[float] | None:
        if prediction.num_classes > self._settings.brier_max_classes:
            return None
        scores = prediction.scores
        return (softmax(scores) if prediction.from_logits else scores).tolist()  # type: ignore[no-any-return]

    def _start_model(self, model: str) -> IngestBuffer:
        buffer = IngestBuffer(
            capacity_events=self._settings.drift_buffer_events, skipped=self._drift_metrics.skipped(model)
        )
        self._buffers[model] = buffer
        if self.runner.monitor(model) is None:
            self.runner.add(
                monitor=DriftMonitor(model=model, config=self._settings.drift, metrics=self._drift_metrics),
                buffer=buffer,
            )
        return buffer

    def _add_labelled(
        self,
        model: str,
        version: str,
        predicted: int,
        confidence: float,
        label: int,
        time_s: float,
        cohort: dict[str, str],
        probabilities: list[float] | None,
    ) -> None:
        vector = np.asarray(probabilities, dtype=np.float64) if probabilities is not None else None
        self.windows.append(
            LabelledPrediction(
                model=model,
                version=version,
                predicted=predicted,
                confidence=min(max(confidence, 0.0), 1.0),
                label=label,
                time_s=time_s,
                cohort=cohort,
                probabilities=vector,
            )
        )

    # --- background ---------------------------------------------------------------------------

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    async def flush_records(self, *, batch: int = 500) -> int:
        """Write buffered prediction records to Redis (each with the prediction TTL)."""
        if not self._pending:
            return 0
        taken = [(key, self._pending.pop(key)) for key in list(self._pending)[:batch]]
        try:
            await self._set_all(
                keys=[keys.prediction(model, request_id) for (model, request_id), _ in taken],
                args=[self._settings.prediction_ttl_s, *(body for _, body in taken)],
            )
        except REDIS_DOWN as error:
            self._pending = dict(taken) | self._pending  # keep them, oldest first, for the next try
            log.debug("prediction records not written yet: %s", error)
            return 0
        return len(taken)

    async def apply_labels(self, labels: list[tuple[str, str, int]]) -> LabelsResult:
        """Join delayed labels to their predictions: local buffer first, then Redis (GETDEL)."""
        result = LabelsResult()
        remote: list[tuple[int, str, str, int]] = []
        for index, (model, request_id, label) in enumerate(labels):
            if not self._known_model(model):
                result.rejected.append(LabelVerdict(index, request_id, "rejected", f"model: unknown model {model!r}"))
                continue
            body = self._pending.pop((model, request_id), None)
            if body is None:
                remote.append((index, model, request_id, label))
            else:
                self._join(result, index, model, request_id, label, body)
        if remote:
            pipe = self._redis.pipeline(transaction=False)
            for _, model, request_id, _ in remote:
                pipe.getdel(keys.prediction(model, request_id))
            for (index, model, request_id, label), body in zip(remote, await pipe.execute(), strict=True):
                if body is None:
                    result.unmatched.append(LabelVerdict(index, request_id, "unmatched"))
                    self.labels.labels(model, "false").inc()
                else:
                    self._join(result, index, model, request_id, label, body)
        return result

    def _join(self, result: LabelsResult, index: int, model: str, request_id: str, label: int, body: bytes) -> None:
        version, predicted, confidence, num_classes, probabilities, cohort, time_s = orjson.loads(body)
        if label >= num_classes:
            result.rejected.append(
                LabelVerdict(
                    index, request_id, "rejected", f"label: class {label} out of range for {num_classes} classes"
                )
            )
            return
        self._add_labelled(model, version, predicted, confidence, label, time_s, cohort, probabilities)
        self.labels.labels(model, "true").inc()
        result.matched += 1

    # --- drift ---------------------------------------------------------------------------------

    def set_reference(self, model: str, reference: Reference) -> None:
        """Replace the model's monitor by one calibrating on ``reference`` (in the background)."""
        buffer = self._buffers.get(model)
        if buffer is None:
            buffer = self._start_model(model)
        self.runner.add(
            monitor=DriftMonitor(
                model=model, config=self._settings.drift, metrics=self._drift_metrics, reference=reference
            ),
            buffer=buffer,
        )
        self._versions.pop(model, None)

    def drift_status(self, model: str) -> DriftStatus | None:
        monitor = self.runner.monitor(model)
        if monitor is None:
            return None
        return DriftStatus(monitor.phase.value, monitor.results(), monitor.calibration_error)

    async def sync_drift_states(self) -> None:
        """Share calibrated states through Redis: store ours once calibrated, adopt newer ones."""
        for model in list(self._buffers):
            monitor = self.runner.monitor(model)
            stored_version = await self._redis.get(keys.drift_version(model))
            stored = stored_version.decode() if isinstance(stored_version, bytes) else stored_version
            newer = stored is not None and stored != self._versions.get(model)
            if newer and (monitor is None or monitor.phase.value != "calibrating"):
                await self._adopt(model, stored)  # type: ignore[arg-type]
                continue
            if monitor is not None and monitor.phase.value == "monitoring" and model not in self._versions:
                await self._store(model, monitor)

    async def _adopt(self, model: str, version: str) -> None:
        body = await self._redis.get(keys.drift_state(model))
        if body is None:
            return
        try:
            state = MonitorState.model_validate_json(body)
        except ValueError as error:
            log.error("ignoring unreadable drift state of %s in Redis: %s", model, error)
            self._versions[model] = version
            return
        monitor = DriftMonitor.from_state(state, metrics=self._drift_metrics)
        self.runner.add(monitor=monitor, buffer=self._buffers[model])
        self._versions[model] = version
        log.info("drift monitor of %s restored from Redis (version %s)", model, version)

    async def _store(self, model: str, monitor: DriftMonitor) -> None:
        version = uuid.uuid4().hex
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(keys.drift_state(model), monitor.export_state().model_dump_json())
        pipe.set(keys.drift_version(model), version)
        await pipe.execute()
        self._versions[model] = version
        log.info("drift monitor of %s calibrated; state stored (version %s)", model, version)


def reference_from_arrays(embeddings: Any, probabilities: Any) -> Reference:
    """A drift reference from uploaded arrays; raises ``ValueError`` naming the field."""
    x = _matrix(embeddings, "embeddings")
    if probabilities is None:
        return Reference(
            predicted=np.zeros(len(x), dtype=np.int64), confidence=np.ones(len(x)), embeddings=x, has_outputs=False
        )
    p = _matrix(probabilities, "probabilities").astype(np.float64)
    if len(p) != len(x):
        raise ValueError(f"probabilities: {len(p)} rows for {len(x)} embeddings")
    if (p < 0).any() or (p > 1).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probabilities: every row must lie in [0, 1] and sum to 1 ± 1e-3")
    return Reference(predicted=p.argmax(axis=1).astype(np.int64), confidence=p.max(axis=1), embeddings=x)


def _matrix(value: Any, field_name: str) -> npt.NDArray[np.float32]:
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise ValueError(f"{field_name}: must be a rectangular array of numbers") from None
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"{field_name}: need a 2-D array with at least 2 rows, got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{field_name}: every value must be a finite float32")
    return array
