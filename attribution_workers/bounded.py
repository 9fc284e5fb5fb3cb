"""Blocking model work with a deadline, and what the worker does when the deadline passes.

A Python thread cannot be stopped from outside, so a deadline on a thread only
stops the waiting. The work runs in a daemon thread (not the event loop's
executor, whose threads are joined at exit); when it overruns, the worker raises
:class:`WorkTimedOut`, and ``vai-sidecar worker`` exits with
:data:`EXIT_TIMED_OUT` so that its supervisor starts a fresh process. That is
what really ends the work, and frees the model it was holding.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from attribution_workers.errors import AttributionError

T = TypeVar("T")

EXIT_TIMED_OUT = 3
"""Exit status of ``vai-sidecar worker`` after a batch overran ``VAI_WORKER_JOB_TIMEOUT_S``."""


class WorkTimedOut(AttributionError):
    """Model work overran its deadline; its thread is still running, so the process must end."""


async def run_bounded(func: Callable[[], T], *, timeout_s: float, name: str) -> T:
    """``func()`` in a daemon thread; raises ``TimeoutError`` after ``timeout_s`` (the thread runs on)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def succeed(result: T) -> None:
        if not future.done():  # cancelled by the timeout
            future.set_result(result)

    def fail(error: Exception) -> None:
        if not future.done():
            future.set_exception(error)

    def target() -> None:
        try:
            result = func()
        except Exception as error:
            _call_in(loop, fail, error)
        else:
            _call_in(loop, succeed, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await asyncio.wait_for(future, timeout=timeout_s)


def _call_in(loop: asyncio.AbstractEventLoop, callback: Callable[[T], None], value: T) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the work overran and nobody waits any more
        loop.call_soon_threadsafe(callback, value)
