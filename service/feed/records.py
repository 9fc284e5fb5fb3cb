"""What goes into the monitoring feed: which events get a record under the per-replica budget, and the record.

The writer that takes these records to Redis is ``service.feed.writer``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from monitors.feed import MonitoringRecord
from service.events.accepted import Prediction
from service.events.scores import softmax
from service.events.tensors import Vector


class UniformBudget:
    """Keeps each event with probability ``budget / rate`` once the rate exceeds the budget.

    The rate is the larger of the previous second's count and the current second's so far,
    so a burst is thinned from its start and every event of a second has the same chance.
    """

    def __init__(self, per_second: int, *, rng: np.random.Generator | None = None) -> None:
        self._budget = per_second
        self._second = 0
        self._count = 0
        self._previous = 0
        self._rng = rng or np.random.default_rng()

    def admit_many(self, now_s: float, count: int) -> list[bool]:
        """Whether each of ``count`` events arriving now (a request's) is kept, each drawn at the rate the count
        has reached with it, as if they came one by one. A request within the budget draws nothing, a single
        event one number; larger requests past the budget draw in one vectorised pass (a list either way:
        the request path reads it event by event)."""
        if self._budget <= 0:
            return [True] * count
        second = int(now_s)
        if second != self._second:
            self._previous = self._count if second == self._second + 1 else 0
            self._second, self._count = second, 0
        first = self._count + 1  # the count with this request's first event
        self._count += count
        if max(self._previous, self._count) <= self._budget:
            return [True] * count
        if count == 1:
            rate = max(self._previous, first)
            return [bool(self._rng.random() < self._budget / rate)]
        rates = np.maximum(self._previous, np.arange(first, self._count + 1))
        kept = (rates <= self._budget) | (self._rng.random(count) < self._budget / rates)
        return kept.tolist()  # type: ignore[no-any-return]


def monitoring_record(prediction: Prediction, version: str, *, brier_max_classes: int) -> MonitoringRecord:
    """The record the monitor reads for ``prediction``, with the probability vector (for the Brier score and
    temperature) only for models of at most ``brier_max_classes`` classes (``VAI_BRIER_MAX_CLASSES``)."""
    probabilities = None
    if prediction.num_classes <= brier_max_classes:
        scores = prediction.scores
        wide = np.asarray(scores, dtype=np.float64)
        probabilities = softmax(wide) if prediction.from_logits else wide.copy()
    embedding = prediction.embedding
    return MonitoringRecord(
        model=prediction.model,
        request_id=prediction.request_id,
        version=version,
        time_s=prediction.timestamp,
        predicted=prediction.predicted,
        confidence=prediction.confidence,
        margin=prediction.margin,
        num_classes=prediction.num_classes,
        cohort=prediction.cohort,
        probabilities=probabilities,
        embedding=None if embedding is None else _float32(embedding),
    )


_F32_MAX = float(np.finfo(np.float32).max)


def _float32(values: Vector) -> npt.NDArray[np.float32]:
    """float32 for the wire; values beyond its range (valid float64 events can hold them) are clipped."""
    if values.dtype == np.float32:
        return values.view(np.float32)  # as sent: no copy
    if values.size and (values.max() > _F32_MAX or values.min() < -_F32_MAX):
        return np.clip(values, -_F32_MAX, _F32_MAX).astype(np.float32)
    return values.astype(np.float32)
