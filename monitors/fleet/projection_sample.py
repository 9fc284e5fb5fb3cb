"""What an owning monitor keeps for the overview views: bounded samples of recent traffic and of the reference.

Fed on the event loop from the records the monitor examines (O(1) per record); read as snapshots by the
publishers. Nothing here touches Redis; :class:`StoredTraffic` is the format of the traffic reference the owner
shares (``common.keys.projection_traffic_reference``) so that the next owner adopts it after a failover.
"""

from __future__ import annotations

import base64
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

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
    version: str
    seq: int
    """This owner's count of observed records when this one came (orders it against a traffic reference)."""


@dataclass(frozen=True, slots=True)
class ReferenceSample:
    """The reference the views compare against: an uploaded one, or the first traffic this owner saw."""

    id: str
    embeddings: npt.NDArray[np.float32] | None
    predicted: npt.NDArray[np.int64] | None
    """``None`` when the reference came without model outputs."""
    confidence: npt.NDArray[np.float64] | None
    margin: npt.NDArray[np.float64] | None
    from_traffic: bool = False
    taken_until: int = 0
    """The :attr:`Seen.seq` of the last record this owner took into it: production is drawn from later ones."""
    total_rows: int | None = None
    """Rows of the reference these are a seeded sample of (``None``: all of it is here)."""

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
            total_rows=len(reference) if len(rows) < len(reference) else None,
        )

    @property
    def dims(self) -> int | None:
        return None if self.embeddings is None else int(self.embeddings.shape[1])


TRAFFIC_FORMAT = 1


class StoredTraffic(BaseModel):
    """A traffic reference as shared in Redis: versioned JSON, each column base64 of its little-endian bytes."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = TRAFFIC_FORMAT
    id: str
    rows: int
    dims: int
    embeddings: str
    """``<f4``, row-major."""
    predicted: str
    """``<i8``."""
    confidence: str
    """``<f8``."""
    margin: str
    """``<f8``."""

    @classmethod
    def of(cls, sample: ReferenceSample) -> StoredTraffic:
        if sample.embeddings is None or sample.predicted is None or sample.confidence is None or sample.margin is None:
            raise ValueError("a traffic reference has embeddings and model outputs")
        rows, dims = sample.embeddings.shape
        return cls(
            id=sample.id,
            rows=rows,
            dims=dims,
            embeddings=_b64(sample.embeddings, "<f4"),
            predicted=_b64(sample.predicted, "<i8"),
            confidence=_b64(sample.confidence, "<f8"),
            margin=_b64(sample.margin, "<f8"),
        )

    def sample(self) -> ReferenceSample:
        """The reference as a new owner uses it (none of its own records are in it); ``ValueError`` if the
        columns do not match the declared shape."""
        if self.v != TRAFFIC_FORMAT:
            raise ValueError(f"traffic reference format {self.v} (this monitor reads {TRAFFIC_FORMAT})")
        return ReferenceSample(
            id=self.id,
            embeddings=_column(self.embeddings, "<f4", self.rows * self.dims).reshape(self.rows, self.dims),
            predicted=_column(self.predicted, "<i8", self.rows).astype(np.int64),
            confidence=_column(self.confidence, "<f8", self.rows).astype(np.float64),
            margin=_column(self.margin, "<f8", self.rows).astype(np.float64),
            from_traffic=True,
        )


def _b64(array: npt.NDArray[Any], dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()


def _column(text: str, dtype: str, count: int) -> npt.NDArray[Any]:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != count * np.dtype(dtype).itemsize:
        raise ValueError(f"a column of {len(raw)} bytes for {count} values of {dtype}")
    return np.frombuffer(raw, dtype=dtype).astype(np.dtype(dtype).newbyteorder("="))


@dataclass(slots=True)
class _Traffic:
    """A run of records of one embedding width, standing in for a reference when none was uploaded."""

    embeddings: list[npt.NDArray[np.float32]] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    margin: list[float] = field(default_factory=list)
    last_seq: int = 0

    def fits(self, embedding: npt.NDArray[np.float32]) -> bool:
        return not self.embeddings or self.embeddings[0].shape == embedding.shape


class ViewSamples:
    def __init__(self, *, max_production: int, max_reference: int, distribution_events: int, traffic_rows: int) -> None:
        self.production: deque[Seen] = deque(maxlen=max_production)
        self.scores: deque[tuple[float, float]] = deque(maxlen=distribution_events)
        """(confidence, margin) of the latest examined records, with or without an embedding."""
        self.labels: OrderedDict[str, int] = OrderedDict()
        self._max_labels = 4 * max_production
        self.traffic_rows = max(2, min(traffic_rows, max_reference))
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
        seen = Seen(
            embedding, record.time_s, record.predicted, record.cohort, record.request_id, record.version, self.observed
        )
        self.production.append(seen)
        self._collect(record, embedding)

    def _collect(self, record: MonitoringRecord, embedding: npt.NDArray[np.float32]) -> None:
        """Gather ``traffic_rows`` consecutive embeddings of the latest width: the first reference, or (once one is
        taken) a run of another width that replaces it, the model having changed."""
        frozen = self._traffic_sample
        if frozen is not None and frozen.embeddings is not None and frozen.embeddings.shape[1:] == embedding.shape:
            self._traffic = _Traffic()  # the reference's width again: a run of another width is over
            return
        traffic = self._traffic
        if len(traffic.embeddings) >= self.traffic_rows:
            return  # complete: taken on the next refresh
        if not traffic.fits(embedding):
            traffic = self._traffic = _Traffic()  # the width changed: the latest width is what counts
        traffic.embeddings.append(embedding)
        traffic.predicted.append(record.predicted)
        traffic.confidence.append(record.confidence)
        traffic.margin.append(record.margin)
        traffic.last_seq = self.observed

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
        return (
            f"no reference was uploaded; {len(seen)} of the {self.traffic_rows} event embeddings that stand in "
            "for one have been examined",
            True,
        )

    def traffic_reference(self, owner: str) -> ReferenceSample | None:
        """The first traffic as a reference once there is as much as the drift warm-up takes; then frozen, until
        as many consecutive records of another width replace it."""
        traffic = self._traffic
        if len(traffic.embeddings) < self.traffic_rows:
            return self._traffic_sample
        self._traffic_sample = ReferenceSample(
            id=f"traffic-{owner}-{uuid.uuid4().hex}",  # unique: the UMAP cache is shared by every model
            embeddings=np.stack(traffic.embeddings).astype(np.float32),
            predicted=np.asarray(traffic.predicted, dtype=np.int64),
            confidence=np.asarray(traffic.confidence, dtype=np.float64),
            margin=np.asarray(traffic.margin, dtype=np.float64),
            from_traffic=True,
            taken_until=traffic.last_seq,
        )
        self._traffic = _Traffic()
        return self._traffic_sample

    def adopt(self, sample: ReferenceSample) -> None:
        """A traffic reference a previous owner took (none of this owner's records is in it)."""
        self._traffic_sample = sample
        self._traffic = _Traffic()

    def snapshot(self) -> list[Seen]:
        return list(self.production)

    def score_arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return score_arrays(list(self.scores))


def score_arrays(pairs: list[tuple[float, float]]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(confidence, margin) columns of a copy of ``ViewSamples.scores`` (convert it off the event loop)."""
    array: Any = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return array[:, 0], array[:, 1]
