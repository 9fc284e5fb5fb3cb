"""Getting one batch to the sidecar: the HTTP call, and what to do with each answer.

``BatchDelivery`` is a plain state machine shared by the threaded and the asyncio client: ask it
for the next body, post it however you like, tell it what came back, and sleep for the delay it
returns. It splits on 413, backs off on errors, honours ``Retry-After``, and counts every item once.

An outage (no answer, 408, 429, 503, or a gateway's 502/504) is waited out for as long as the client is open.
Any other 5xx may be the fault of one event in the batch (a sidecar bug it triggers): the batch is split in
halves to isolate it, and one event alone is given up after ``server_error_attempts`` (counted as ``errored``),
so it cannot hold back every later batch.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import random
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from vai_client._encoding import join_batch
from vai_client._stats import Counters

log = logging.getLogger("vai_client")

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
"""Answers tried again, unchanged, for as long as the client is open: a timeout, a sidecar asking to slow down or
unavailable, a gateway that could not reach it. Other 5xx split the batch (see ``BatchDelivery``)."""
TRANSIENT_ERRORS = (OSError, TimeoutError, http.client.HTTPException)
"""What a failed attempt may raise: refused, reset, timed out, or a broken answer."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Transport:
    """One keep-alive HTTP connection to the sidecar, used by one thread at a time."""

    def __init__(self, url: str, *, token: str | None, timeout_s: float) -> None:
        self._url = url
        self._token = token
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected http(s)://host[:port], got {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def clone(self) -> Transport:
        """The same sidecar on a connection of its own."""
        return Transport(self._url, token=self._token, timeout_s=self.timeout_s)

    def attempt_timeout_s(self, remaining_s: float | None) -> float:
        """The timeout of one attempt: ``timeout_s``, or less when a deadline is that close."""
        return self.timeout_s if remaining_s is None else max(0.001, min(self.timeout_s, remaining_s))

    def post(self, path: str, body: bytes, *, timeout_s: float | None = None) -> Response:
        """POST ``body``; raises one of ``TRANSIENT_ERRORS`` when no answer came back."""
        connection = self._connect(timeout_s or self.timeout_s)
        try:
            connection.request("POST", self._prefix + path, body=body, headers=self._headers)
            answer = connection.getresponse()
            payload = answer.read()
        except BaseException:
            self.close()
            raise
        if answer.will_close:
            self.close()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, payload)

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=ssl.create_default_context()
                )
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            self._connection.connect()
            self._connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        elif self._connection.sock is not None:
            self._connection.sock.settimeout(timeout_s)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff_base_s: float = 0.05
    """First delay after a failed attempt; doubled each time."""
    backoff_max_s: float = 5.0
    """Cap of the doubling (the sender keeps trying at this pace while the sidecar stays away)."""
    retry_after_max_s: float = 60.0
    """Cap of a sidecar's ``Retry-After``."""
    server_error_attempts: int = 5
    """Attempts one event gets alone when the sidecar answers a 5xx other than 502/503/504 (a batch that gets one
    is split in halves first, to find the event at fault); then it is given up, counted as ``errored``."""

    def __post_init__(self) -> None:
        if self.server_error_attempts < 1:
            raise ValueError(f"server_error_attempts: at least 1, not {self.server_error_attempts}")

    def backoff_s(self, failures: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(failures - 1, 30))
        return float(ceiling * random.uniform(0.5, 1.0))

    def retry_after_s(self, value: str | None, failures: int) -> float:
        """The wait before the next attempt: the backoff, or longer when the sidecar's ``Retry-After`` asks for it.

        A ``Retry-After`` of 0, a date in the past or an unreadable value never shortens the backoff
        (a sidecar answering ``Retry-After: 0`` would otherwise be hammered); it is capped at ``retry_after_max_s``.
        """
        backoff = self.backoff_s(failures)
        if value is None:
            return backoff
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                seconds = 0.0
        if math.isnan(seconds):
            seconds = 0.0
        return max(backoff, min(seconds, self.retry_after_max_s))


class RefusalLog:
    """Warnings about refused items, at most one per kind and status every ``interval_s``, with a count of the rest.

    One event after another refused (a 413 for each event too large, a wrong token for each batch)
    would otherwise write a warning per item or per batch.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, int], float] = {}
        self._quiet: dict[tuple[str, int], int] = {}

    def refused(self, kind: str, status: int, count: int, body: bytes) -> None:
        key = (kind, status)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._quiet[key] = self._quiet.get(key, 0) + count
            log.debug("vai sidecar refused %d %s with %d: %s", count, kind, status, body[:300])
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        more = f" (and {quiet} more since the last such warning)" if quiet else ""
        log.warning("vai sidecar refused %d %s with %d%s: %s", count, kind, status, more, body[:300])


@dataclass(slots=True)
class Chunk:
    """Part of a batch posted as one request; the batch itself until an answer splits it."""

    items: list[bytes]
    retried: bool = False
    """Already sent once (a 5xx or no answer): a duplicate refusal means an earlier attempt delivered it."""
    server_errors: int = 0
    """5xx answers (other than 502/503/504) to this chunk alone."""


class BatchDelivery:
    """One batch of encoded items on its way: ``next_body()`` → post → ``record*()`` → sleep, until done.

    The chunks go out in order, so what is delivered keeps the order it was logged in.
    """

    def __init__(
        self, kind: str, items: list[bytes], counters: Counters, policy: RetryPolicy, refusals: RefusalLog
    ) -> None:
        self.kind = kind  # "events" or "labels"
        self.path = f"/v1/{kind}"
        self._pending: deque[Chunk] = deque([Chunk(items)])
        self._counters = counters
        self._policy = policy
        self._refusals = refusals
        self._failures = 0

    @property
    def done(self) -> bool:
        return not self._pending

    @property
    def left(self) -> int:
        """Items not settled yet."""
        return sum(len(chunk.items) for chunk in self._pending)

    def next_body(self) -> bytes:
        return join_batch(self.kind, self._pending[0].items)

    def record_error(self, error: BaseException) -> float:
        """No answer (refused, reset, timed out): retry the same chunk after a backoff."""
        log.debug("vai sidecar unreachable (%s); retrying", error)
        return self._retry(self._policy.backoff_s(self._failures + 1))

    def record_response(self, response: Response) -> float:
        """Settle the current chunk from the sidecar's answer; the delay before the next attempt."""
        status = response.status
        chunk = self._pending[0]
        size = len(chunk.items)
        if 200 <= status < 300:
            self._pending.popleft()
            self._settle(size, self._rejected_in(response.body, size, chunk.retried))
            return 0.0
        if status == 413 and size > 1:
            self._split(retried=chunk.retried)
            return 0.0
        if status in RETRY_STATUSES:
            return self._retry(self._policy.retry_after_s(response.headers.get("retry-after"), self._failures + 1))
        if status >= 500:
            return self._server_error(response)
        self._pending.popleft()
        arrived = self._arrived_before(response.body, chunk.retried) if status == 422 else 0
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

    def _retry(self, delay_s: float) -> float:
        self._failures += 1
        chunk = self._pending[0]
        chunk.retried = True
        self._counters.add("retried", len(chunk.items))
        return delay_s

    def _split(self, *, retried: bool) -> None:
        """The current chunk in two halves, in order, at the front."""
        items = self._pending.popleft().items
        half = len(items) // 2
        self._pending.extendleft([Chunk(items[half:], retried), Chunk(items[:half], retried)])

    def _server_error(self, response: Response) -> float:
        """A 5xx that is not an outage may be one event's fault: split the chunk to find it, retry one event alone
        after a backoff, and give it up (counted as errored) after ``server_error_attempts``."""
        chunk = self._pending[0]
        if len(chunk.items) > 1:
            self._counters.add("retried", len(chunk.items))
            self._split(retried=True)
            self._failures += 1  # backed off as any failure: a sidecar failing every request is not hammered
            return self._policy.backoff_s(self._failures)
        chunk.server_errors += 1
        if chunk.server_errors < self._policy.server_error_attempts:
            return self._retry(self._policy.retry_after_s(response.headers.get("retry-after"), self._failures + 1))
        self._pending.popleft()
        self._counters.add("errored", 1)
        self._refusals.refused(self.kind, response.status, 1, response.body)
        return 0.0

    def _settle(self, size: int, rejected: int) -> None:
        self._counters.add("sent", size - rejected)
        self._counters.add("rejected", rejected)
        self._failures = 0

    def _rejected_in(self, body: bytes, size: int, retried: bool) -> int:
        """Items of a 2xx answer the sidecar refused (``rejected`` entries); duplicates of a retried
        chunk are not counted: they are this chunk's own events, which arrived before an answer was lost."""
        try:
            answer: Any = json.loads(body)
        except ValueError:
            return 0
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        if not isinstance(rejected, list):
            return 0
        if retried:
            rejected = [item for item in rejected if not _is_duplicate(item)]
        return min(len(rejected), size)

    def _arrived_before(self, body: bytes, retried: bool) -> int:
        """Items of a retried chunk refused only as duplicates: an earlier attempt delivered them."""
        if not retried:
            return 0
        try:
            answer: Any = json.loads(body)
        except ValueError:
            return 0
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        return sum(map(_is_duplicate, rejected)) if isinstance(rejected, list) else 0


def _is_duplicate(item: Any) -> bool:
    return isinstance(item, dict) and "duplicate" in str(item.get("error", "")).lower()
