"""The background thread that drains ingest buffers into drift monitors, off the request path."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import torch
from threadpoolctl import threadpool_limits

from monitors.drift.base import DriftBatch, DriftEvent
from monitors.drift.buffer import IngestBuffer
from monitors.drift.monitor import DriftMonitor

logger = logging.getLogger(__name__)
BACKGROUND_NICENESS = 19
FAILURE_LOG_EVERY_S = 60.0
"""A failure of the runner's own (not a detector's) that repeats is logged with its traceback at most this often."""


class DriftRunner:
    """Runs detectors for every registered (monitor, buffer) pair; calibrations get a thread each, and
    at most ``max_calibrations`` of them calibrate at once.

    ``start`` launches the loop; ``run_once`` does one pass synchronously (what
    the loop repeats, and what tests call). A detector error is logged and the
    batch dropped; a calibration thread that cannot start is logged and tried
    again at the next pass; any other failure of a pass is logged and the loop
    goes on (a repeat at most once a minute with its traceback, at debug
    otherwise). ``stop`` does not wait for a calibration in
    progress (alibi-detect's bootstrap cannot be interrupted); its daemon thread
    ends with the process.
    """

    def __init__(
        self,
        *,
        poll_interval_s: float = 0.2,
        max_batch_events: int = 1000,
        busy_share: float = 1.0,
        math_threads: int | None = None,
        background_priority: bool = False,
        max_calibrations: int = 2,
    ) -> None:
        """``busy_share``: at most this share of wall time is spent detecting (the rest waits), so that
        detection in a thread of the serving process leaves the GIL to the request path; events that
        arrive faster than that are dropped by the bounded buffers and counted as skipped.
        ``math_threads``: torch threads of the detection and calibration threads, and BLAS threads of
        the process (``None`` leaves both alone); torch's setting is per thread, so each thread sets it.
        ``background_priority``: run the detection and calibration threads at the lowest CPU priority.
        ``max_calibrations``: calibrations that run at once; the others wait their turn (each holds its
        reference's kernel matrices and bootstrap buffers, ~0.3 GB at its peak for a 5,000-row reference)."""
        if poll_interval_s <= 0 or max_batch_events < 1 or not 0 < busy_share <= 1 or max_calibrations < 1:
            raise ValueError(
                "poll_interval_s must be > 0, max_batch_events >= 1, busy_share in (0, 1] and max_calibrations >= 1"
            )
        if math_threads is not None and math_threads < 1:
            raise ValueError(f"math_threads must be at least 1, got {math_threads}")
        self._math_threads = math_threads
        self._background_priority = background_priority
        self._busy_share = busy_share
        self._poll_interval_s = poll_interval_s
        self._max_batch = max_batch_events
        self._pairs: dict[str, tuple[DriftMonitor, IngestBuffer]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._calibration_slots = threading.BoundedSemaphore(max_calibrations)
        self._calibrations: dict[str, tuple[DriftMonitor, threading.Thread]] = {}
        """The latest calibration thread of each watched model, with the monitor it calibrates."""
        self._failures: dict[str, str] = {}
        """The last calibration error of each model, so that a repeat is not logged again (under the lock)."""
        self._said: dict[str, tuple[str, float]] = {}
        """What of the runner's own failed (a pass, a model's calibration start): the error last logged with its
        traceback, and when (the loop's thread alone)."""

    def add(self, *, monitor: DriftMonitor, buffer: IngestBuffer) -> None:
        """Watch ``monitor``'s model, replacing the monitor it had (a new reference, a restored state)."""
        with self._lock:
            self._pairs[monitor.model] = (monitor, buffer)

    def remove(self, model: str) -> None:
        """Stop watching ``model`` (a calibration in progress finishes in its thread and is dropped)."""
        with self._lock:
            self._pairs.pop(model, None)
            self._calibrations.pop(model, None)
            self._failures.pop(model, None)

    def run_once(self) -> int:
        """Start due calibrations and feed each monitor one batch; returns the events processed."""
        with self._lock:
            pairs = list(self._pairs.values())
        processed = 0
        for monitor, buffer in pairs:
            try:
                self._start_calibration(monitor)
            except Exception as error:  # no thread to be had, say: the other models' batches go on
                self._failed(f"starting the drift calibration of model {monitor.model}", error)
            with buffer.examine(self._max_batch) as events:  # settled once examined (or dropped on an error)
                if not events:
                    continue
                processed += len(events)
                buffer.count_examined(self._update(monitor, events))
        return processed

    @staticmethod
    def _update(monitor: DriftMonitor, events: list[DriftEvent]) -> int:
        """The events of ``events`` that ``monitor`` examined (the others it counted as skipped)."""
        before = monitor.examined_total  # this thread is the one that updates it
        try:
            monitor.update(DriftBatch.from_events(events, width=monitor.embedding_width))
        except Exception:
            logger.exception("drift detection failed for model %s; %d events dropped", monitor.model, len(events))
            monitor.pass_over(len(events))
            return 0
        return monitor.examined_total - before

    def _start_calibration(self, monitor: DriftMonitor) -> None:
        """A thread calibrating ``monitor`` unless one is at it (one that calibrated a replaced monitor is let go)."""
        if not monitor.needs_calibration:
            return
        with self._lock:
            running = self._calibrations.get(monitor.model)
            if running is not None and running[0] is monitor and running[1].is_alive():
                return
            thread = threading.Thread(
                target=self._calibrate, args=(monitor,), name=f"drift-calibrate-{monitor.model}", daemon=True
            )
            self._calibrations[monitor.model] = (monitor, thread)
        thread.start()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("drift runner already started")
        if self._math_threads is not None:
            threadpool_limits(limits=self._math_threads, user_api="blas")  # process-wide
        self._thread = threading.Thread(target=self._loop, name="drift-runner", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _limit_threads(self) -> None:
        if self._math_threads is not None:
            torch.set_num_threads(self._math_threads)
        if self._background_priority:
            # Linux applies a thread id's niceness to that thread alone: requests keep the core under
            # load, and a window test's burst of CPU waits for the time they leave.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)

    def _loop(self) -> None:
        self._limit_threads()
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                processed = self.run_once()
            except Exception as error:  # the thread must outlive any one failure, or drift would go unwatched
                self._failed("a drift detection pass", error)
                processed = 0
            if processed == 0:
                self._stop.wait(self._poll_interval_s)
                continue
            busy = time.perf_counter() - started
            self._stop.wait(busy * (1.0 - self._busy_share) / self._busy_share)

    def _failed(self, what: str, error: Exception) -> None:
        """Log a failure of ``what`` with its traceback, unless the same one was logged so in the last
        ``FAILURE_LOG_EVERY_S`` (then at debug). Called from an ``except`` block."""
        message = f"{type(error).__name__}: {error}"
        now = time.monotonic()
        said = self._said.get(what)
        if said is not None and said[0] == message and now - said[1] < FAILURE_LOG_EVERY_S:
            logger.debug("%s failed again: %s", what, message)
            return
        self._said[what] = (message, now)
        logger.exception("%s failed; the drift runner goes on (repeats are logged once a minute)", what)

    def _calibrate(self, monitor: DriftMonitor) -> None:
        self._limit_threads()
        with self._calibration_slots:
            with self._lock:
                watched = self._pairs.get(monitor.model)
            if watched is None or watched[0] is not monitor:
                return  # replaced (a new reference) or removed while it waited: nothing to calibrate
            self._calibrate_now(monitor)

    def _calibrate_now(self, monitor: DriftMonitor) -> None:
        try:
            monitor.calibrate()
        except Exception as error:
            # A warm-up reference that cannot calibrate (say, traffic of identical embeddings) is
            # retried on every fresh warm-up: log the traceback once, not once a second.
            message = f"{type(error).__name__}: {error}"
            with self._lock:
                repeated = self._failures.get(monitor.model) == message
                self._failures[monitor.model] = message
            if not repeated:
                logger.exception("drift calibration failed for model %s (repeats are logged at debug)", monitor.model)
            else:
                logger.debug("drift calibration failed again for model %s: %s", monitor.model, message)
        else:
            with self._lock:
                self._failures.pop(monitor.model, None)
