"""Cutting a stream of drift batches into fixed-size tumbling windows."""

from __future__ import annotations

import numpy as np

from monitors.drift.base import DriftBatch


def concat(batches: list[DriftBatch]) -> DriftBatch:
    """One batch of all events in order; embeddings only if every event of every batch had one, of one width."""
    vectors = [b.embeddings for b in batches]
    widths = {v.shape[1] for v in vectors if v is not None}
    embeddings = None
    if len(widths) == 1 and all(v is not None and b.embedded is None for v, b in zip(vectors, batches, strict=True)):
        embeddings = np.concatenate([v for v in vectors if v is not None])
    return DriftBatch(
        predicted=np.concatenate([b.predicted for b in batches]),
        confidence=np.concatenate([b.confidence for b in batches]),
        embeddings=embeddings,
        time_s=max(b.time_s for b in batches),
    )


def head(batch: DriftBatch, stop: int) -> DriftBatch:
    """The first ``stop`` events (embeddings only when every event has its row)."""
    return DriftBatch(
        predicted=batch.predicted[:stop],
        confidence=batch.confidence[:stop],
        embeddings=None if batch.embeddings is None or batch.embedded is not None else batch.embeddings[:stop],
        time_s=batch.time_s,
    )


def tail(batch: DriftBatch, start: int) -> DriftBatch:
    """The events from ``start`` on (embeddings only when every event has its row)."""
    return DriftBatch(
        predicted=batch.predicted[start:],
        confidence=batch.confidence[start:],
        embeddings=None if batch.embeddings is None or batch.embedded is not None else batch.embeddings[start:],
        time_s=batch.time_s,
    )


class Tumbler:
    """Collects events and hands them back in windows of exactly ``size`` events."""

    def __init__(self, *, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self._size = size
        self._pending: list[DriftBatch] = []
        self._count = 0

    @property
    def size(self) -> int:
        return self._size

    def add(self, batch: DriftBatch) -> list[DriftBatch]:
        """Windows completed by these events, oldest first; the remainder waits for the next call."""
        self._pending.append(batch)
        self._count += len(batch)
        if self._count < self._size:
            return []
        merged = concat(self._pending)
        full = self._count // self._size * self._size
        windows = [tail(head(merged, start + self._size), start) for start in range(0, full, self._size)]
        rest = tail(merged, full)
        self._pending = [rest] if len(rest) else []
        self._count = len(rest)
        return windows
