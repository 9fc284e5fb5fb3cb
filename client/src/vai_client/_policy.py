"""How long to wait between attempts (``RetryPolicy``), and how often to warn about refused items (``RefusalLog``)."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

log = logging.getLogger("vai_client")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff_base_s: float = 0.05
    """First delay after a failed attempt; doubled each time."""
    backoff_max_s: float = 5.0
    """Cap of the doubling (the sender keeps trying at this pace while the sidecar stays away)."""
    retry_after_max_s: float = 60.0
    """Cap of a sidecar's ``Retry-After``."""
    server_error_attempts: int = 5
    """Attempts one event gets alone when the sidecar answers a 5xx other than 502/503/504 (then it is given up,
    counted as ``errored``), or resets a connection opened for it while it is sent (then it is counted as
    ``rejected``). A batch that gets either is split in halves first, to find the event at fault."""

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
    """Warnings about refused items, at most one per kind and reason every ``interval_s``, with a count of the rest.

    One event after another refused (a 413 for each event too large, a wrong token for each batch)
    would otherwise write a warning per item or per batch.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, int | str], float] = {}
        self._quiet: dict[tuple[str, int | str], int] = {}

    def refused(self, kind: str, status: int, count: int, body: bytes) -> None:
        """The sidecar answered ``status`` refusing ``count`` items."""
        self.warn((kind, status), count, f"vai sidecar refused {count} {kind} with {status}: {body[:300]!r}")

    def warn(self, key: tuple[str, int | str], count: int, message: str) -> None:
        """Log ``message`` (about ``count`` items refused for the reason ``key``) as a warning, or at debug level
        with its count kept for the next warning when one of the same key was logged less than ``interval_s`` ago."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._quiet[key] = self._quiet.get(key, 0) + count
            log.debug("%s", message)
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        more = f" (and {quiet} more since the last such warning)" if quiet else ""
        log.warning("%s%s", message, more)
