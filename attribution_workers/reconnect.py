"""Riding out Redis outages: capped exponential backoff with jitter, logged once per outage."""

from __future__ import annotations

import logging
import random
import time

from prometheus_client import Gauge

log = logging.getLogger(__name__)


class Backoff:
    """Delays of ``initial_s`` doubling up to ``max_s``, each drawn from [half, all] of its step (jitter),
    so workers that lost the same Redis do not all come back in the same instant."""

    def __init__(self, *, initial_s: float = 0.1, max_s: float = 5.0, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("backoff needs 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._step_s = initial_s

    def next_delay_s(self) -> float:
        step, self._step_s = self._step_s, min(self._step_s * 2, self.max_s)
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        self._step_s = self.initial_s


class RedisOutage:
    """Tracks whether Redis answers: one warning when it stops, one line when it is back, a gauge."""

    def __init__(self, up: Gauge | None = None, *, backoff: Backoff | None = None) -> None:
        self._up = up
        self._backoff = backoff or Backoff()
        self._since: float | None = None
        self._retries = 0

    @property
    def down(self) -> bool:
        """Whether the last Redis call failed (and none has succeeded since)."""
        return self._since is not None

    def failed(self, error: BaseException) -> float:
        """Note a failed Redis call; returns how long to wait before the next try."""
        if self._since is None:
            self._since = time.monotonic()
            self._retries = 0
            log.warning(
                "Redis unavailable (%s: %s); retrying with backoff up to %.0f s",
                type(error).__name__,
                error,
                self._backoff.max_s,
            )
        else:
            log.debug("Redis still unavailable: %s: %s", type(error).__name__, error)
        self._retries += 1
        if self._up is not None:
            self._up.set(0)
        return self._backoff.next_delay_s()

    def succeeded(self) -> None:
        """Note a successful Redis round trip."""
        if self._since is not None:
            log.info("Redis reachable again after %.1f s (%d retries)", time.monotonic() - self._since, self._retries)
            self._since = None
            self._backoff.reset()
        if self._up is not None:
            self._up.set(1)
