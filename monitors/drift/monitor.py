"""A model's drift monitor: reference, detectors, phases and latest verdicts.

Phases: ``warming_up`` (no reference was given: the first
``config.reference_events`` events become it) -> ``calibrating`` (waiting for
:meth:`DriftMonitor.calibrate`, which is slow and runs in a worker thread;
events meanwhile are skipped and counted) -> ``monitoring``. A monitor rebuilt
with :meth:`DriftMonitor.from_state` starts in ``monitoring``.

Reference rows: when PCA applies, ``pca_share`` of them fit it and nothing else;
of the rest, ``max_reference`` are the multivariate detectors' reference and
the others (at most ``SPARE_PER_REFERENCE_ROW`` per reference row) are spare
rows that only the online MMD detector's calibration sees.

Detectors built (alibi-detect is imported only for the first two):

* embeddings, after PCA: the online detector (``mmd_online``/``lsdd_online``)
  and the windowed MMD/KS tests (``window_mmd``, ``window_ks``);
* raw embeddings: ``embedding_distance``;
* predictions: ``output_class_chi2``, ``output_confidence_ks``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import torch
from numpy.typing import NDArray

from monitors.drift.base import DriftBatch, DriftDetector, DriftResult
from monitors.drift.config import DriftConfig
from monitors.drift.embedding import EmbeddingDistance
from monitors.drift.metrics import DriftMetrics
from monitors.drift.output import OutputDrift
from monitors.drift.reduction import Pca
from monitors.drift.reference import Reference
from monitors.drift.states import (
    EmbeddingDistanceState,
    MonitorState,
    OnlineState,
    OutputDriftState,
    WindowTestsState,
)
from monitors.drift.tumbling import concat, head

SPARE_PER_REFERENCE_ROW = 2
"""Reference rows beyond ``max_reference`` that calibrate the online detector, per detector reference row
(a random subsample above this): they bound the calibration's kernel matrix, not the cost per event."""


class Phase(StrEnum):
    WARMING_UP = "warming_up"
    CALIBRATING = "calibrating"
    MONITORING = "monitoring"


class NotCalibratedError(RuntimeError):
    """The monitor has no calibrated detectors yet."""


@dataclass(frozen=True, slots=True)
class _Detectors:
    config: DriftConfig
    """The config they were built with, resolved against the reference (:meth:`DriftConfig.resolved`)."""
    pca: Pca | None
    outputs: tuple[DriftDetector, ...]
    """Fed every event (predicted class and confidence)."""
    embedded: tuple[DriftDetector, ...]
    """Fed the events that came with an embedding of ``width``, as it came."""
    reduced: tuple[DriftDetector, ...]
    """Fed the same events with PCA applied to their embeddings."""
    width: int | None
    """Embedding width of the reference the embedding detectors compare against; ``None`` when it had none."""


@dataclass(frozen=True, slots=True)
class _Pass:
    """One batch through the detectors: their fresh verdicts, and the events whose embedding none examined."""

    results: list[DriftResult]
    missing: int = 0
    """Events that came without an embedding."""
    other_width: int = 0
    """Events whose embedding had another width than the reference's."""
    too_large: int = 0
    """Events whose embedding is too large for float32 arithmetic (its squared norm overflows)."""


class DriftMonitor:
    """Drift monitoring of one model; ``update`` from one thread, the other methods from any."""

    def __init__(
        self, *, model: str, config: DriftConfig, metrics: DriftMetrics, reference: Reference | None = None
    ) -> None:
        self._model = model
        self._config = config
        self._metrics = metrics
        self._lock = threading.Lock()
        self._reference = reference
        self._from_warmup = False
        self._warmup: list[DriftBatch] = []
        self._warmup_count = 0
        self._warmup_width: int | None = None
        """Embedding width of the warm-up's first event that had one: the reference's."""
        self._detectors: _Detectors | None = None
        self._calibrating = False
        self._error: str | None = None
        self._results: dict[str, DriftResult] = {}

    @classmethod
    def from_state(cls, state: MonitorState, *, metrics: DriftMetrics) -> DriftMonitor:
        """A monitor in ``monitoring`` from an exported state (its own config included), without calibration."""
        monitor = cls(model=state.model, config=state.config, metrics=metrics)
        monitor._detectors = _restore(state, metrics)
        return monitor

    @property
    def model(self) -> str:
        return self._model

    @property
    def phase(self) -> Phase:
        with self._lock:
            return self._phase_locked()

    @property
    def needs_calibration(self) -> bool:
        """True when a reference waits for :meth:`calibrate` and no calibration ran or failed."""
        with self._lock:
            return self._reference is not None and self._detectors is None and not self._calibrating and not self._error

    @property
    def calibration_error(self) -> str | None:
        """Why the last calibration failed; calling :meth:`calibrate` again retries."""
        with self._lock:
            return self._error

    @property
    def embedding_width(self) -> int | None:
        """Width of the embeddings the detectors compare, or in warm-up the reference's so far (``None`` while
        none has come, or for a model without embeddings)."""
        with self._lock:
            return self._warmup_width if self._detectors is None else self._detectors.width

    def results(self) -> tuple[DriftResult, ...]:
        """Latest verdict of each detector, by name."""
        with self._lock:
            return tuple(self._results[name] for name in sorted(self._results))

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        """Take the next events: collect them, skip them, or run the detectors, depending on the phase."""
        with self._lock:
            detectors = self._detectors
            if detectors is None:
                self._take_warmup(batch)
                return []
        done = _run(detectors, batch)  # outside the lock: readers of results() must not wait on detection
        results: list[DriftResult] = []
        with self._lock:
            for result in done.results:
                if not (math.isfinite(result.score) and math.isfinite(result.threshold)):  # no verdict: keep the last
                    continue
                previous = self._results.get(result.name)
                since = (previous.since if previous and previous.drift else batch.time_s) if result.drift else None
                results.append(replace(result, since=since))
                self._results[result.name] = results[-1]
        for result in results:
            self._metrics.record(self._model, result)
        self._metrics.embeddings_skipped(
            self._model, missing=done.missing, other_width=done.other_width, too_large=done.too_large
        )
        return results

    def calibrate(self) -> None:
        """Fit PCA and detectors on the reference (slow); then the monitor is ``monitoring``."""
        with self._lock:
            if self._reference is None or self._detectors is not None or self._calibrating:
                raise RuntimeError(f"model {self._model}: nothing to calibrate in phase {self._phase_locked().value}")
            self._calibrating, self._error, reference = True, None, self._reference
        try:
            # Resolved on the rows as handed over (uploaded or collected), before deduplication and the PCA split:
            # what an owner adopting the stored state can count again (``DriftStates.start``).
            config = self._config.resolved(len(reference))
            # Seeded bootstrap: the same reference gives the same thresholds on every replica and rerun. The MMD
            # calibration draws from a generator of its own, so other models calibrating (or window tests
            # permuting) in other threads at the same time cannot change its draws; what draws from torch's
            # global generator (LSDD, inside alibi-detect) is seeded too, best effort.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                generator = torch.Generator().manual_seed(config.seed)
                detectors = _build(self._model, reference, config, self._metrics, generator)
        except Exception as error:
            with self._lock:
                self._calibrating, self._error = False, f"{type(error).__name__}: {error}"
                if self._from_warmup:  # e.g. too few distinct rows: collect a fresh warm-up instead of sticking
                    self._reference, self._from_warmup, self._warmup_count = None, False, 0
                    self._warmup_width = None
            raise
        with self._lock:
            self._calibrating, self._detectors = False, detectors

    def export_state(self) -> MonitorState:
        """The calibrated state (see :mod:`monitors.drift.states`), with the config it was calibrated with, resolved
        (no ``None`` left to choose); raises ``NotCalibratedError`` before that."""
        with self._lock:
            detectors = self._detectors
        if detectors is None:
            raise NotCalibratedError(f"model {self._model} is not calibrated yet: export once phase is 'monitoring'")
        return MonitorState(
            model=self._model,
            config=detectors.config,
            pca=None if detectors.pca is None else detectors.pca.export_state(),
            detectors=tuple(d.export_state() for d in (*detectors.reduced, *detectors.outputs, *detectors.embedded)),
        )

    def _phase_locked(self) -> Phase:
        if self._detectors is not None:
            return Phase.MONITORING
        return Phase.CALIBRATING if self._reference is not None else Phase.WARMING_UP

    def _take_warmup(self, batch: DriftBatch) -> None:
        """Collect the reference. Once an event with an embedding has come, the reference holds only events with
        an embedding of that first width (collected before it, events without one are let go): a batch with none
        cannot leave the model without embedding detectors."""
        skipped = self._metrics.skipped(self._model)
        if self._reference is not None:
            skipped.inc(len(batch))
            return
        part = batch.embedded_part()
        if part is not None and part.embeddings is not None and self._warmup_width is None:
            self._warmup_width = int(part.embeddings.shape[1])
            skipped.inc(self._warmup_count)  # collected without embeddings: a reference with them replaces them
            self._warmup, self._warmup_count = [], 0
        if self._warmup_width is not None:
            if part is None or part.embeddings is None or part.embeddings.shape[1] != self._warmup_width:
                skipped.inc(len(batch))
                return
            skipped.inc(len(batch) - len(part))
            batch = part
        wanted = self._config.reference_events - self._warmup_count
        self._warmup.append(head(batch, wanted))
        self._warmup_count += min(wanted, len(batch))
        if len(batch) > wanted:
            skipped.inc(len(batch) - wanted)
        if self._warmup_count >= self._config.reference_events:
            self._reference = Reference.from_batch(concat(self._warmup))
            self._from_warmup, self._error = True, None
            self._warmup = []


def _run(detectors: _Detectors, batch: DriftBatch) -> _Pass:
    results = [result for detector in detectors.outputs for result in detector.update(batch)]
    if detectors.width is None:
        return _Pass(results)
    missing = batch.sent_without
    part = batch.embedded_part()
    if part is None or part.embeddings is None or part.embeddings.shape[1] != detectors.width:
        return _Pass(results, missing=missing, other_width=len(batch) - missing)
    other_width = batch.unembedded - missing
    # Rows whose squared norm overflows float32, in which the detectors compute (values past ~1.8e19), would turn
    # every score into NaN: left out and counted.
    fits = np.isfinite(np.einsum("ij,ij->i", part.embeddings, part.embeddings))
    too_large = len(part) - int(np.count_nonzero(fits))
    if too_large == len(part):
        return _Pass(results, missing=missing, other_width=other_width, too_large=too_large)
    if too_large:
        part = part.rows(np.flatnonzero(fits))
    for detector in detectors.embedded:
        results.extend(detector.update(part))
    if detectors.reduced and part.embeddings is not None:
        pca = detectors.pca
        reduced = part if pca is None else replace(part, embeddings=pca.transform(part.embeddings))
        for detector in detectors.reduced:
            results.extend(detector.update(reduced))
    return _Pass(results, missing=missing, other_width=other_width, too_large=too_large)


def _build(
    model: str, reference: Reference, config: DriftConfig, metrics: DriftMetrics, generator: torch.Generator
) -> _Detectors:
    rng = np.random.default_rng(config.seed)
    ref = reference.deduplicated()
    outputs: list[DriftDetector] = []
    if ref.has_outputs:
        outputs.append(
            OutputDrift.fit(
                predicted=ref.predicted,
                confidence=ref.confidence,
                window_events=config.window_events,
                p_value=config.p_value,
            )
        )
    if ref.embeddings is None:
        return _Detectors(config=config, pca=None, outputs=tuple(outputs), embedded=(), reduced=(), width=None)
    distance = EmbeddingDistance.fit(
        ref.embeddings,
        window_events=config.window_events,
        p_value=config.p_value,
        histogram=metrics.distance_histogram(model),
    )
    pca, detector_ref = None, ref
    if config.pca_components is not None and ref.embeddings.shape[1] > config.pca_components:
        # Axes fitted on the rows the detectors compare against overstate the reference's spread along
        # them (sample-eigenvalue bias) and read as drift on clean data, so PCA gets disjoint rows.
        pca_ref, detector_ref = ref.split(config.pca_rows(len(ref)), rng)
        pca = Pca.fit(_embeddings(pca_ref), n_components=config.pca_components)
    kept, left = detector_ref.subsample(config.max_reference, rng)
    x = _embeddings(kept)
    spare = None if left is None else _embeddings(left.subsample(SPARE_PER_REFERENCE_ROW * len(kept), rng)[0])
    if pca is not None:
        x, spare = pca.transform(x), None if spare is None else pca.transform(spare)
    return _Detectors(
        config=config,
        pca=pca,
        outputs=tuple(outputs),
        embedded=(distance,),
        reduced=tuple(_alibi_detectors(x, spare, config, generator)),
        width=int(ref.embeddings.shape[1]),
    )


def _embeddings(reference: Reference) -> NDArray[np.float32]:
    if reference.embeddings is None:
        raise ValueError("reference has no embeddings")
    return reference.embeddings


def _alibi_detectors(
    x: NDArray[np.float32], spare: NDArray[np.float32] | None, config: DriftConfig, generator: torch.Generator
) -> list[DriftDetector]:
    # Imported here so a deployment with online_detector="none" and window_tests=False never loads alibi-detect.
    from monitors.drift.online import OnlineDriftDetector
    from monitors.drift.window_tests import WindowTests

    detectors: list[DriftDetector] = []
    if config.online_detector != "none":
        detectors.append(
            OnlineDriftDetector.calibrate(
                x,
                method=config.online_detector,
                ert=config.ert,
                window_size=config.window_size,
                n_bootstraps=config.bootstraps,
                steady_steps=config.steady_steps,
                spare=spare,
                generator=generator,
                device=config.device,
            )
        )
    if config.window_tests:
        detectors.append(
            WindowTests(
                x,
                window_events=config.window_events,
                p_value=config.p_value,
                n_permutations=config.n_permutations,
                device=config.device,
            )
        )
    return detectors


def _restore(state: MonitorState, metrics: DriftMetrics) -> _Detectors:
    device = state.config.device
    outputs: list[DriftDetector] = []
    embedded: list[EmbeddingDistance] = []
    reduced: list[DriftDetector] = []
    for detector_state in state.detectors:
        if isinstance(detector_state, OutputDriftState):
            outputs.append(OutputDrift.from_state(detector_state))
        elif isinstance(detector_state, EmbeddingDistanceState):
            histogram = metrics.distance_histogram(state.model)
            embedded.append(EmbeddingDistance.from_state(detector_state, histogram=histogram))
        elif isinstance(detector_state, OnlineState):
            from monitors.drift.online import OnlineDriftDetector

            reduced.append(OnlineDriftDetector.from_state(detector_state, device=device))
        elif isinstance(detector_state, WindowTestsState):
            from monitors.drift.window_tests import WindowTests

            reduced.append(WindowTests.from_state(detector_state, device=device))
    pca = None if state.pca is None else Pca.from_state(state.pca)
    width = embedded[0].width if embedded else pca.input_dim if pca is not None else None
    return _Detectors(
        config=state.config,
        pca=pca,
        outputs=tuple(outputs),
        embedded=tuple(embedded),
        reduced=tuple(reduced),
        width=width,
    )
