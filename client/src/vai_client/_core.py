"""What the threaded and the asyncio client share: the bounded buffer, the counters, batching."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from vai_client._delivery import BatchDelivery
from vai_client._encoding import (
    TensorEncoding,
    UnreadableField,
    encode_event,
    encode_label,
    label_value,
    snapshot_bytes,
    snapshot_event,
)
from vai_client._policy import RefusalLog, RetryPolicy
from vai_client._stats import OUTCOMES, ClientStats, Counters

log = logging.getLogger("vai_client")

MIN_REQUEST_BYTES = 1024
"""The least ``max_request_bytes``: the sidecar's own least ``VAI_MAX_BODY_BYTES``."""


class Core:
    """The bounded FIFO of events and labels (the oldest dropped when full), and the counts of what became of them.

    One FIFO for both kinds keeps a label behind the event it labels; the sender takes runs of one kind.
    The FIFO is bounded twice: ``max_buffer`` items, and ``max_buffer_bytes`` of tensor data. Ahead of it,
    ``parked`` holds batches a cancelled sender (the asyncio client's, when its loop ended) took and did not settle.
    """

    def __init__(
        self,
        *,
        max_buffer: int,
        max_buffer_bytes: int,
        batch_size: int,
        max_request_bytes: int,
        tensor_encoding: TensorEncoding,
        registry: Any,
        name: str,
        policy: RetryPolicy,
    ) -> None:
        if max_buffer < 1 or batch_size < 1 or max_buffer_bytes < 1:
            raise ValueError("max_buffer, max_buffer_bytes and batch_size must be at least 1")
        if max_request_bytes < MIN_REQUEST_BYTES:
            raise ValueError(f"max_request_bytes: at least {MIN_REQUEST_BYTES} (the sidecar's own least limit)")
        if tensor_encoding not in ("json", "compact"):
            raise ValueError(f"tensor_encoding: 'json' or 'compact', not {tensor_encoding!r}")
        self.max_buffer = max_buffer
        self.max_buffer_bytes = max_buffer_bytes
        self.batch_size = batch_size
        self.max_request_bytes = max_request_bytes
        self.tensor_encoding: TensorEncoding = tensor_encoding
        self.policy = policy
        self.counters = Counters(registry, name)
        self.refusals = RefusalLog()
        self.lock = threading.Lock()
        self.items: deque[tuple[str, Any, int]] = deque()
        self.parked: deque[BatchDelivery] = deque()
        self.finished = False
        """``discard()`` ran: nothing more will be sent, and whatever comes back to the buffer counts as failed."""
        self.buffered_bytes = 0
        self.enqueued = 0
        self.closed = False
        self._warned: set[str] = set()
        self.counters.export_waiting(self.stats)

    def put(self, kind: str, item: Any, size: int = 0) -> int:
        """Append (never blocks on I/O), dropping the oldest while either bound is passed; the number
        waiting afterwards. Dropped instead (counted): an item when the client is closed, or one larger
        than ``max_buffer_bytes`` on its own."""
        dropped = 0
        oversized = False
        with self.lock:
            self.enqueued += 1
            if self.closed or size > self.max_buffer_bytes:
                dropped = 1
                waiting = 0 if self.closed else len(self.items)
                oversized = not self.closed and "oversized" not in self._warned
                if oversized:
                    self._warned.add("oversized")
            else:
                self.items.append((kind, item, size))
                self.buffered_bytes += size
                while len(self.items) > self.max_buffer or self.buffered_bytes > self.max_buffer_bytes:
                    self.buffered_bytes -= self.items.popleft()[2]
                    dropped += 1
                waiting = len(self.items)
        self.counters.add("dropped", dropped)
        if oversized:
            log.warning("vai client dropped %s of %d bytes, over max_buffer_bytes on its own", kind, size)
        return waiting

    def event(self, fields: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        """The snapshot ``log()`` buffers and its tensors' size; None (counted as rejected) if a field is unreadable."""
        try:
            event = snapshot_event(fields)
            return event, snapshot_bytes(event)
        except Exception as error:  # the model server must never fail because monitoring could not read a value
            self._count_unreadable("event", error, new_item=True)
            return None

    def label(self, model: str, request_id: str, label: Any) -> tuple[str, str, int] | None:
        """The label ``label()`` buffers, or None (counted as rejected) when it is not an integer."""
        try:
            return model, request_id, label_value(label)
        except Exception as error:
            self._count_unreadable("label", UnreadableField("label", error), new_item=True)
            return None

    def _count_unreadable(self, what: str, error: Exception, *, new_item: bool) -> None:
        key = f"{what}:{error.field if isinstance(error, UnreadableField) else type(error).__name__}"
        with self.lock:
            self.enqueued += int(new_item)
            first = key not in self._warned
            self._warned.add(key)
        self.counters.add("rejected", 1)
        if first:
            log.warning("vai client could not read %s (%s); such items are counted as rejected", what, error)

    def take(self) -> tuple[str, list[Any]] | None:
        """The oldest run of items of one kind, at most ``batch_size``."""
        with self.lock:
            if not self.items:
                return None
            kind = self.items[0][0]
            batch: list[Any] = []
            while self.items and len(batch) < self.batch_size and self.items[0][0] == kind:
                _, item, size = self.items.popleft()
                self.buffered_bytes -= size
                batch.append(item)
        return kind, batch

    def discard(self) -> int:
        """Count everything still waiting as failed (out of time at close), and what comes back later too."""
        with self.lock:
            self.finished = True
            left = len(self.items)
            self.items.clear()
            self.buffered_bytes = 0
            parked = list(self.parked)
            self.parked.clear()
        self.counters.add("failed", left)
        return left + sum(delivery.abandon() for delivery in parked)

    def park(self, delivery: BatchDelivery) -> None:
        """A batch its sender was cancelled with, before it was settled, back ahead of the buffer for the next
        sender (the exit hook); what its post in flight carried is marked as maybe arrived, so that duplicates
        of it count as sent. Counted as failed instead once nothing will be sent."""
        delivery.interrupted()
        with self.lock:
            if not self.finished:
                self.parked.append(delivery)
                return
        delivery.abandon()

    def unpark(self) -> BatchDelivery | None:
        """The oldest parked batch, to be sent before anything in the buffer."""
        with self.lock:
            return self.parked.popleft() if self.parked else None

    def put_back(self, kind: str, items: list[Any]) -> None:
        """Items taken but never encoded (their sender cancelled first) back at the front of the buffer, in order;
        counted as failed once nothing will be sent."""
        with self.lock:
            if not self.finished:
                for item in reversed(items):
                    size = snapshot_bytes(item) if kind == "events" else 0
                    self.items.appendleft((kind, item, size))
                    self.buffered_bytes += size
                return
        self.counters.add("failed", len(items))

    def after_fork(self) -> None:
        """A forked child starts empty, with counts at zero: what the parent buffered is the parent's to send."""
        self.lock = threading.Lock()
        self.items.clear()
        self.parked.clear()
        self.buffered_bytes = 0
        self.enqueued = 0
        self.counters.reset()

    def delivery(self, kind: str, batch: list[Any]) -> BatchDelivery:
        """Encode a batch (on the sender, never in ``log()``); items that cannot be encoded count as rejected."""
        encoded = []
        for item in batch:
            try:
                encoded.append(encode_event(item, self.tensor_encoding) if kind == "events" else encode_label(*item))
            except Exception as error:  # OverflowError, RecursionError, ...: one item's fault, not the sender's
                self._count_unreadable(kind[:-1], error, new_item=False)
        return BatchDelivery(
            kind, encoded, self.counters, self.policy, self.refusals, max_request_bytes=self.max_request_bytes
        )

    def crashed(self, kind: str, left: int, error: Exception) -> None:
        """An unexpected error while sending one batch: its unsettled items count as rejected, and the sender
        goes on. Logged with its traceback once per kind of error."""
        key = f"crash:{type(error).__name__}"
        with self.lock:
            first = key not in self._warned
            self._warned.add(key)
        self.counters.add("rejected", left)
        level = logging.ERROR if first else logging.DEBUG
        log.log(
            level,
            "vai client failed to send a batch of %s (%s); its %d unsent items are counted as rejected",
            kind,
            error,
            left,
            exc_info=error,
        )

    @property
    def settled(self) -> int:
        """Items whose fate is known: every outcome but ``retried``."""
        return sum(self.counters.get(outcome) for outcome in OUTCOMES if outcome != "retried")

    def drained(self, failed_before: int) -> bool:
        """Everything logged is settled, and nothing more failed since ``failed_before``."""
        return self.settled >= self.enqueued and self.counters.get("failed") == failed_before

    def stats(self) -> ClientStats:
        parked = sum(delivery.left for delivery in list(self.parked))
        return self.counters.snapshot(buffered=len(self.items) + parked, buffered_bytes=self.buffered_bytes)


class ClientBase:
    """What ``Client`` and ``AsyncClient`` share: ``log()``, ``label()`` and ``stats``, which only buffer and count.

    A subclass sets ``_core`` and says in ``_queued`` how its sender is woken once a batch is waiting.
    """

    _core: Core

    def log(
        self,
        *,
        model: str,
        request_id: str,
        logits: Any = None,
        probabilities: Any = None,
        embedding: Any = None,
        cohort: dict[str, str] | None = None,
        input: Any = None,
        label: int | None = None,
        model_version: str | None = None,
        timestamp: Any = None,
    ) -> None:
        """Queue one prediction's event; returns at once. Tensors (torch, numpy, lists) are copied, not encoded.

        ``timestamp`` defaults to now (epoch seconds), so events sent late keep their time.
        """
        event = self._core.event(
            {
                "model": model,
                "model_version": model_version,
                "request_id": request_id,
                "timestamp": time.time() if timestamp is None else timestamp,
                "logits": logits,
                "probabilities": probabilities,
                "embedding": embedding,
                "cohort": cohort,
                "input": input,
                "label": label,
            }
        )
        if event is not None:
            self._queued(self._core.put("events", *event))

    def label(self, model: str, request_id: str, label: int) -> None:
        """Queue a delayed ground-truth label for an event logged earlier; returns at once.

        A label that is not an integer (a bool, 2.9, NaN, inf) is counted as rejected, never truncated.
        """
        item = self._core.label(model, request_id, label)
        if item is not None:
            self._queued(self._core.put("labels", item))

    @property
    def stats(self) -> ClientStats:
        return self._core.stats()

    def _queued(self, waiting: int) -> None:
        """An item was buffered and ``waiting`` wait now: wake the sender when a batch is full."""
        raise NotImplementedError
