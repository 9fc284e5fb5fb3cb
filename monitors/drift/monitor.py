"""A model's drift monitor: reference, detectors, phases and latest verdicts.

Phases: ``warming_up`` (no reference was given: the first
``config.reference_events`` events become it) -> ``calibrating`` (waiting for
:meth:`DriftMonitor.calibrate`, which is slow and runs in a worker thread;
events meanwhile are skipped and counted) -> ``monitoring``. A monitor rebuilt
with :meth:`DriftMonitor.from_state` starts in ``monitoring``. A warm-up's rows are read as they grow
(:meth:`DriftMonitor.warmup_rows`), so that an owner can store them, and resumed by a fresh monitor
(:meth:`DriftMonitor.resume_warmup`), its successor's.

Detectors built (``monitors.drift.detectors``, which also says which reference rows each gets;
alibi-detect is imported only for the first two):

* embeddings, after PCA: the online detector (``mmd_online``/``lsdd_online``)
  and the windowed MMD/KS tests (``window_mmd``, ``window_ks``);
* raw embeddings: ``embedding_distance``;
* predictions: ``output_class_chi2``, ``output_confidence_ks``.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import torch

from monitors.drift.base import DriftBatch, DriftResult
from monitors.drift.config import DriftConfig
from monitors.drift.detectors import Detectors, build, restore
from monitors.drift.metrics import DriftMetrics, Tally
from monitors.drift.reference import Reference
from monitors.drift.states import MonitorState
from monitors.drift.tumbling import tail
from monitors.drift.warmup import Warmup, WarmupMark, WarmupRows, rows_past

logger = logging.getLogger(__name__)


class Phase(StrEnum):
    WARMING_UP = "warming_up"
    CALIBRATING = "calibrating"
    MONITORING = "monitoring"


class NotCalibratedError(RuntimeError):
    """The monitor has no calibrated detectors yet."""


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
        self._warmup = Warmup(model, config.reference_events)
        self._detectors: Detectors | None = None
        self._adopted_rows: int | None = None
        """The reference's size of a monitor rebuilt from a stored state (:meth:`from_state`)."""
        self._calibrating = False
        self._error: str | None = None
        self._results: dict[str, DriftResult] = {}
        self._examined = 0
        """Events :meth:`update` ran through the detectors or collected into the warm-up (not those it skipped)."""

    @classmethod
    def from_state(
        cls, state: MonitorState, *, metrics: DriftMetrics, reference_rows: int | None = None
    ) -> DriftMonitor:
        """A monitor in ``monitoring`` from an exported state (its own config included), without calibration.
        ``reference_rows``: the size of the reference it was calibrated on, when the caller knows it (the state
        does not keep it)."""
        monitor = cls(model=state.model, config=state.config, metrics=metrics)
        monitor._detectors = restore(state, metrics)
        monitor._adopted_rows = reference_rows
        return monitor

    @property
    def model(self) -> str:
        return self._model

    @property
    def config(self) -> DriftConfig:
        return self._config

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
        """Why the last calibration failed (calling :meth:`calibrate` again retries); once ``monitoring``, why
        detectors its config asks for were left out (``Detectors.off``, e.g. too few distinct embeddings for the
        online detector: the others run)."""
        with self._lock:
            return self._error if self._detectors is None else self._detectors.off

    @property
    def embedding_width(self) -> int | None:
        """Width of the embeddings the detectors compare, or in warm-up the reference's so far (``None`` while
        none has come, or for a model without embeddings)."""
        with self._lock:
            return self._warmup.width if self._detectors is None else self._detectors.width

    @property
    def warmup_progress(self) -> tuple[int, int] | None:
        """While warming up, the records collected for the reference so far and how many it takes
        (``reference_events``); ``None`` in the other phases."""
        with self._lock:
            if self._phase_locked() is not Phase.WARMING_UP:
                return None
            return self._warmup.count, self._config.reference_events

    @property
    def reference_rows(self) -> int | None:
        """Rows of the reference as handed over (uploaded, or collected in the warm-up), every row, copies included;
        ``None`` while warming up, and for a monitor rebuilt from a stored state whose size was not given."""
        with self._lock:
            return self._adopted_rows if self._reference is None else len(self._reference)

    @property
    def reference(self) -> Reference | None:
        """The reference as handed over (uploaded, or collected in the warm-up); ``None`` while warming up, and for
        a monitor rebuilt from a stored state."""
        with self._lock:
            return self._reference

    @property
    def online_reference_rows(self) -> int | None:
        """Reference rows the online detector compares against (``Detectors.online_rows``); ``None`` before
        calibration and without an online detector."""
        with self._lock:
            return None if self._detectors is None else self._detectors.online_rows

    def resume_warmup(self, rows: DriftBatch) -> WarmupMark:
        """Take ``rows`` (another owner's warm-up: :meth:`Warmup.resume`) as the warm-up collected so far; returns
        the mark of what they are."""
        with self._lock:
            if self._phase_locked() is not Phase.WARMING_UP:
                raise RuntimeError(f"model {self._model}: a warm-up resumes only in a fresh monitor")
            self._completed(self._warmup.resume(rows, self._metrics.skipped(self._model)))
            return WarmupMark(self._warmup.epoch, len(rows))

    def warmup_rows(self, since: WarmupMark | None) -> WarmupRows | None:
        """The warm-up's rows past ``since`` (all of them when ``since`` is ``None`` or of an earlier warm-up),
        complete or still collecting; ``None`` when the monitor collects none (its reference was given, or it is
        calibrated)."""
        with self._lock:
            if self._detectors is not None or (self._reference is not None and not self._from_warmup):
                return None
            epoch, reference, chunks = self._warmup.epoch, self._reference, self._warmup.chunks()
        start = since.rows if since is not None and since.epoch == epoch else 0
        if reference is not None:  # complete, calibrating
            whole = DriftBatch(reference.predicted, reference.confidence, reference.embeddings, time_s=0.0)
            return WarmupRows(epoch, start, tail(whole, start) if start < len(whole) else None)
        return WarmupRows(epoch, start, rows_past(chunks, start))

    def results(self) -> tuple[DriftResult, ...]:
        """Latest verdict of each detector, by name."""
        with self._lock:
            return tuple(self._results[name] for name in sorted(self._results))

    @property
    def examined_total(self) -> int:
        """Events :meth:`update` ran through the detectors or collected into the warm-up: what was not skipped
        (``vai_drift_events_skipped_total``: calibrating, or left out of the warm-up). An event examined without its
        embedding counts here too (and in ``vai_drift_embeddings_skipped_total``)."""
        with self._lock:
            return self._examined

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        """Take the next events: collect them, skip them, or run the detectors, depending on the phase."""
        with self._lock:
            detectors = self._detectors
            if detectors is None:
                if self._reference is None:
                    skipped = Tally(self._metrics.skipped(self._model))
                    self._completed(self._warmup.take(batch, skipped))
                    # A warm-up let go of rows collected before (another width came) counts them as skipped now.
                    self._examined += max(0, len(batch) - skipped.count)
                else:  # calibrating
                    self._metrics.skipped(self._model).inc(len(batch))
                return []
        done = _run(detectors, batch)  # outside the lock: readers of results() must not wait on detection
        results: list[DriftResult] = []
        with self._lock:
            self._examined += len(batch)
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

    def pass_over(self, events: int) -> None:
        """Count ``events`` as skipped: a batch the detectors failed on, which is not examined again."""
        self._metrics.skipped(self._model).inc(events)

    def calibrate(self) -> None:
        """Fit PCA and detectors on the reference (slow); then the monitor is ``monitoring``."""
        with self._lock:
            if self._reference is None or self._detectors is not None or self._calibrating:
                raise RuntimeError(f"model {self._model}: nothing to calibrate in phase {self._phase_locked().value}")
            self._calibrating, self._error, reference = True, None, self._reference
        try:
            # Resolved on the rows as handed over (uploaded or collected), copies included, before the PCA split: what
            # an owner adopting the stored state can count again (``DriftStates.start``).
            config = self._config.resolved(len(reference))
            # Seeded bootstrap: the same reference gives the same thresholds on every replica and rerun. The MMD
            # calibration draws from a generator of its own, so other models calibrating (or window tests
            # permuting) in other threads at the same time cannot change its draws; what draws from torch's
            # global generator (LSDD, inside alibi-detect) is seeded too, best effort.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                generator = torch.Generator().manual_seed(config.seed)
                detectors = build(self._model, reference, config, self._metrics, generator)
        except Exception as error:
            with self._lock:
                self._calibrating, self._error = False, f"{type(error).__name__}: {error}"
                if self._from_warmup:  # a reference it cannot calibrate at all: collect a fresh warm-up, not stick
                    self._reference, self._from_warmup = None, False
                    self._warmup.restart()
            raise
        with self._lock:
            self._calibrating, self._detectors = False, detectors
        if detectors.off is not None:
            logger.warning("drift calibration of model %s left detectors out: %s", self._model, detectors.off)

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

    def _completed(self, reference: Reference | None) -> None:
        """Under the lock: the warm-up's reference, once it is complete, is the one to calibrate."""
        if reference is not None:
            self._reference, self._from_warmup, self._error = reference, True, None


def _run(detectors: Detectors, batch: DriftBatch) -> _Pass:
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
