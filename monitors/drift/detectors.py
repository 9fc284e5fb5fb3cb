"""Building a model's drift detectors: from a reference (calibration) or from a stored state (adoption).

Reference rows: when PCA applies, ``pca_share`` of them fit it and nothing else; of the rest,
``max_reference`` are the multivariate detectors' reference and the others (at most
``SPARE_PER_REFERENCE_ROW`` per reference row) are spare rows that only the online MMD detector's
calibration sees. alibi-detect is imported only for the online detector and the window tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from monitors.drift.base import DriftDetector
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

SPARE_PER_REFERENCE_ROW = 2
"""Reference rows beyond ``max_reference`` that calibrate the online detector, per detector reference row
(a random subsample above this): they bound the calibration's kernel matrix, not the cost per event."""


@dataclass(frozen=True, slots=True)
class Detectors:
    """A model's calibrated detectors, grouped by what they are fed."""

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

    @property
    def online_rows(self) -> int | None:
        """Reference rows the online detector compares each event's window against (after deduplication, PCA's
        share, the ``max_reference`` subsample and, for MMD, the rows held out to calibrate it); ``None`` without
        one."""
        if self.config.online_detector == "none" or not self.reduced:
            return None
        from monitors.drift.online import OnlineDriftDetector  # loaded already: these detectors were built with it

        online = next((d for d in self.reduced if isinstance(d, OnlineDriftDetector)), None)
        return None if online is None else int(online.export_state().ref_inds.shape[0])  # its state as built


def build(
    model: str, reference: Reference, config: DriftConfig, metrics: DriftMetrics, generator: torch.Generator
) -> Detectors:
    """The detectors of ``reference`` (deduplicated), calibrated with ``config`` resolved on it; ``generator`` seeds
    the online detector's calibration draws."""
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
        return Detectors(config=config, pca=None, outputs=tuple(outputs), embedded=(), reduced=(), width=None)
    _check_rows(len(ref), int(ref.embeddings.shape[1]), config)
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
    return Detectors(
        config=config,
        pca=pca,
        outputs=tuple(outputs),
        embedded=(distance,),
        reduced=tuple(_alibi_detectors(x, spare, config, generator)),
        width=int(ref.embeddings.shape[1]),
    )


def _check_rows(rows: int, width: int, config: DriftConfig) -> None:
    """Refuse a reference too small for ``config`` at its width (:meth:`DriftConfig.least_rows`), naming the fix.

    Sidecars refuse such an upload at once; a warm-up is checked here, once collected: its width, and so whether
    PCA takes its share, is unknown when the settings are read. Without this it failed in the online detector,
    which counts only the rows PCA left it ("reference has 200 rows" of a 400-event warm-up)."""
    least = config.least_rows(width)
    if config.online_detector == "none" or rows >= least:
        return
    pca = least > config.least_reference
    why = (
        f"PCA to pca_components={config.pca_components} fits on pca_share={config.pca_share:g} of them, and the "
        f"online detector needs {config.least_reference} of the rest"
        if pca
        else "the online detector needs them"
    )
    raise ValueError(
        f"the reference has {rows} distinct rows of {width}-d embeddings, fewer than the {least} these drift "
        f"settings need ({why} for window_size={config.window_size}): for a warm-up raise "
        f"VAI_DRIFT__REFERENCE_EVENTS to {least} or more (repeated embeddings count once), for an upload send more "
        "rows; or shrink VAI_DRIFT__WINDOW_SIZE"
        + (f", lower VAI_DRIFT__PCA_SHARE or set VAI_DRIFT__PCA_COMPONENTS to {width} or more (no PCA)" if pca else "")
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


def preload(config: DriftConfig) -> bool:
    """Import the alibi-detect detectors ``config`` builds (``False``: it builds none), before a process freezes
    its start-up objects: ~250,000 objects and ~3 s of imports that the first calibration or adoption would
    otherwise load later, an adoption on the event loop (where it would hold up the lease renewals)."""
    if config.online_detector == "none" and not config.window_tests:
        return False
    from monitors.drift.online import OnlineDriftDetector  # noqa: F401 - imported for its side effect
    from monitors.drift.window_tests import WindowTests  # noqa: F401 - imported for its side effect

    return True


def restore(state: MonitorState, metrics: DriftMetrics) -> Detectors:
    """The detectors of a stored state, as calibrated (no recalibration)."""
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
    return Detectors(
        config=state.config,
        pca=pca,
        outputs=tuple(outputs),
        embedded=tuple(embedded),
        reduced=tuple(reduced),
        width=width,
    )
