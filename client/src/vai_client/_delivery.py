"""Getting one batch to the sidecar: what to do with each answer (the HTTP call itself is ``_transport``).

``BatchDelivery`` is a plain state machine shared by the threaded and the asyncio client: ask it
for the next body, post it however you like, tell it what came back, and sleep for the delay it
returns. It cuts the batch into requests of at most ``max_request_bytes``, splits on 413, backs off
on errors, honours ``Retry-After``, and counts every item once.

An outage (no answer, 408, 429, 503, or a gateway's 502/504) is waited out for as long as the client is open.
Any other 5xx may be the fault of one event in the batch (a sidecar bug it triggers): the batch is split in
halves to isolate it, and one event alone is given up after ``server_error_attempts`` (counted as ``errored``),
so it cannot hold back every later batch. A connection opened for a request and reset while it is sent
(``CutOff``: a sidecar or proxy refusing a body too large without reading it) is taken as a 413 that could
not be read: the batch is split, and one event alone is given up after ``server_error_attempts`` (``rejected``).
A label the sidecar took but matched to no prediction record (``unmatched`` in its answer) is lost: it is counted
as ``unmatched``, not ``sent``. Unless an earlier attempt at it may have been applied with its answer lost (no answer,
a cut-off, a 5xx or a gateway's 502/504): a sidecar answers a label it joined already ``matched`` for ten minutes
after (a ``duplicate``), but past that, or from an earlier release, the retry is answered ``unmatched`` either way.
Such a label is counted as ``unconfirmed`` and not warned about, as the duplicates a retried batch of events comes
back with are counted as sent.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from vai_client._encoding import join_batch, runs_within
from vai_client._policy import RefusalLog, RetryPolicy
from vai_client._stats import Counters
from vai_client._transport import CutOff, Response

log = logging.getLogger("vai_client")

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
"""Answers tried again, unchanged, for as long as the client is open: a timeout, a sidecar asking to slow down or
unavailable, a gateway that could not reach it. Other 5xx split the batch (see ``BatchDelivery``)."""


@dataclass(slots=True)
class Chunk:
    """Part of a batch posted as one request; a run of the batch until an answer splits it."""

    items: list[bytes]
    retried: bool = False
    """Already sent once (a 5xx or no answer): a duplicate refusal means an earlier attempt delivered it."""
    maybe_applied: bool = False
    """An earlier attempt may have been applied without its answer reaching us (no answer, a cut-off, a 5xx or a
    gateway's 502/504; not an answered 408, 413, 429 or 503, which apply nothing): the sidecar may have joined its
    labels, so those it now matches to nothing are ``unconfirmed``, not lost."""
    faults: int = 0
    """5xx answers (other than 502/503/504) and cut-off connections to this chunk alone."""


class BatchDelivery:
    """One batch of encoded items on its way: ``next_body()`` → post → ``record*()`` → sleep, until done.

    The chunks go out in order, so what is delivered keeps the order it was logged in. Each is at most
    ``max_request_bytes`` as a body; an item larger than that on its own is counted as rejected, never sent.
    """

    def __init__(
        self,
        kind: str,
        items: list[bytes],
        counters: Counters,
        policy: RetryPolicy,
        refusals: RefusalLog,
        *,
        max_request_bytes: int,
    ) -> None:
        self.kind = kind  # "events" or "labels"
        self.path = f"/v1/{kind}"
        runs, oversized = runs_within(kind, items, max_request_bytes)
        self._pending: deque[Chunk] = deque(Chunk(run) for run in runs)
        self._counters = counters
        self._policy = policy
        self._refusals = refusals
        self._failures = 0
        self._in_flight = False
        if oversized:
            counters.add("rejected", len(oversized))
            refusals.warn(
                (kind, "max_request_bytes"),
                len(oversized),
                f"vai client rejected {len(oversized)} {kind} larger than max_request_bytes={max_request_bytes} "
                f"on their own (encoded as up to {max(oversized)} bytes); not sent",
            )

    @property
    def done(self) -> bool:
        return not self._pending

    @property
    def left(self) -> int:
        """Items not settled yet."""
        return sum(len(chunk.items) for chunk in self._pending)

    def next_body(self) -> bytes:
        """The body of the next attempt, which is in flight until its outcome is recorded."""
        self._in_flight = True
        return join_batch(self.kind, self._pending[0].items)

    def interrupted(self) -> None:
        """The sender stopped (cancelled) without the outcome of its attempt: that chunk may have arrived."""
        if self._in_flight and self._pending:
            self._pending[0].retried = self._pending[0].maybe_applied = True
        self._in_flight = False

    def record_error(self, error: BaseException) -> float:
        """No answer: retry the same chunk after a backoff (refused, reset on a reused connection, timed out),
        or take a cut-off connection as a 413 that could not be read."""
        self._in_flight = False
        if isinstance(error, CutOff):
            log.debug("vai sidecar cut the connection off while a request was sent (%s)", error)
            return self._cut_off(error)
        log.debug("vai sidecar unreachable (%s); retrying", error)
        return self._retry(self._policy.backoff_s(self._failures + 1), lost=True)

    def record_response(self, response: Response) -> float:
        """Settle the current chunk from the sidecar's answer; the delay before the next attempt."""
        self._in_flight = False
        status = response.status
        chunk = self._pending[0]
        size = len(chunk.items)
        if 200 <= status < 300:
            self._pending.popleft()
            answer = _answer(response.body)
            unmatched = self._unmatched(chunk, answer) if self.kind == "labels" else 0
            rejected = rejected_in(answer, size - unmatched, chunk.retried)
            self._settle(size, rejected, unmatched, unconfirmed=chunk.maybe_applied)
            return 0.0
        if status == 413 and size > 1:
            self._split()
            return 0.0
        if status in RETRY_STATUSES:
            delay_s = self._policy.retry_after_s(response.headers.get("retry-after"), self._failures + 1)
            return self._retry(delay_s, lost=status in (502, 504))  # a gateway's: the sidecar may have applied it
        if status >= 500:
            return self._server_error(response)
        self._pending.popleft()
        arrived = arrived_before(_answer(response.body)) if status == 422 and chunk.retried else 0
        if arrived < size:
            self._refusals.refused(self.kind, status, size - arrived, response.body)
        self._settle(size, size - arrived)
        return 0.0

    def abandon(self) -> int:
        """Give up what is left (out of time): counted as failed."""
        left = self.left
        self._pending.clear()
        self._counters.add("failed", left)
        return left

    def _retry(self, delay_s: float, *, lost: bool) -> float:
        """The current chunk again after ``delay_s``; ``lost``: this attempt may have been applied unanswered."""
        self._failures += 1
        chunk = self._pending[0]
        chunk.retried = True
        chunk.maybe_applied |= lost
        self._counters.add("retried", len(chunk.items))
        return delay_s

    def _split(self, *, lost: bool = False) -> None:
        """The current chunk in two halves, in order, at the front, each as sent before (``lost``: and after an
        attempt that may have been applied unanswered)."""
        chunk = self._pending.popleft()
        items, retried, maybe_applied = chunk.items, chunk.retried or lost, chunk.maybe_applied or lost
        half = len(items) // 2
        self._pending.extendleft(
            [Chunk(items[half:], retried, maybe_applied), Chunk(items[:half], retried, maybe_applied)]
        )

    def _server_error(self, response: Response) -> float:
        """A 5xx that is not an outage may be one event's fault: given up alone, it is counted as errored."""
        delay_s = self._fault(response.headers.get("retry-after"))
        if delay_s is not None:
            return delay_s
        self._counters.add("errored", 1)
        self._refusals.refused(self.kind, response.status, 1, response.body)
        return 0.0

    def _cut_off(self, error: BaseException) -> float:
        """A connection reset while a request was sent: most likely a body over the sidecar's limit, refused
        without being read (its 413 lost). Given up alone, the event is counted as rejected, as after a 413."""
        delay_s = self._fault(None)
        if delay_s is not None:
            return delay_s
        self._counters.add("rejected", 1)
        self._refusals.warn(
            (self.kind, "cut-off"),
            1,
            f"vai sidecar refused 1 {self.kind} by cutting the connection off while it was sent, "
            f"{self._policy.server_error_attempts} times ({error}); a body over its VAI_MAX_BODY_BYTES? "
            "keep the client's max_request_bytes at most that",
        )
        return 0.0

    def _fault(self, retry_after: str | None) -> float | None:
        """A failure that may be one item's fault: the chunk split in halves to find it, or the one item retried
        after a backoff; None when that item is out of its ``server_error_attempts`` (removed, for the caller to count).
        """
        chunk = self._pending[0]
        if len(chunk.items) > 1:
            self._counters.add("retried", len(chunk.items))
            self._split(lost=True)
            self._failures += 1  # backed off as any failure: a sidecar failing every request is not hammered
            return self._policy.backoff_s(self._failures)
        chunk.faults += 1
        if chunk.faults < self._policy.server_error_attempts:
            return self._retry(self._policy.retry_after_s(retry_after, self._failures + 1), lost=True)
        self._pending.popleft()
        return None

    def _unmatched(self, chunk: Chunk, answer: dict[str, Any]) -> int:
        """Labels of a 2xx answer the sidecar matched to no prediction record (``unmatched`` entries): lost for good,
        and warned about at most once a minute per model, with the fix; unless an earlier attempt at ``chunk`` may
        have joined them (``maybe_applied``): then nothing says they are lost, and nothing is warned."""
        items = chunk.items
        unmatched = _entries(answer, "unmatched")[: len(items)]
        if chunk.maybe_applied:
            return len(unmatched)
        for model, count in Counter(_label_model(items, entry) for entry in unmatched).items():
            self._refusals.warn(
                ("unmatched", model),
                count,
                f"vai sidecar matched no prediction to {count} labels of model {model!r}; they are lost (counted as "
                "unmatched). The sidecar keeps a model's predictions for labels only once it is declared with "
                f"[models.{model}] delayed_labels = true in its config (or VAI_LABEL_RECORDS=all), or after the "
                "first label it gets; else the prediction expired (VAI_PREDICTION_TTL_S) or was labelled already",
            )
        return len(unmatched)

    def _settle(self, size: int, rejected: int, unmatched: int = 0, *, unconfirmed: bool = False) -> None:
        """Count a settled chunk: ``unmatched`` labels as ``unconfirmed`` when an earlier attempt may have joined
        them."""
        self._counters.add("sent", size - rejected - unmatched)
        self._counters.add("rejected", rejected)
        self._counters.add("unconfirmed" if unconfirmed else "unmatched", unmatched)
        self._failures = 0


def rejected_in(answer: dict[str, Any], size: int, retried: bool) -> int:
    """Items of a 2xx answer the sidecar refused (``rejected`` entries), at most ``size``; duplicates of a retried
    chunk are not counted: they are this chunk's own events, which arrived before an answer was lost."""
    rejected = _entries(answer, "rejected")
    if retried:
        rejected = [item for item in rejected if not _is_duplicate(item)]
    return min(len(rejected), size)


def arrived_before(answer: dict[str, Any]) -> int:
    """Items of a retried chunk refused only as duplicates: an earlier attempt delivered them."""
    return sum(map(_is_duplicate, _entries(answer, "rejected")))


def _answer(body: bytes) -> dict[str, Any]:
    """The sidecar's JSON answer; empty when it is not a JSON object."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _entries(answer: dict[str, Any], key: str) -> list[Any]:
    entries = answer.get(key)
    return entries if isinstance(entries, list) else []


def _label_model(items: list[bytes], entry: Any) -> str:
    """The model of the label (one of ``items``, as encoded) an answer's entry names by its ``index``."""
    index = entry.get("index") if isinstance(entry, dict) else None
    if type(index) is not int or not 0 <= index < len(items):
        return "?"
    return str(json.loads(items[index]).get("model"))


def _is_duplicate(item: Any) -> bool:
    return isinstance(item, dict) and "duplicate" in str(item.get("error", "")).lower()
