"""The bounded hand-off between the request path and drift detection."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter

from monitors.drift.base import DriftEvent


class IngestBuffer:
    """Events waiting for the drift runner; when full, the oldest are dropped and counted.

    ``append`` is O(1) and holds a lock only for a deque operation, so the
    request path never waits on detection.

    Events are numbered in the order they were appended; :attr:`settled_total` says how many of the first are done
    with (examined by the detectors, or dropped or passed over on purpose), so that a reader of a durable feed
    acknowledges an entry only once its event is settled (:mod:`monitors.fleet.owned_feed`).
    """

    def __init__(self, *, capacity_events: int = 10_000, skipped: Counter | None = None) -> None:
        if capacity_events < 1:
            raise ValueError(f"capacity_events must be at least 1, got {capacity_events}")
        self._events: deque[DriftEvent] = deque(maxlen=capacity_events)
        self._skipped = skipped
        self._taken = 0
        self._examined = 0
        self._appended = 0
        self._left = 0
        """Events that left the deque (drained or dropped): the number of the one at its head."""
        self._examining: dict[int, int] = {}
        """The first event's number of each batch the detectors are examining (:meth:`examine`), by batch."""
        self._batches = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def taken_total(self) -> int:
        """Events handed to the detectors by :meth:`drain`."""
        return self._taken

    @property
    def examined_total(self) -> int:
        """Events the detectors examined (:meth:`count_examined`): those taken less those the monitor skipped."""
        return self._examined

    def count_examined(self, events: int) -> None:
        """Count ``events`` of a batch taken by :meth:`examine` as examined (called by the one thread examining)."""
        with self._lock:
            self._examined += events

    @property
    def appended_total(self) -> int:
        """Events appended so far."""
        return self._appended

    @property
    def settled_total(self) -> int:
        """How many of the first events appended are done with: examined (their batch of :meth:`examine` ended),
        drained by :meth:`drain`, or dropped when the buffer was full. Never decreases."""
        with self._lock:
            return min(self._examining.values(), default=self._left)

    @property
    def room(self) -> int:
        """Events that fit before the oldest would be dropped."""
        with self._lock:
            return (self._events.maxlen or 0) - len(self._events)

    def append(self, event: DriftEvent) -> None:
        with self._lock:
            dropped = len(self._events) == self._events.maxlen
            self._events.append(event)
            self._appended += 1
            self._left += dropped
        if dropped and self._skipped is not None:
            self._skipped.inc()

    def drain(self, max_events: int) -> list[DriftEvent]:
        """Remove and return up to ``max_events`` of the oldest events, settled at once (passed over, say)."""
        with self._lock:
            return self._take_locked(max_events)

    @contextmanager
    def examine(self, max_events: int) -> Iterator[list[DriftEvent]]:
        """Up to ``max_events`` of the oldest events, removed, and settled only when the block ends (however it
        ends: a batch the detectors fail on is dropped on purpose)."""
        batch = next(self._batches)
        with self._lock:
            self._examining[batch] = self._left
            events = self._take_locked(max_events)
        try:
            yield events
        finally:
            with self._lock:
                del self._examining[batch]

    def _take_locked(self, max_events: int) -> list[DriftEvent]:
        count = min(max_events, len(self._events))
        self._taken += count
        self._left += count
        return [self._events.popleft() for _ in range(count)]
