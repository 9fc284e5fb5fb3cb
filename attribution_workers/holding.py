"""Keeping the entries a worker is working on from looking idle to the rest of the fleet.

``XAUTOCLAIM`` hands any entry idle for ``retry_after_ms`` to the worker that asks, and Redis measures idleness
from the entry's last delivery. So a batch that ran longer than that (30 s by default, against a 120 s job
timeout), and the entries waiting behind it in the same step, were taken over while still in hand: explained
twice, and each takeover counted a delivery, so a healthy slow batch could reach ``max_deliveries`` and be
dead-lettered. While a step works, :class:`EntryKeeper` re-takes the entries it holds every third of
``retry_after_ms`` (:meth:`~attribution_workers.consumer.GroupConsumer.refresh`: ``XCLAIM … JUSTID`` to the same
consumer, which restarts the idle time and counts no delivery, and only for entries still pending on it).

The refreshing stops ``job_timeout_s`` after the latest piece of work began (:meth:`EntryKeeper.working`). A
batch that hangs past its deadline ends the process (:mod:`attribution_workers.bounded`); were the process to
linger, its entries must still come back to the fleet ``retry_after_ms`` later, as they did before, and nothing
may keep them alive for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable

from attribution_workers.consumer import Delivery, GroupConsumer
from common.redis import REDIS_FAILED, every

log = logging.getLogger(__name__)

MIN_REFRESH_S = 0.01
"""Fastest refresh: a ``retry_after_ms`` of a few milliseconds (tests) must not spin the event loop."""


class EntryKeeper:
    """The entries one worker holds in the current step, by stream, and the deadline of the work on them."""

    def __init__(
        self,
        consumer: GroupConsumer,
        *,
        retry_after_ms: int,
        job_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self.every_s = max(retry_after_ms / 3000, MIN_REFRESH_S)
        self._job_timeout_s = job_timeout_s
        self._clock = clock
        self._held: dict[str, set[bytes]] = {}
        self._until = 0.0
        """Refresh only before this (``clock``): ``job_timeout_s`` after :meth:`working` was last called."""

    def hold(self, stream: str, deliveries: Iterable[Delivery]) -> None:
        """Keep ``deliveries`` (those still in the stream) until released or the step ends."""
        self._held.setdefault(stream, set()).update(d.entry_id for d in deliveries if d.fields is not None)

    def release(self, stream: str, deliveries: Iterable[Delivery]) -> None:
        """``deliveries`` are settled, or left pending for a retry: their idle time runs again from now."""
        held = self._held.get(stream)
        if held is not None:
            held.difference_update(d.entry_id for d in deliveries)

    def working(self) -> None:
        """A piece of work bounded by ``job_timeout_s`` begins: refresh until its deadline, no longer."""
        self._until = self._clock() + self._job_timeout_s

    @property
    def held(self) -> dict[str, frozenset[bytes]]:
        return {stream: frozenset(ids) for stream, ids in self._held.items() if ids}

    @contextlib.asynccontextmanager
    async def keeping(self) -> AsyncIterator[None]:
        """Refresh what is held while the block runs; after it nothing is held and nothing refreshed."""
        task = asyncio.create_task(every(self.every_s, self.refresh_due, what="keeping entries"), name="keep")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._held.clear()
            self._until = 0.0

    async def refresh_due(self) -> int:
        """Refresh the held entries, unless the deadline of the work on them has passed; returns how many were.
        Redis failing is the work loop's to report: the entries' idle time then simply runs on."""
        if self._clock() >= self._until:
            return 0
        kept = 0
        for stream, ids in self.held.items():
            try:
                kept += await self._consumer.refresh(stream, sorted(ids))
            except REDIS_FAILED as error:
                log.debug("%s: held entries not refreshed: %s: %s", stream, type(error).__name__, error)
        return kept
