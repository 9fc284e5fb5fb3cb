"""``DaemonWorker``: the asyncio client's one thread for blocking work (encoding, HTTP), never joined at exit."""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_Call = tuple[Future[Any], Callable[[], Any]]


class DaemonWorker(Executor):
    """An executor of one daemon thread, started by the first ``submit()``: calls run one at a time, in order.

    ``ThreadPoolExecutor`` threads are joined when the interpreter exits, so a post stuck on a hung sidecar would
    hold the process for up to ``timeout_s`` after ``close()`` (or the exit hook) gave up on it. This thread is a
    daemon, as the threaded client's sender is: what bounds the exit is the client's own timeout.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shutdown = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to a DaemonWorker after shutdown")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._calls.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; the thread ends after the ones already submitted (``cancel_futures`` is not supported)."""
        with self._lock:
            self._shutdown = True
            thread = self._thread
            self._calls.put(None)
        if wait and thread is not None:
            thread.join()

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            _run(*call)
            del call  # nothing of the last call kept alive while the thread waits


def _run(future: Future[Any], call: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():  # cancelled while it waited
        return
    try:
        result = call()
    except BaseException as error:  # handed to whoever waits on the future, as ThreadPoolExecutor does
        future.set_exception(error)
    else:
        future.set_result(result)
