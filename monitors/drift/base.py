"""Our drift-detector protocol, its input and result types, and plain-array state encoding.

Third-party detectors (alibi-detect) sit behind adapters implementing
:class:`DriftDetector`, so another backend can replace them without touching
the monitor, and nothing outside ``monitors.drift`` sees their ``{"data": ...}`` dicts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from monitors.drift.states import DetectorState

P_VALUE_FLOOR = 1e-300
"""p-values are clipped to this before ``-log10`` so scores stay finite."""


def rejects(p: float, alpha: float) -> bool:
    """The decision of every test with a p-value: drift iff ``p <= alpha``. A permutation or exact p-value takes
    discrete values (``k / (1 + B)``, ``alpha`` among them): its size is at most ``alpha`` only with the equality,
    and one rule for every test keeps the alarm counts of all of them comparable."""
    return p <= alpha


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
    """Shape ``(m, d)``: the embeddings of the events that came with one, of one width; ``None`` when none did."""
    time_s: float
    """Time of the newest event, epoch seconds."""
    embedded: NDArray[np.intp] | None = None
    """Which events ``embeddings`` belong to, when not all of them: ``None`` when each event has its row."""
    sent_without: int = 0
    """Events that came without an embedding (the others without a row came with one of another width)."""

    def __len__(self) -> int:
        return int(self.predicted.size)

    @property
    def unembedded(self) -> int:
        """Events without a row in ``embeddings``: sent without one, or with one of another width."""
        return len(self) - (0 if self.embeddings is None else len(self.embeddings))

    def embedded_part(self) -> DriftBatch | None:
        """The events that have a row in ``embeddings``, each with its row; ``None`` when none has."""
        if self.embeddings is None or self.embedded is None:
            return None if self.embeddings is None else self
        return DriftBatch(
            predicted=self.predicted[self.embedded],
            confidence=self.confidence[self.embedded],
            embeddings=self.embeddings,
            time_s=self.time_s,
        )

    def rows(self, index: NDArray[np.intp]) -> DriftBatch:
        """The events at ``index`` of a batch whose every event has its row (``embedded`` is ``None``)."""
        return DriftBatch(
            predicted=self.predicted[index],
            confidence=self.confidence[index],
            embeddings=None if self.embeddings is None else self.embeddings[index],
            time_s=self.time_s,
        )

    @classmethod
    def from_events(cls, events: Sequence[DriftEvent], *, width: int | None = None) -> DriftBatch:
        """Every event's outputs; the embeddings of those that came with one of ``width`` (given: the
        reference's), else of the batch's most common width. An event without one, or the odd one of another
        width, cannot blind the embedding detectors to the rest of its batch."""
        if not events:
            raise ValueError("a drift batch needs at least one event")
        vectors = [e.embedding for e in events]
        shapes = Counter(np.shape(v) for v in vectors if v is not None)
        embeddings, embedded = None, None
        shape = (width,) if width is not None else shapes.most_common(1)[0][0] if shapes else None
        rows = [i for i, v in enumerate(vectors) if v is not None and np.shape(v) == shape]
        if rows:
            embeddings = np.asarray([vectors[i] for i in rows], dtype=np.float32)
            embedded = None if len(rows) == len(events) else np.asarray(rows, dtype=np.intp)
        return cls(
            predicted=np.array([e.predicted for e in events], dtype=np.int64),
            confidence=np.array([e.confidence for e in events], dtype=np.float64),
            embeddings=embeddings,
            time_s=max(e.time_s for e in events),
            embedded=embedded,
            sent_without=sum(v is None for v in vectors),
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


@dataclass(frozen=True, slots=True)
class OnlineResult(DriftResult):
    """An online detector's verdict on a batch: its state after the last event (the fields of :class:`DriftResult`),
    with how many events it scored and how many of them were above their threshold, which :class:`DriftMetrics` counts.
    Any other result is one test (a window)."""

    events: int = 0
    alarms: int = 0
    ert: int = 0
    """The expected run time the detector is calibrated to, events."""


class DriftDetector(Protocol):
    """One detector kind over a model's event stream."""

    def update(self, batch: DriftBatch) -> list[DriftResult]:
        """Take the next events; return a result per test that has a new verdict (maybe none)."""
        ...

    def export_state(self) -> DetectorState:
        """Everything needed to rebuild the detector without recalibrating, as a JSON-ready model."""
        ...
