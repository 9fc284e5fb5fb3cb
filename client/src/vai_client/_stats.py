"""What became of the events (and labels) handed to a client, readable as ``client.stats``."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OUTCOMES = ("sent", "dropped", "rejected", "retried", "failed", "errored", "unmatched", "unconfirmed")


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counts of items (events and labels) since the client was made.

    ``sent``: accepted by the sidecar. ``dropped``: the oldest waiting, pushed out of the full buffer
    (or refused by a client already closed). ``rejected``: refused by the sidecar (an invalid event,
    a 4xx other than 408/429, a connection cut off while one event alone was sent, ``server_error_attempts``
    times), or never sent (an item that cannot be encoded, or larger than ``max_request_bytes`` on its own;
    a 413 splits a batch, and only an event refused alone is rejected). ``retried``: items in attempts
    that failed and were tried again (one item retried three times counts three). ``failed``: given
    up unsent when ``close()`` or interpreter exit ran out of time. ``errored``: given up after the sidecar
    answered a server error (a 5xx other than 502/503/504) to it alone ``server_error_attempts`` times (the
    batch it came in was split to isolate it, and its other items went on). ``unmatched``: labels the sidecar took
    but matched to no prediction record (the model is not declared with ``delayed_labels``, the record expired,
    or it was labelled already): lost, not sent. ``unconfirmed``: labels of a batch tried again after an attempt whose
    answer was lost (no answer, a cut-off, a 5xx or a gateway's 502/504) that the sidecar then matched to no prediction
    record: the lost attempt may have joined them (the sidecar recognises a label it joined for ten minutes, after
    that the retry finds no record), or they matched nothing; not known, so neither sent nor lost, and not warned
    about. ``buffered``: waiting now (with a
    batch the asyncio client's sender was cancelled with, sent first by the exit hook), and ``buffered_bytes``
    what the tensors in the buffer hold (the figure ``max_buffer_bytes`` bounds).
    In a child made by ``fork()`` the counts start at zero: they describe what the child was given.
    """

    sent: int = 0
    dropped: int = 0
    rejected: int = 0
    retried: int = 0
    failed: int = 0
    errored: int = 0
    unmatched: int = 0
    unconfirmed: int = 0
    buffered: int = 0
    buffered_bytes: int = 0


class Counters:
    """The live counts, and their Prometheus mirror ``vai_client_events_total{client, outcome}`` when given a registry
    (with the gauges of what waits, ``export_waiting``).

    Several clients may export to one registry, each under its own ``name`` (the ``client`` label of its series):
    they share the one counter, whose series each client creates at zero, and a forked child zeroes again.
    """

    def __init__(self, registry: Any = None, name: str = "default") -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(OUTCOMES, 0)
        self._name = name
        self._export: _Export | None = None
        self._prometheus: Any = None
        if registry is not None:
            self._export = _claim(registry, name, self)
            self._prometheus = self._export.counter
            self._zero()

    def export_waiting(self, stats: Callable[[], ClientStats]) -> None:
        """Export ``buffered`` and ``buffered_bytes`` of ``stats()`` as ``vai_client_buffered{client}`` and
        ``vai_client_buffered_bytes{client}``, read when the registry is collected (0 once the client is gone)."""
        if self._export is None:
            return
        owner = weakref.WeakMethod(stats)  # the registry must not keep the client alive

        def waiting() -> ClientStats:
            read = owner()
            return ClientStats() if read is None else read()

        self._export.buffered.labels(self._name).set_function(lambda: waiting().buffered)
        self._export.buffered_bytes.labels(self._name).set_function(lambda: waiting().buffered_bytes)

    def reset(self) -> None:
        """Zero every count (a forked child's own start); this client's Prometheus series too."""
        self._lock = threading.Lock()  # the parent's may have been held by a thread the child does not have
        self._counts = dict.fromkeys(OUTCOMES, 0)
        if self._prometheus is not None:
            for outcome in OUTCOMES:
                self._prometheus.remove(self._name, outcome)
            self._zero()

    def _zero(self) -> None:
        for outcome in OUTCOMES:
            self._prometheus.labels(self._name, outcome)

    def add(self, outcome: str, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self._counts[outcome] += n
        if self._prometheus is not None:
            self._prometheus.labels(self._name, outcome).inc(n)

    def get(self, outcome: str) -> int:
        return self._counts[outcome]

    def snapshot(self, buffered: int, buffered_bytes: int) -> ClientStats:
        with self._lock:
            return ClientStats(**self._counts, buffered=buffered, buffered_bytes=buffered_bytes)


class _Export:
    """One registry's ``vai_client_events`` counter and ``vai_client_buffered`` gauges, and the clients alive that
    export to them, by name."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge  # only when asked for: the client needs nothing installed

        self.counter = Counter(
            "vai_client_events",
            "Events and labels handed to the vai sidecar client, by client and what became of them",
            ["client", "outcome"],
            registry=registry,
        )
        self.buffered = Gauge(
            "vai_client_buffered", "Events and labels waiting in the vai sidecar client", ["client"], registry=registry
        )
        self.buffered_bytes = Gauge(
            "vai_client_buffered_bytes",
            "Tensor bytes waiting in the vai sidecar client (what max_buffer_bytes bounds)",
            ["client"],
            registry=registry,
        )
        self.clients: weakref.WeakValueDictionary[str, Counters] = weakref.WeakValueDictionary()


_EXPORTS: weakref.WeakKeyDictionary[Any, _Export] = weakref.WeakKeyDictionary()
_EXPORTS_LOCK = threading.Lock()


def _claim(registry: Any, name: str, counters: Counters) -> _Export:
    """The registry's metrics (made by its first client), with ``name`` taken by ``counters`` as long as they live."""
    with _EXPORTS_LOCK:
        export = _EXPORTS.get(registry)
        if export is None:
            export = _EXPORTS[registry] = _Export(registry)
        if export.clients.get(name) is not None:
            raise ValueError(
                f"name: a client named {name!r} already exports to this registry; "
                "give each client on one registry a name of its own (Client(..., name=...))"
            )
        export.clients[name] = counters
        return export


def _fresh_locks() -> None:
    """New locks for every exported metric and its series in a forked child: a lock the parent's threads held
    at the fork would be held for ever there (prometheus_client keeps them private; best effort)."""
    global _EXPORTS_LOCK
    _EXPORTS_LOCK = threading.Lock()
    for export in list(_EXPORTS.values()):
        for family in (export.counter, export.buffered, export.buffered_bytes):
            _fresh_metric_locks(family)


def _fresh_metric_locks(family: Any) -> None:
    for metric in (family, *getattr(family, "_metrics", {}).values()):
        for owner in (metric, getattr(metric, "_value", None)):
            if owner is not None and hasattr(owner, "_lock"):
                owner._lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; registered before any client's own hook, which uses the counters
    os.register_at_fork(after_in_child=_fresh_locks)
