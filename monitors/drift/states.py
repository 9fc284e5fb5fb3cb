"""The export format of calibrated drift monitors: pydantic models of plain numbers and encoded arrays.

``MonitorState.model_dump_json()`` is the whole state of a model's drift
monitor; ``MonitorState.model_validate_json`` reads it back and
``DriftMonitor.from_state`` rebuilds the monitor without recalibrating. Arrays
are :class:`EncodedArray` (base64 of little-endian bytes, with dtype and shape);
nothing is pickled. ``v`` is the format version.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.codec import EncodedArray
from monitors.drift.config import DriftConfig

OnlineMethod = Literal["mmd", "lsdd"]


class PcaState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mean: EncodedArray
    components: EncodedArray
    """Shape ``(k, d)``: the top ``k`` principal axes, one per row."""


class OnlineState(BaseModel):
    """A calibrated online detector: reference, bandwidth, thresholds and the reference split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["online"] = "online"
    method: OnlineMethod
    ert: int
    window_size: int
    n_bootstraps: int
    reference: EncodedArray
    """The (reduced) reference rows, float32 ``(n, d)``."""
    sigma: float
    """Gaussian kernel bandwidth."""
    thresholds: tuple[float, ...]
    """Threshold of the test statistic at steps ``0 .. window_size - 1``; the last holds from then on."""
    ref_inds: EncodedArray
    init_test_inds: EncodedArray
    held_out_inds: EncodedArray | None = None
    """MMD: the reference rows the thresholds were calibrated on, in neither ``ref_inds`` nor ``init_test_inds``."""
    kernel_perm: EncodedArray | None = None
    """LSDD: permutation of the reference whose first ``2 x window_size`` rows are the kernel centres."""
    h_lam_inv: EncodedArray | None = None
    """LSDD: regularised inverse of the kernel-centre matrix chosen during calibration."""


class WindowTestsState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["window_tests"] = "window_tests"
    reference: EncodedArray
    window_events: int
    p_value: float
    n_permutations: int


class OutputDriftState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["output"] = "output"
    class_counts: EncodedArray
    """Reference predictions per class index, int64 ``(k,)``."""
    confidence: EncodedArray
    """Reference top-1 probabilities, float64 ``(n,)``."""
    window_events: int
    p_value: float


class EmbeddingDistanceState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["embedding_distance"] = "embedding_distance"
    centroid: EncodedArray
    tail_distance: float
    """About the 99th percentile of the reference's cosine distances to the centroid: their
    ``embedding.tail_rank(reference_rows)``-th largest."""
    window_events: int
    p_value: float
    reference_rows: int | None = None
    """Rows of the reference the tail was taken from, which the window test needs (an exact two-sample test);
    ``None`` in states stored before it was kept (interpolated percentile, one-sample test)."""


DetectorState = Annotated[
    OnlineState | WindowTestsState | OutputDriftState | EmbeddingDistanceState, Field(discriminator="kind")
]


class MonitorState(BaseModel):
    """A calibrated drift monitor of one model (format version 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    model: str
    config: DriftConfig
    pca: PcaState | None
    """PCA applied to embeddings before the ``online`` and ``window_tests`` detectors."""
    detectors: tuple[DetectorState, ...]
