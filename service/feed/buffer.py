"""The monitoring records waiting to be written to Redis: bounded, oldest first, and the label-join records
indexed so that a delayed label takes its record in O(1) (a scan took 3.2 s for 1,000 labels over 50k records).

Plain bookkeeping for :class:`service.feed.writer.FeedWriter`, which counts and writes; the event loop's alone.
A record a label took stays in the queue, marked taken, and is skipped when its turn comes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

RECORDS = "label_join"
"""The ``feed`` of the records waiting in Redis for a delayed label."""


@dataclass(slots=True)
class Pending:
    feed: str
    model: str
    request_id: str
    blob: bytes
    taken: bool = False
    """A label-join record a delayed label took while it waited here: skipped when its turn comes."""
    gone: bool = False
    """Out of the queue for good (written, dropped, or skipped as taken)."""
    refused: bool = False
    """Redis refused it once for lack of memory, and it waits to be written again (labelled records only)."""


class FeedBuffer:
    def __init__(self, max_records: int) -> None:
        self._queue: deque[Pending] = deque()
        self._max_records = max_records
        self._waiting: dict[tuple[str, str], Pending] = {}
        """The label-join records in the queue by (model, request id)."""
        self._taken = 0
        """How many records in the queue were taken by a label."""
        self._lent: dict[tuple[str, str], Pending] = {}
        """Records taken by the label request under way, until it settles (:meth:`keep_taken`, :meth:`give_back`)."""

    def __len__(self) -> int:
        """Records still to be written (those labels took are not)."""
        return len(self._queue) - self._taken

    @property
    def stored(self) -> int:
        """Entries in the queue, taken ones included (they leave it when their turn comes)."""
        return len(self._queue)

    def append(self, item: Pending) -> Pending | None:
        """Queue ``item``; when full, the oldest leaves first: returned when it is lost (not one a label took)."""
        lost = None
        if len(self._queue) >= self._max_records:
            oldest = self._queue.popleft()
            self.forget(oldest)
            lost = None if oldest.taken else oldest
        self._queue.append(item)
        if item.feed == RECORDS:
            self._waiting[(item.model, item.request_id)] = item
        return lost

    def waits_here(self, model: str, request_id: str) -> bool:
        return (model, request_id) in self._waiting

    def take(self, model: str, request_id: str) -> bytes | None:
        """The label-join record of ``request_id`` if it is still here (its blob); it will not be written."""
        item = self._waiting.pop((model, request_id), None)
        if item is None:
            return None
        item.taken = True
        self._taken += 1
        self._lent[(model, request_id)] = item
        return item.blob

    def give_back(self) -> list[Pending]:
        """Undo every :meth:`take` since the last :meth:`keep_taken`: the records wait again. Returns those the
        full queue pushed out meanwhile (lost, to be counted)."""
        lost = [item for item in map(self._returned, list(self._lent)) if item is not None]
        self._lent.clear()
        return lost

    def give_back_one(self, model: str, request_id: str) -> Pending | None:
        """Undo the :meth:`take` of one record (its label was refused); returned when the full queue pushed it
        out meanwhile (lost, to be counted)."""
        return self._returned((model, request_id))

    def _returned(self, key: tuple[str, str]) -> Pending | None:
        """The lent record of ``key`` waits again; returned instead when the full queue pushed it out (lost)."""
        item = self._lent.pop(key, None)
        if item is None or item.gone:
            return item
        item.taken = False
        self._taken -= 1
        self._waiting[key] = item
        return None

    def keep_taken(self) -> list[Pending]:
        """The records taken since the last call were joined: they will not be written. Returns them."""
        joined = list(self._lent.values())
        self._lent.clear()
        return joined

    def next_batch(self, size: int) -> tuple[list[Pending], int]:
        """Up to ``size`` entries out of the queue, less those labels took; and how many entries left it."""
        popped = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
        for item in popped:
            if item.taken:
                self.forget(item)
        return [item for item in popped if not item.gone], len(popped)

    def put_back(self, batch: list[Pending]) -> None:
        """A batch that did not reach Redis waits again, oldest first, ahead of the rest."""
        self._queue.extendleft(reversed(batch))

    def forget(self, item: Pending) -> None:
        """``item`` left the queue for good."""
        item.gone = True
        if item.taken:
            self._taken -= 1
        elif item.feed == RECORDS and self._waiting.get((item.model, item.request_id)) is item:
            del self._waiting[(item.model, item.request_id)]

    def clear(self) -> list[Pending]:
        """Empty the queue; returns the records that were still to be written."""
        left = [item for item in self._queue if not item.taken]
        self._queue.clear()
        self._waiting.clear()
        self._lent.clear()
        self._taken = 0
        return left
