"""What an owning monitor keeps for the overview views: bounded samples of recent traffic and of the reference.

Fed on the event loop from the records the monitor examines (O(1) per record); read as snapshots by the
publishers. Nothing here touches Redis except reading the uploaded reference.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from monitors.feed import MonitoringRecord
from monitors.fleet.references import StoredReference


@dataclass(frozen=True, slots=True)
class Seen:
    """One examined production record with an embedding."""

    embedding: npt.NDArray[np.float32]
    time: float
    predicted: int
    cohort: dict[str, str]
    request_id: str


@dataclass(frozen=True, slots=True)
class ReferenceSample:
    """The reference the views compare against: an uploaded one, or the first traffic this owner saw."""

    id: str
    embeddings: npt.NDArray[np.float32] | None
    predicted: npt.NDArray[np.int64] | None
    """``None`` when the reference came without model outputs."""
    confidence: npt.NDArray[np.float64] | None
    margin: npt.NDArray[np.float64] | None

    @classmethod
    def of(cls, stored: StoredReference, *, max_rows: int, seed: int) -> ReferenceSample:
        reference = stored.reference
        rows = np.arange(len(reference))
        if len(rows) > max_rows:
            rows = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_rows, replace=False))
        outputs = reference.has_outputs
        return cls(
            id=stored.id,
            embeddings=None if reference.embeddings is None else reference.embeddings[rows],
            predicted=reference.predicted[rows] if outputs else None,
            confidence=reference.confidence[rows] if outputs else None,
            margin=None if stored.margin is None or not outputs else stored.margin[rows],
        )


@dataclass(slots=True)
class _Traffic:
    """The first records this owner saw, standing in for a reference when none was uploaded."""

    embeddings: list[npt.NDArray[np.float32]] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)


class ViewSamples:
    def __init__(self, *, max_production: int, max_reference: int, distribution_events: int, traffic_rows: int) -> None:
        self.production: deque[Seen] = deque(maxlen=max_production)
        self.scores: deque[tuple[float, float]] = deque(maxlen=distribution_events)
        """(confidence, margin) of the latest examined records, with or without an embedding."""
        self.labels: OrderedDict[str, int] = OrderedDict()
        self._max_labels = 4 * max_production
        self._traffic_rows = max(2, min(traffic_rows, max_reference))
        self._traffic = _Traffic()
        self._traffic_sample: ReferenceSample | None = None
        self.observed = 0
        """Records observed so far (changes whenever the views would)."""
        self.labelled = 0

    def observe(self, record: MonitoringRecord) -> None:
        self.observed += 1
        self.scores.append((record.confidence, record.margin))
        embedding = record.embedding
        if embedding is None:
            return
        self.production.append(Seen(embedding, record.time_s, record.predicted, record.cohort, record.request_id))
        traffic = self._traffic
        if len(traffic.embeddings) < self._traffic_rows:
            traffic.embeddings.append(embedding)
            traffic.predicted.append(record.predicted)
            traffic.confidence.append(record.confidence)
            traffic.margin.append(record.margin)

    def label(self, request_id: str, label: int) -> None:
        """A delayed label, joined to its production point by request id."""
        self.labelled += 1
        self.labels[request_id] = label
        self.labels.move_to_end(request_id)
        while len(self.labels) > self._max_labels:
            self.labels.popitem(last=False)

    def no_reference(self) -> tuple[str, bool]:
        """Why there is no traffic reference yet, and whether more traffic alone can change that."""
        seen = self._traffic.embeddings
        if self.observed and not seen:
            return f"none of the {self.observed} events examined carries an embedding; no reference was uploaded", False
        if len({e.shape for e in seen}) > 1:
            return "the first events' embeddings differ in length, and no reference was uploaded", False
        return (
            f"no reference was uploaded; {len(seen)} of the {self._traffic_rows} event embeddings that stand in "
            "for one have been examined",
            True,
        )

    def traffic_reference(self, owner: str) -> ReferenceSample | None:
        """The first traffic as a reference, once there is as much as the drift warm-up takes (then frozen)."""
        traffic = self._traffic
        if self._traffic_sample is not None:
            return self._traffic_sample
        if len(traffic.embeddings) < self._traffic_rows or len({e.shape for e in traffic.embeddings}) != 1:
            return None
        self._traffic_sample = ReferenceSample(
            id=f"traffic-{owner}-{uuid.uuid4().hex}",  # unique: the UMAP cache is shared by every model
            embeddings=np.stack(traffic.embeddings).astype(np.float32),
            predicted=np.asarray(traffic.predicted, dtype=np.int64),
            confidence=np.asarray(traffic.confidence, dtype=np.float64),
            margin=np.asarray(traffic.margin, dtype=np.float64),
        )
        return self._traffic_sample

    def snapshot(self) -> list[Seen]:
        return list(self.production)

    def score_arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return score_arrays(list(self.scores))


def score_arrays(pairs: list[tuple[float, float]]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(confidence, margin) columns of a copy of ``ViewSamples.scores`` (convert it off the event loop)."""
    array: Any = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return array[:, 0], array[:, 1]
