"""What the threaded and the asyncio client share: the bounded buffer, the counters, batching."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from vai_client._delivery import TRANSIENT_ERRORS, BatchDelivery, RetryPolicy, Transport
from vai_client._encoding import TensorEncoding, encode_event, encode_label, snapshot_event
from vai_client._stats import ClientStats, Counters

log = logging.getLogger("vai_client")


class Core:
    """The bounded FIFO of events and labels (the oldest dropped when full), and the counts of what became of them.

    One FIFO for both kinds keeps a label behind the event it labels; the sender takes runs of one kind.
    """

    def __init__(
        self, *, max_buffer: int, batch_size: int, tensor_encoding: TensorEncoding, registry: Any, policy: RetryPolicy
    ) -> None:
        if max_buffer < 1 or batch_size < 1:
            raise ValueError("max_buffer and batch_size must be at least 1")
        if tensor_encoding not in ("json", "compact"):
            raise ValueError(f"tensor_encoding: 'json' or 'compact', not {tensor_encoding!r}")
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.tensor_encoding: TensorEncoding = tensor_encoding
        self.policy = policy
        self.counters = Counters(registry)
        self.lock = threading.Lock()
        self.items: deque[tuple[str, Any]] = deque()
        self.enqueued = 0
        self.closed = False
        self._warned: set[str] = set()

    def put(self, kind: str, item: Any) -> int:
        """Append (never blocks on I/O); the number waiting afterwards, 0 when refused (client closed)."""
        dropped = 0
        with self.lock:
            self.enqueued += 1
            if self.closed:
                dropped = 1
                waiting = 0
            else:
                if len(self.items) >= self.max_buffer:
                    self.items.popleft()
                    dropped = 1
                self.items.append((kind, item))
                waiting = len(self.items)
        if dropped:
            self.counters.add("dropped", 1)
        return waiting

    def event(self, fields: dict[str, Any]) -> Any:
        """The snapshot ``log()`` buffers, or None (counted as rejected) when a field cannot be read."""
        try:
            return snapshot_event(fields)
        except Exception as error:  # the model server must never fail because monitoring could not read a value
            self._count_unreadable(error, new_item=True)
            return None

    def _count_unreadable(self, error: Exception, *, new_item: bool) -> None:
        with self.lock:
            self.enqueued += int(new_item)
            first = type(error).__name__ not in self._warned
            self._warned.add(type(error).__name__)
        self.counters.add("rejected", 1)
        if first:
            log.warning(
                "vai client could not read an event (%s: %s); such events are counted as rejected",
                type(error).__name__,
                error,
            )

    def take(self) -> tuple[str, list[Any]] | None:
        """The oldest run of items of one kind, at most ``batch_size``."""
        with self.lock:
            if not self.items:
                return None
            kind = self.items[0][0]
            batch: list[Any] = []
            while self.items and len(batch) < self.batch_size and self.items[0][0] == kind:
                batch.append(self.items.popleft()[1])
        return kind, batch

    def discard(self) -> int:
        """Count everything still waiting as failed (out of time at close)."""
        with self.lock:
            left = len(self.items)
            self.items.clear()
        self.counters.add("failed", left)
        return left

    def delivery(self, kind: str, batch: list[Any]) -> BatchDelivery:
        """Encode a batch (on the sender, never in ``log()``); items that cannot be encoded count as rejected."""
        encoded = []
        for item in batch:
            try:
                encoded.append(encode_event(item, self.tensor_encoding) if kind == "events" else encode_label(*item))
            except (TypeError, ValueError) as error:
                self._count_unreadable(error, new_item=False)
        return BatchDelivery(kind, encoded, self.counters, self.policy)

    @property
    def settled(self) -> int:
        """Items whose fate is known: sent, rejected, dropped or failed."""
        get = self.counters.get
        return get("sent") + get("rejected") + get("dropped") + get("failed")

    def drained(self, failed_before: int) -> bool:
        """Everything logged is settled, and nothing more failed since ``failed_before``."""
        return self.settled >= self.enqueued and self.counters.get("failed") == failed_before

    def stats(self) -> ClientStats:
        return self.counters.snapshot(buffered=len(self.items))


def deliver_blocking(
    delivery: BatchDelivery,
    transport: Transport,
    *,
    remaining_s: Callable[[], float | None],
    pause: Callable[[float], None],
) -> None:
    """Post one batch until it is settled, or abandon it when ``remaining_s()`` reaches 0 (closing)."""
    while not delivery.done:
        remaining = remaining_s()
        if remaining is not None and remaining <= 0:
            delivery.abandon()
            return
        try:
            response = transport.post(
                delivery.path, delivery.next_body(), timeout_s=transport.attempt_timeout_s(remaining)
            )
        except TRANSIENT_ERRORS as error:
            delay_s = delivery.record_error(error)
        else:
            delay_s = delivery.record_response(response)
        if delay_s > 0 and not delivery.done:
            pause(delay_s)
