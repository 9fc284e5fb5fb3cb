"""Our drift-detector protocol, its input and result types, and plain-array state encoding.

Third-party detectors (alibi-detect) sit behind adapters implementing
:class:`DriftDetector`, so another backend can replace them without touching
the monitor, and nothing outside ``monitors.drift`` sees their ``{"data": ...}`` dicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from monitors.drift.states import DetectorState

P_VALUE_FLOOR = 1e-300
"""p-values are clipped to this before ``-log10`` so scores stay finite."""


def surprise(p_value: float) -> float:
    """``-log10(p)``: the score of p-value tests, so that larger always means more drift."""
    return max(0.0, -math.log10(max(p_value, P_VALUE_FLOOR)))


@dataclass(frozen=True, slots=True)
class DriftEvent:
    """What the request path hands to drift monitoring for one prediction."""

    predicted: int
    confidence: float
    embedding: NDArray[np.floating[Any]] | Sequence[float] | None
    """As the request decoded it; stacked into a float32 batch in the runner, off the request path."""
    time_s: float


@dataclass(frozen=True, slots=True)
class DriftBatch:
    """Consecutive events of one model, oldest first."""

    predicted: NDArray[np.int64]
    """Predicted class per event, shape ``(n,)``."""
    confidence: NDArray[np.float64]
    """Top-1 probability per event, shape ``(n,)``."""
    embeddings: NDArray[np.float32] | None
    """Shape ``(n, d)``; ``None`` when any event of the batch came without one."""
    time_s: float
    """Time of the newest event, epoch seconds."""

    def __len__(self) -> int:
        return int(self.predicted.size)

    @classmethod
    def from_events(cls, events: Sequence[DriftEvent]) -> DriftBatch:
        if not events:
            raise ValueError("a drift batch needs at least one event")
        vectors = [e.embedding for e in events]
        shapes = {np.shape(v) for v in vectors if v is not None}
        embeddings = None
        if len(shapes) == 1 and all(v is not None for v in vectors):
            embeddings = np.asarray(vectors, dtype=np.float32)
        return cls(
            predicted=np.array([e.predicted for e in events], dtype=np.int64),
            confidence=np.array([e.confidence for e in events], dtype=np.float64),
            embeddings=embeddings,
            time_s=max(e.time_s for e in events),
        )


@dataclass(frozen=True, slots=True)
class DriftResult:
    """The latest verdict of one detector. For every detector, ``drift`` is ``score > threshold``."""

    name: str
    score: float
    threshold: float
    drift: bool
    p_value: float | None = None
    """Set by the tests that have one."""
    since: float | None = None
    """Epoch seconds of the first result of the current run of drift verdicts (set by the monitor)."""


class DriftDetector(Protocol):
    """One detector kind over a model's event stream."""

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        """Take the next events; return a result per test that has a new verdict (maybe none)."""
        ...

    def export_state(self) -> DetectorState:
        """Everything needed to rebuild the detector without recalibrating, as a JSON-ready model."""
        ...
