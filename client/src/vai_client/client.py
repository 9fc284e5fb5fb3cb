"""``Client``: ``log()`` appends to a bounded buffer; one daemon thread batches and posts, in order."""

from __future__ import annotations

import atexit
import functools
import os
import threading
import time
import weakref
from typing import Any

from vai_client._core import ClientBase, Core
from vai_client._encoding import TensorEncoding
from vai_client._policy import RetryPolicy
from vai_client._sending import send_blocking
from vai_client._transport import Transport


class Client(ClientBase):
    """Feeds a vai sidecar from a model server without ever making a prediction wait for it.

    ``log()`` and ``label()`` copy what they are given into a bounded FIFO (``max_buffer`` items and
    ``max_buffer_bytes`` of tensor data; when full, the oldest is dropped and counted) and return. One
    daemon thread posts batches of up to ``batch_size`` to ``{url}/v1/events`` (and ``/v1/labels``)
    every ``flush_interval_s`` or as soon as a batch is full, one batch at a time, so each model's
    events arrive in the order they were logged; a batch is cut into requests of at most
    ``max_request_bytes`` (keep it at most the sidecar's ``VAI_MAX_BODY_BYTES``), and an event larger
    than that on its own is rejected unsent. A batch that gets no answer (refused, reset on a reused
    connection, ``timeout_s``), 408, 429, 502, 503 or 504 is tried again after an exponential backoff (or the
    sidecar's ``Retry-After``, when longer) for as long as the client is open; 413 splits it in half, and so
    does a connection opened for it and cut off while it is sent (a sidecar refusing a body too large without
    reading it); another 5xx splits it too. An event that alone is still cut off, or gets such a 5xx, is given
    up after ``server_error_attempts`` (counted as rejected, or errored); other 4xx count its events as
    rejected. Tensors (logits, probabilities, embeddings) are sent as base64 tensors
    (``tensor_encoding="compact"``, which this repository's sidecar reads); ``"json"`` sends number lists,
    for a sidecar older than that. With ``registry=``, the counts are exported under the label
    ``client=name`` (each client on one registry needs a name of its own).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        max_buffer: int = 10_000,
        max_buffer_bytes: int = 64 * 2**20,
        batch_size: int = 100,
        max_request_bytes: int = 8 * 2**20,
        flush_interval_s: float = 0.2,
        timeout_s: float = 2.0,
        registry: Any = None,
        name: str = "default",
        tensor_encoding: TensorEncoding = "compact",
        atexit_timeout_s: float = 2.0,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self._core = Core(
            max_buffer=max_buffer,
            max_buffer_bytes=max_buffer_bytes,
            batch_size=batch_size,
            max_request_bytes=max_request_bytes,
            tensor_encoding=tensor_encoding,
            registry=registry,
            name=name,
            policy=retry_policy or RetryPolicy(),
        )
        self._url = url
        self._token = token
        self._timeout_s = timeout_s
        self._flush_interval_s = flush_interval_s
        self._atexit_timeout_s = atexit_timeout_s
        self._start()
        atexit.register(self._at_exit)
        os.register_at_fork(after_in_child=functools.partial(_restart_in_child, weakref.ref(self)))

    def _start(self) -> None:
        """The sender thread (again in a forked child, whose copy of the parent's thread does not run)."""
        self._transport = Transport(self._url, token=self._token, timeout_s=self._timeout_s)
        self._wake = threading.Event()  # a batch is ready, or flush/close asked
        self._interrupt = threading.Event()  # close: cut a backoff short
        self._progress = threading.Condition()
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name="vai-client-sender", daemon=True)
        self._thread.start()

    def _queued(self, waiting: int) -> None:
        if waiting >= self._core.batch_size and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything logged so far is settled (sent, rejected or dropped); False on timeout."""
        target = self._core.enqueued
        self._wake.set()
        with self._progress:
            return self._progress.wait_for(lambda: self._core.settled >= target, timeout_s)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Send what is waiting within ``timeout_s``, then stop; what is left counts as failed.

        True when nothing was left unsent (everything logged is sent, rejected or dropped).
        Later ``log()`` calls are counted as dropped.
        """
        with self._core.lock:
            already = self._core.closed
            self._core.closed = True
        if already:
            return self._core.drained(self._core.counters.get("failed"))
        atexit.unregister(self._at_exit)
        failed_before = self._core.counters.get("failed")
        self._deadline = time.monotonic() + timeout_s
        self._interrupt.set()
        self._wake.set()
        self._thread.join(timeout_s + 0.5)
        if self._thread.is_alive():  # stuck past its deadline in a call: give up on the rest
            self._core.discard()
        else:
            self._transport.close()
        return self._core.drained(failed_before)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _at_exit(self) -> None:
        self.close(self._atexit_timeout_s)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            while (batch := self._core.take()) is not None:
                send_blocking(self._core, *batch, self._transport, remaining_s=self._remaining_s, pause=self._pause)
                with self._progress:
                    self._progress.notify_all()
            if self._deadline is not None:
                return

    def _remaining_s(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _pause(self, delay_s: float) -> None:
        """Sleep out a backoff; ``close()`` shortens it to its own deadline."""
        until = time.monotonic() + delay_s
        while True:
            left = until - time.monotonic()
            remaining = self._remaining_s()
            if remaining is not None:
                left = min(left, remaining)
            if left <= 0:
                return
            self._interrupt.wait(left)
            self._interrupt.clear()


def _restart_in_child(reference: weakref.ref[Client]) -> None:
    """After ``fork()`` (e.g. gunicorn ``--preload``) the child has no sender thread, and a copy of the
    parent's buffer that the parent sends: the child starts empty, with its own counts, and its own sender."""
    client = reference()
    if client is not None and not client._core.closed:
        client._core.after_fork()
        client._start()
