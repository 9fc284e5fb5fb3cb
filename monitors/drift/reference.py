"""The reference sample a model's detectors compare against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from monitors.drift.base import DriftBatch


@dataclass(frozen=True, slots=True)
class Reference:
    """Predictions (and embeddings, if the model has them) taken as undrifted."""

    predicted: NDArray[np.int64]
    confidence: NDArray[np.float64]
    embeddings: NDArray[np.float32] | None = None
    has_outputs: bool = True
    """False when only embeddings were given: ``predicted``/``confidence`` are placeholders, output drift is off."""

    def __post_init__(self) -> None:
        n = self.predicted.shape[0] if self.predicted.ndim == 1 else -1
        if n < 2 or self.confidence.shape != (n,):
            raise ValueError(
                f"reference needs predicted and confidence of one shape (n,) with n >= 2, "
                f"got {self.predicted.shape} and {self.confidence.shape}"
            )
        if self.embeddings is not None and (self.embeddings.ndim != 2 or len(self.embeddings) != n):
            raise ValueError(f"reference embeddings must have shape ({n}, d), got {self.embeddings.shape}")

    def __len__(self) -> int:
        return int(self.predicted.size)

    @classmethod
    def from_batch(cls, batch: DriftBatch) -> Reference:
        return cls(predicted=batch.predicted, confidence=batch.confidence, embeddings=batch.embeddings)

    def distinct_rows(self) -> NDArray[np.intp]:
        """Index of the first row of each distinct embedding, in order (every row without embeddings).

        Only PCA and the online LSDD detector take distinct rows, and :meth:`DriftConfig.least_rows` counts them
        (:mod:`monitors.drift.detectors`): the other detectors compare windows in which a repeated input (a blank
        request, a cached query) comes as often as it came here, so they take every row; a reference cut to one row
        per embedding read its repeats as drift (the window tests in every window of 30% repeats, the online MMD
        detector far more often than its ERT allows)."""
        if self.embeddings is None:
            return np.arange(len(self), dtype=np.intp)
        _, first = np.unique(self.embeddings, axis=0, return_index=True)
        return np.sort(first).astype(np.intp)

    def subsample(self, max_rows: int, rng: np.random.Generator) -> tuple[Reference, Reference | None]:
        """A random subsample of at most ``max_rows`` rows and the rows left out, order kept (``None`` if fewer than
        two: a ``Reference`` holds two rows or more, and one row left out of ``max_rows + 1`` made a calibration
        with spare rows fail, e.g. on a 2,001-row reference whose 1,001 rows after PCA's half are one more than the
        default ``max_reference``; it is dropped)."""
        if len(self) <= max_rows:
            return self, None
        chosen = np.zeros(len(self), dtype=bool)
        chosen[rng.choice(len(self), size=max_rows, replace=False)] = True
        left = np.flatnonzero(~chosen)
        return self.rows(np.flatnonzero(chosen)), self.rows(left) if len(left) >= 2 else None

    def split(self, count: int, rng: np.random.Generator) -> tuple[Reference, Reference]:
        """``count`` random rows and the rest, disjoint (``count = len // 2``: two random halves)."""
        chosen, rest = self.split_index(count, rng)
        return self.rows(chosen), self.rows(rest)

    def split_index(self, count: int, rng: np.random.Generator) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """The index of :meth:`split`'s two parts (the same draw), each in order."""
        if not 0 < count < len(self):
            raise ValueError(f"cannot split {len(self)} rows into {count} and the rest")
        order = rng.permutation(len(self))
        return np.sort(order[:count]), np.sort(order[count:])

    def rows(self, index: NDArray[np.intp]) -> Reference:
        """The rows at ``index`` (two or more), in that order."""
        return Reference(
            has_outputs=self.has_outputs,
            predicted=self.predicted[index],
            confidence=self.confidence[index],
            embeddings=None
            if self.embeddings is None
            else np.ascontiguousarray(self.embeddings[index], dtype=np.float32),
        )
