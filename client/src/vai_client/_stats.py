"""What became of the events (and labels) handed to a client, readable as ``client.stats``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

OUTCOMES = ("sent", "dropped", "rejected", "retried", "failed", "errored")


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counts of items (events and labels) since the client was made.

    ``sent``: accepted by the sidecar. ``dropped``: the oldest waiting, pushed out of the full buffer
    (or refused by a client already closed). ``rejected``: refused by the sidecar (an invalid event,
    a 4xx other than 408/413/429, or an item that cannot be encoded). ``retried``: items in attempts
    that failed and were tried again (one item retried three times counts three). ``failed``: given
    up unsent when ``close()`` or interpreter exit ran out of time. ``errored``: given up after the sidecar
    answered a server error (a 5xx other than 502/503/504) to it alone ``server_error_attempts`` times (the
    batch it came in was split to isolate it, and its other items went on). ``buffered``: waiting now, and
    ``buffered_bytes`` what their tensors hold (the figure ``max_buffer_bytes`` bounds).
    In a child made by ``fork()`` the counts start at zero: they describe what the child was given.
    """

    sent: int = 0
    dropped: int = 0
    rejected: int = 0
    retried: int = 0
    failed: int = 0
    errored: int = 0
    buffered: int = 0
    buffered_bytes: int = 0


class Counters:
    """The live counts, and their Prometheus mirror ``vai_client_events_total{outcome}`` when given a registry."""

    def __init__(self, registry: Any = None) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._prometheus: Any = None
        if registry is not None:
            from prometheus_client import Counter  # only when asked for: the client needs nothing installed

            self._prometheus = Counter(
                "vai_client_events",
                "Events and labels handed to the vai sidecar client, by what became of them",
                ["outcome"],
                registry=registry,
            )
            for outcome in OUTCOMES:
                self._prometheus.labels(outcome)

    def reset(self) -> None:
        """Zero every count (a forked child's own start); the Prometheus mirror too."""
        self._lock = threading.Lock()  # the parent's may have been held by a thread the child does not have
        self._counts = dict.fromkeys(OUTCOMES, 0)
        if self._prometheus is not None:
            _fresh_locks(self._prometheus)
            self._prometheus.clear()
            for outcome in OUTCOMES:
                self._prometheus.labels(outcome)

    def add(self, outcome: str, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._counts[outcome] += n
        if self._prometheus is not None:
            self._prometheus.labels(outcome).inc(n)

    def get(self, outcome: str) -> int:
        return self._counts[outcome]

    def snapshot(self, buffered: int, buffered_bytes: int) -> ClientStats:
        with self._lock:
            return ClientStats(**self._counts, buffered=buffered, buffered_bytes=buffered_bytes)


def _fresh_locks(counter: Any) -> None:
    """New locks for a Prometheus counter and its children in a forked child: a lock the parent's sender thread
    held at the fork would be held for ever there (prometheus_client keeps them private; best effort)."""
    for metric in (counter, *getattr(counter, "_metrics", {}).values()):
        for owner in (metric, getattr(metric, "_value", None)):
            if owner is not None and hasattr(owner, "_lock"):
                owner._lock = threading.Lock()
