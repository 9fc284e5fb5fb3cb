"""A token bucket: at most ``rate`` admissions per second, bursts up to one second's worth."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rate = rate_per_s
        self._tokens = self.capacity
        self._stamp = clock()

    @property
    def capacity(self) -> float:
        return max(1.0, self._rate) if self._rate > 0 else 0.0

    def set_rate(self, rate_per_s: float) -> None:
        """Change the rate, keeping the tokens saved so far (capped to the new capacity)."""
        self._refill()
        self._rate = rate_per_s
        self._tokens = min(self._tokens, self.capacity)

    def take(self) -> bool:
        """Spend one token if there is one."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
