"""Building a model's drift detectors: from a reference (calibration) or from a stored state (adoption).

Reference rows: the output tests and ``embedding_distance`` take every row. When PCA applies, it takes
``pca_share`` of the rows: that share of the distinct rows, which fit it and nothing else, and as large a share of
the copies of an embedding, which nothing uses (:func:`_unfitted`). Of the rows left, repeated embeddings as often as
they came (traffic repeats them as often), ``max_reference`` are the reference of the online MMD detector and of the
window tests, and the others (at most ``SPARE_PER_REFERENCE_ROW`` per reference row) are spare rows that only the
online MMD detector's calibration sees; the online LSDD detector takes ``max_reference`` rows, one per distinct
embedding (:func:`_reduced_rows`). alibi-detect is imported only for the online detector and the window tests.
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
    off: str | None = None
    """Why detectors the config asks for are not among these (the reference could not calibrate them); ``None``
    when none is missing."""

    @property
    def online_rows(self) -> int | None:
        """Reference rows the online detector compares each event's window against (after PCA's share, the
        ``max_reference`` subsample and, for MMD, the rows held out to calibrate it; repeated embeddings as often as
        they came, for LSDD one per distinct embedding); ``None`` without one."""
        if self.config.online_detector == "none" or not self.reduced:
            return None
        from monitors.drift.online import OnlineDriftDetector  # loaded already: these detectors were built with it

        online = next((d for d in self.reduced if isinstance(d, OnlineDriftDetector)), None)
        return None if online is None else int(online.export_state().ref_inds.shape[0])  # its state as built


def build(
    model: str, reference: Reference, config: DriftConfig, metrics: DriftMetrics, generator: torch.Generator
) -> Detectors:
    """The detectors of ``reference``, calibrated with ``config`` resolved on it; ``generator`` seeds the online
    detector's calibration draws.

    The output tests and ``embedding_distance`` take every row, the online MMD detector and the window tests every
    row PCA leaves, repeated embeddings included, and PCA and the online LSDD detector one row per distinct embedding
    (:func:`_reduced_rows`). A detector the reference cannot calibrate is left out and
    :attr:`Detectors.off` says why, so that it cannot take the others with it: embeddings with too few distinct
    rows (:func:`_too_few_distinct`) leave the output tests and ``embedding_distance``."""
    rng = np.random.default_rng(config.seed)
    outputs: list[DriftDetector] = []
    if reference.has_outputs:
        outputs.append(
            OutputDrift.fit(
                predicted=reference.predicted,
                confidence=reference.confidence,
                window_events=config.window_events,
                p_value=config.p_value,
            )
        )
    if reference.embeddings is None:
        return Detectors(config=config, pca=None, outputs=tuple(outputs), embedded=(), reduced=(), width=None)
    width = int(reference.embeddings.shape[1])
    off: list[str] = []
    embedded: tuple[DriftDetector, ...] = ()
    try:
        embedded = (
            EmbeddingDistance.fit(
                reference.embeddings,
                window_events=config.window_events,
                p_value=config.p_value,
                histogram=metrics.distance_histogram(model),
            ),
        )
    except ValueError as error:
        off.append(f"embedding_distance is off: {error}")
    distinct = reference.distinct_rows()
    few = _too_few_distinct(len(reference), len(distinct), width, config)
    if few is not None:
        off.append(few)
        return Detectors(
            config=config,
            pca=None,
            outputs=tuple(outputs),
            embedded=embedded,
            reduced=(),
            width=width,
            off="; ".join(off),
        )
    rows = _reduced_rows(reference, distinct, config, rng)
    return Detectors(
        config=config,
        pca=rows.pca,
        outputs=tuple(outputs),
        embedded=embedded,
        reduced=tuple(_alibi_detectors(rows, config, generator)),
        width=width,
        off="; ".join(off) or None,
    )


@dataclass(frozen=True, slots=True)
class _Rows:
    """The (reduced) reference rows of the online detector and the window tests."""

    pca: Pca | None
    online: NDArray[np.float32]
    """MMD: the same rows as ``window``; LSDD: one row per distinct embedding."""
    spare: NDArray[np.float32] | None
    """More rows, copies included, that only calibrate the online MMD detector."""
    window: NDArray[np.float32]
    """Every row, repeated embeddings as often as they came."""


def _reduced_rows(
    reference: Reference, distinct: NDArray[np.intp], config: DriftConfig, rng: np.random.Generator
) -> _Rows:
    """PCA takes ``pca_share`` of the rows (:func:`_unfitted`); of the rest, repeated embeddings as often as they
    came, the online MMD detector and the window tests take ``max_reference`` (:meth:`Reference.subsample`) and the
    online MMD detector's calibration up to ``SPARE_PER_REFERENCE_ROW`` times as many of the rows left as spare rows;
    LSDD takes ``max_reference`` of the distinct rows PCA did not fit on. On a reference without repeated embeddings
    every draw is as it was when every detector took distinct rows: same rows, same thresholds.

    Traffic repeats an input (a blank request, a cached query) as often as the reference collected from it did, so
    a detector that held it once read its copies as drift: windows of traffic with 30% copies of one input hold more
    identical pairs than the online MMD detector's calibration windows, drawn from distinct rows, ever did. LSDD
    keeps to distinct rows: its kernel centres are reference rows (``online._checked_reference``)."""
    pca, unfitted, fitted = None, np.arange(len(reference), dtype=np.intp), np.empty(0, dtype=np.intp)
    if config.pca_components is not None and int(_embeddings(reference).shape[1]) > config.pca_components:
        ref = reference.rows(distinct)
        # Axes fitted on the rows the detectors compare against overstate the reference's spread along
        # them (sample-eigenvalue bias) and read as drift on clean data, so PCA gets disjoint rows.
        pca_part, _ = ref.split_index(config.pca_rows(len(ref)), rng)
        pca = Pca.fit(_embeddings(ref.rows(pca_part)), n_components=config.pca_components)
        fitted = distinct[pca_part]
        unfitted = _unfitted(len(reference), distinct, fitted, rng)
    kept, left = reference.rows(unfitted).subsample(config.max_reference, rng)
    window = _embeddings(kept)
    spare = None if left is None else _embeddings(left.subsample(SPARE_PER_REFERENCE_ROW * len(kept), rng)[0])
    online = window
    if config.online_detector == "lsdd" and len(reference) > len(distinct):  # repeated embeddings: LSDD takes one
        online = _embeddings(reference.rows(np.setdiff1d(distinct, fitted)).subsample(config.max_reference, rng)[0])
    if pca is None:
        return _Rows(pca=None, online=online, spare=spare, window=window)
    reduced = pca.transform(window)
    return _Rows(
        pca=pca,
        online=reduced if online is window else pca.transform(online),
        spare=None if spare is None else pca.transform(spare),
        window=reduced,
    )


def _unfitted(
    rows: int, distinct: NDArray[np.intp], fitted: NDArray[np.intp], rng: np.random.Generator
) -> NDArray[np.intp]:
    """The rows PCA leaves, in order: the distinct rows it did not fit on (``distinct`` less ``fitted``) and, of the
    other ``rows`` (later copies of an embedding), as large a share, at random; PCA takes the rest of the copies
    and drops them (a copy adds nothing to its fit).

    So a repeated input is as frequent among the rows left as in the reference (in expectation; the first copy of
    each embedding is the distinct row). Left every copy PCA did not fit on, the detectors held it more often: PCA
    fitting on half the distinct rows, a reference with 30% copies of one input left them 46% copies, more identical
    pairs than traffic brings (the window tests alarmed on every clean window, the online detector's runs at ERT 100
    on clean digits traffic were 34-43 events). Copies of an embedding PCA fitted on may be left: those are rows PCA
    did not see, and traffic brings the same point as often. Without copies nothing is drawn: the same draws as
    before copies were kept."""
    left = np.setdiff1d(distinct, fitted)
    copies = np.setdiff1d(np.arange(rows, dtype=np.intp), distinct)
    if not copies.size:
        return left
    share = len(left) / len(distinct)
    chosen = rng.choice(copies.size, size=round(share * copies.size), replace=False)
    return np.sort(np.concatenate([left, copies[chosen]]))


def _too_few_distinct(rows: int, distinct: int, width: int, config: DriftConfig) -> str | None:
    """Why the online detector and the window tests are off: a reference with fewer distinct embeddings than
    ``config`` needs at their width (:meth:`DriftConfig.least_rows`), naming the fix; ``None`` when it has enough.

    Sidecars refuse such an upload at once; a warm-up is checked here, once collected: its width, and so whether
    PCA takes its share, is unknown when the settings are read. Without this it failed in the online detector,
    which counts only the rows PCA left it ("reference has 200 rows" of a 400-event warm-up), and a warm-up of
    one repeated embedding failed every calibration, output tests included, and warmed up again for good."""
    if not config.window_tests and config.online_detector == "none":
        return None
    least = config.least_rows(width)
    if distinct >= least:
        return None
    pca = least > config.least_reference
    why = (
        f"PCA to pca_components={config.pca_components} fits on pca_share={config.pca_share:g} of them, and the "
        f"online detector needs {config.least_reference} of the rest"
        if pca
        else "the online detector needs them"
        if config.online_detector != "none"
        else "the window tests need them"
    )
    return (
        f"the online detector and window tests are off: the reference's {rows} events have only {distinct} distinct "
        f"{width}-d embeddings, fewer than the {least} these drift settings need ({why} for "
        f"window_size={config.window_size}); the output tests and embedding_distance run. For a warm-up raise "
        f"VAI_DRIFT__REFERENCE_EVENTS to {least} or more (repeated embeddings count once), for an upload send {least} "
        "or more distinct rows; or shrink VAI_DRIFT__WINDOW_SIZE"
        + (f", lower VAI_DRIFT__PCA_SHARE or set VAI_DRIFT__PCA_COMPONENTS to {width} or more (no PCA)" if pca else "")
    )


def _embeddings(reference: Reference) -> NDArray[np.float32]:
    if reference.embeddings is None:
        raise ValueError("reference has no embeddings")
    return reference.embeddings


def _alibi_detectors(rows: _Rows, config: DriftConfig, generator: torch.Generator) -> list[DriftDetector]:
    # Imported here so a deployment with online_detector="none" and window_tests=False never loads alibi-detect.
    from monitors.drift.online import OnlineDriftDetector
    from monitors.drift.window_tests import WindowTests

    detectors: list[DriftDetector] = []
    if config.online_detector != "none":
        detectors.append(
            OnlineDriftDetector.calibrate(
                rows.online,
                method=config.online_detector,
                ert=config.ert,
                window_size=config.window_size,
                n_bootstraps=config.bootstraps,
                steady_steps=config.steady_steps,
                spare=rows.spare,
                generator=generator,
                device=config.device,
            )
        )
    if config.window_tests:
        detectors.append(
            WindowTests(
                rows.window,
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
    width = embedded[0].width if embedded else pca.input_dim if pca is not None else _reduced_width(state)
    config = state.config
    wanted = config.online_detector != "none" or config.window_tests
    return Detectors(
        config=config,
        pca=pca,
        outputs=tuple(outputs),
        embedded=tuple(embedded),
        reduced=tuple(reduced),
        width=width,
        off=_OFF_AS_STORED if width is not None and wanted and not reduced else None,
    )


_OFF_AS_STORED = (
    "the online detector and window tests are off: they were left out when this model was calibrated, on a reference "
    "with too few distinct embeddings (the stored calibration does not keep its counts); upload a more varied "
    "reference to recalibrate"
)


def _reduced_width(state: MonitorState) -> int | None:
    """The embedding width of a state without PCA and without ``embedding_distance``: its reduced detectors'."""
    for detector_state in state.detectors:
        if isinstance(detector_state, OnlineState | WindowTestsState):
            return int(detector_state.reference.shape[1])
    return None
