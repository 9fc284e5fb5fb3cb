"""``AsyncClient``: the same ``log()``, with an asyncio task as the sender.

The task does the waiting (batching, backoff, ``Retry-After``) on the event loop; encoding and the
blocking ``http.client`` call run on one private daemon worker thread (``run_in_executor``), so the loop is
never held up by a slow or hung sidecar, the keep-alive connection stays on one thread, and a post stuck on
a hung sidecar never holds up the interpreter's exit past ``close()``'s (or the exit hook's) timeout.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import time
import weakref
from concurrent.futures import Future
from typing import Any

from vai_client._core import ClientBase, Core
from vai_client._delivery import BatchDelivery
from vai_client._encoding import TensorEncoding
from vai_client._policy import RetryPolicy
from vai_client._sending import resume_blocking, send_blocking
from vai_client._transport import TRANSIENT_ERRORS, Response, Transport
from vai_client._worker import DaemonWorker


class AsyncClient(ClientBase):
    """``Client`` for asyncio servers: ``log()``/``label()`` are plain (non-async) calls that return at once.

    Start it inside the running loop (``async with AsyncClient(url) as client`` or ``await client.start()``,
    e.g. in a FastAPI lifespan) and ``await client.close()`` before the loop ends. Items still waiting
    when the interpreter exits without ``close()`` are posted from an ``atexit`` hook, within
    ``atexit_timeout_s``: first the batch the sender was cancelled with when the loop ended (back ahead of
    the buffer, in order; what was in flight may arrive twice, and its duplicates count as sent), then the
    buffer. Same arguments, counters and guarantees as ``Client``.

    In a child made by ``fork()`` the client starts over, unstarted: empty, its counts at zero, its sender
    started on the child's own loop as a new client's is (the parent's loop and worker thread are not there).
    What the parent buffered is the parent's to send; a copy of the parent's sender task, in a child forked from
    inside the loop, stops without sending anything.
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
        self._transport = Transport(url, token=token, timeout_s=timeout_s)
        self._flush_interval_s = flush_interval_s
        self._atexit_timeout_s = atexit_timeout_s
        self._unstarted()
        atexit.register(self._at_exit)
        os.register_at_fork(after_in_child=functools.partial(_start_over_in_child, weakref.ref(self)))

    def _unstarted(self) -> None:
        """No sender yet (again in a forked child): the first ``start()``, ``flush()`` or ``log()`` in a running
        loop starts it there."""
        self._executor = DaemonWorker("vai-client-http")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._interrupt: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._deadline: float | None = None

    async def start(self) -> AsyncClient:
        """Start the sender task on the running loop (``log()`` also does, the first time it runs in one)."""
        self._ensure_task()
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything logged so far is settled; False on timeout."""
        self._ensure_task()
        if self._wake is None or self._progress is None:
            raise RuntimeError("AsyncClient is not started: await start() inside the running loop")
        target = self._core.enqueued
        self._wake.set()
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(lambda: self._core.settled >= target), timeout_s)
            except TimeoutError:
                return False
        return True

    async def close(self, timeout_s: float = 5.0) -> bool:
        """Send what is waiting within ``timeout_s``, then stop; what is left counts as failed."""
        with self._core.lock:
            already = self._core.closed
            self._core.closed = True
        failed_before = self._core.counters.get("failed")
        if not already:
            atexit.unregister(self._at_exit)
            self._deadline = time.monotonic() + timeout_s
            self._ensure_task()  # one never started (logged before any loop ran) sends what waits now
            if self._task is not None and not self._task.done():
                if self._wake is None or self._interrupt is None:
                    raise RuntimeError("AsyncClient is not started: await start() inside the running loop")
                self._interrupt.set()
                self._wake.set()
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._task), timeout_s + 0.5)
                self._task.cancel()
                await asyncio.wait({self._task})  # it parks what it held, which discard() then counts as failed
            self._core.discard()
            self._executor.submit(self._transport.close)
            self._executor.shutdown(wait=False)
        return self._core.drained(failed_before)

    def _ensure_task(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task = self._loop.create_task(self._run(), name="vai-client-sender")

    def _queued(self, waiting: int) -> None:
        if self._task is None:
            try:
                self._ensure_task()
            except RuntimeError:  # no running loop here (yet): the first flush interval of a started client
                return
        if waiting >= self._core.batch_size and self._wake is not None and not self._wake.is_set():
            if self._loop is None:
                raise RuntimeError("AsyncClient is not started: await start() inside the running loop")
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                self._wake.set()
            else:  # called from another thread
                self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        if self._wake is None or self._progress is None:
            raise RuntimeError("AsyncClient is not started: await start() inside the running loop")
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            if self._orphaned(loop):
                return
            self._wake.clear()
            while (batch := self._core.take()) is not None:
                await self._send(loop, *batch)
                if self._orphaned(loop):
                    return
                async with self._progress:
                    self._progress.notify_all()
            if self._deadline is not None:
                return

    async def _send(self, loop: asyncio.AbstractEventLoop, kind: str, items: list[Any]) -> None:
        """Encode (on the worker thread) and post one batch; an unexpected error costs this batch, never the task."""
        delivery = None
        encoding = self._executor.submit(self._core.delivery, kind, items)
        try:
            delivery = await asyncio.wrap_future(encoding, loop=loop)
            await self._deliver(delivery)
        except asyncio.CancelledError:  # the loop is ending, or close() ran out of time: back to the buffer
            if self._orphaned(loop):
                raise
            if delivery is None:  # parked by the thread when it is done: it counts what it cannot encode
                encoding.add_done_callback(functools.partial(self._park_encoded, kind, items))
            else:
                self._core.park(delivery)
            raise
        except Exception as error:
            if not self._orphaned(loop):
                self._core.crashed(kind, len(items) if delivery is None else delivery.left, error)

    def _orphaned(self, loop: asyncio.AbstractEventLoop) -> bool:
        """This task is the copy of the parent's sender in a child forked inside the loop, whose client started over:
        the batch it holds is the parent's, to be neither sent, parked nor counted here."""
        return asyncio.current_task(loop) is not self._task

    def _park_encoded(self, kind: str, items: list[Any], encoding: Future[BatchDelivery]) -> None:
        """A batch whose sender was cancelled while it was encoded: parked once encoded (the encoder counted
        as rejected what it could not encode); back in the buffer when the encoding never ran."""
        if encoding.cancelled():
            self._core.put_back(kind, items)
        elif encoding.exception() is not None:
            self._core.counters.add("failed", len(items))
        else:
            self._core.park(encoding.result())

    async def _deliver(self, delivery: BatchDelivery) -> None:
        loop = asyncio.get_running_loop()
        while not delivery.done:
            remaining = self._remaining_s()
            if remaining is not None and remaining <= 0:
                delivery.abandon()
                return
            timeout_s = self._transport.attempt_timeout_s(remaining)
            body = delivery.next_body()
            outcome = await loop.run_in_executor(self._executor, self._post, delivery.path, body, timeout_s)
            if isinstance(outcome, Response):
                delay_s = delivery.record_response(outcome)
            else:
                delay_s = delivery.record_error(outcome)
            if delay_s > 0 and not delivery.done:
                await self._pause(delay_s)

    def _post(self, path: str, body: bytes, timeout_s: float) -> Response | BaseException:
        try:
            return self._transport.post(path, body, timeout_s=timeout_s)
        except TRANSIENT_ERRORS as error:
            return error

    def _remaining_s(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    async def _pause(self, delay_s: float) -> None:
        if self._interrupt is None:
            raise RuntimeError("AsyncClient is not started: await start() inside the running loop")
        until = time.monotonic() + delay_s
        while True:
            remaining = self._remaining_s()
            left = until - time.monotonic() if remaining is None else min(until - time.monotonic(), remaining)
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._interrupt.wait(), left)
            self._interrupt.clear()

    def _at_exit(self) -> None:
        """The loop is gone by now: post what is left from this thread, within ``atexit_timeout_s``."""
        with self._core.lock:
            self._core.closed = True
        deadline = time.monotonic() + self._atexit_timeout_s
        transport = self._transport.clone()  # the executor's connection may be mid-call, or its thread gone

        def remaining_s() -> float:
            return deadline - time.monotonic()

        def pause(delay_s: float) -> None:
            time.sleep(max(0.0, min(delay_s, remaining_s())))

        while (delivery := self._core.unpark()) is not None:
            resume_blocking(self._core, delivery, transport, remaining_s=remaining_s, pause=pause)
        while (batch := self._core.take()) is not None:
            send_blocking(self._core, *batch, transport, remaining_s=remaining_s, pause=pause)
        transport.close()


def _start_over_in_child(reference: weakref.ref[AsyncClient]) -> None:
    """After ``fork()`` (e.g. gunicorn ``--preload``) the child has neither the parent's loop thread nor its worker
    thread, and a copy of the parent's buffer that the parent sends: the child's client starts over, empty, with
    its own counts and its own connection, to be started on a loop of the child's."""
    client = reference()
    if client is not None and not client._core.closed:
        client._core.after_fork()
        client._transport = client._transport.clone()  # the parent's socket is the parent's
        client._unstarted()
