"""The bounded hand-off between the request path and drift detection."""

from __future__ import annotations

import threading
from collections import deque

from prometheus_client import Counter

from monitors.drift.base import DriftEvent


class IngestBuffer:
    """Events waiting for the drift runner; when full, the oldest are dropped and counted.

    ``append`` is O(1) and holds a lock only for a deque operation, so the
    request path never waits on detection.
    """

    def __init__(self, *, capacity_events: int = 10_000, skipped: Counter | None = None) -> None:
        if capacity_events < 1:
            raise ValueError(f"capacity_events must be at least 1, got {capacity_events}")
        self._events: deque[DriftEvent] = deque(maxlen=capacity_events)
        self._skipped = skipped
        self._taken = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def taken_total(self) -> int:
        """Events handed to the detectors by :meth:`drain`."""
        return self._taken

    @property
    def room(self) -> int:
        """Events that fit before the oldest would be dropped."""
        with self._lock:
            return (self._events.maxlen or 0) - len(self._events)

    def oldest_entered_s(self) -> float | None:
        """When the oldest waiting event entered the feed (Redis's clock), if any is waiting and says so."""
        with self._lock:
            return self._events[0].entered_s if self._events else None

    def append(self, event: DriftEvent) -> None:
        with self._lock:
            dropped = len(self._events) == self._events.maxlen
            self._events.append(event)
        if dropped and self._skipped is not None:
            self._skipped.inc()

    def drain(self, max_events: int) -> list[DriftEvent]:
        """Remove and return up to ``max_events`` of the oldest events."""
        with self._lock:
            count = min(max_events, len(self._events))
            self._taken += count
            return [self._events.popleft() for _ in range(count)]
