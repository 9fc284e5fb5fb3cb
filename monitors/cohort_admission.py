"""Cohort values admitted once for the whole fleet, in Redis, and cached in every process.

Every process that labels metrics by cohort value (each sidecar's ``vai_cohort_events_total``, the owning
monitor's cohort slices) must agree on which values of a model's key get a label of their own. The
decision is taken once, in Redis, by :data:`_ADMIT` over one set per (model, key)
(``keys.cohort_values``): a member is admitted; else, while the set holds fewer than the cap
(``VAI_MAX_COHORT_VALUES``), the value is added and admitted; else it is refused (``__other__``). First
come, first admitted, atomically. Each answer carries the set's members, so a process learns every value
admitted so far (once the set is full, every value is decided in the process without asking).

The cap is the caller's: every role (sidecars and monitors) must run with the same ``VAI_MAX_COHORT_VALUES``
(and ``VAI_COHORT_KEYS``), or their labels differ: a process with a lower cap than the set's size keeps only
that many of its members and counts the rest as ``__other__``. Such a process logs one warning per (model, key).

A process caches the decisions in its fleet :class:`CohortGuard` (a decided value never changes there, so
the hot path stays a dict lookup). Values the guard has not seen decided are *undecided*: callers hold
what carries them (the :class:`Holder` s), and :meth:`CohortAdmission.settle`, run every ``period_s`` by
a background task, decides them all in one round trip and lets the holders place what they held.

Redis unreachable: a round that fails is retried every ``retry_s``; once rounds have failed for
``give_up_s`` (2 s, or one Redis timeout if that is longer), what is held counts as ``__other__`` and
each round after a failed try does the same, so counting never stops and every event counts once. Such a
value is not decided: it is asked again once Redis answers (a process never shows a value the fleet did
not admit). One warning per outage, one line when Redis answers again.

Each set has a TTL (:data:`TTL_S`, 7 days), refreshed by every round that touches it and, every
``refresh_s`` (an hour), for every set a process has kept values of: it lives while any process uses the
model, and goes a week after the last one stopped. A process sends the values it keeps with each ask: a
set that is missing (Redis restarted empty, or expired) starts from them, not anew.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis

from common import keys
from common.redis import REDIS_FAILED, cancelling, every, execute, queue_script, text
from monitors.cohorts import CohortGuard

log = logging.getLogger(__name__)

PERIOD_S = 0.05
"""How often the undecided values are decided (one round trip for all of them, only when there are any)."""
GIVE_UP_S = 2.0
"""How long undecided values wait for an unreachable Redis before what carries them counts as ``__other__``."""
RETRY_S = 0.5
"""Wait between tries while Redis is unreachable."""
TTL_S = 7 * 24 * 3600
"""TTL of a (model, key)'s set of admitted values, refreshed by every process that uses it."""
REFRESH_S = 3600.0
"""How often a process refreshes the TTL of every set it has kept values of (and restores a missing one)."""

_ADMIT = """
local cap, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local at = 3
local answers = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local seeds = tonumber(ARGV[at])
  if seeds > 0 and redis.call('EXISTS', key) == 0 then
    for j = at + 1, at + seeds do redis.call('SADD', key, ARGV[j]) end
  end
  at = at + seeds + 1
  local asked = tonumber(ARGV[at])
  local size = redis.call('SCARD', key)
  for j = at + 1, at + asked do
    if size < cap and redis.call('SADD', key, ARGV[j]) == 1 then size = size + 1 end
  end
  at = at + asked + 1
  if size > 0 then redis.call('EXPIRE', key, ttl) end
  answers[i] = redis.call('SMEMBERS', key)
end
return answers
"""
"""KEYS: one set per (model, key). ARGV: the cap and the TTL, then per key the count and values of the caller's
kept values (the set starts from them when it is missing) and the count and values asked about, in the order
first seen. Returns each set's members afterwards: every value asked is a member (admitted) or the set is full
(refused)."""


class Holder(Protocol):
    """Something that holds what carries undecided values until they are decided."""

    def release(self, *, give_up: bool) -> None:
        """Place what is held under the labels decided since; with ``give_up``, what is still undecided too,
        under ``__other__``."""


class CohortAdmission:
    """Decides the undecided values of a fleet :class:`CohortGuard` in Redis, for the ``holders``."""

    def __init__(
        self,
        redis: Redis,
        guard: CohortGuard,
        holders: Sequence[Holder],
        *,
        period_s: float = PERIOD_S,
        give_up_s: float = GIVE_UP_S,
        retry_s: float = RETRY_S,
        ttl_s: int = TTL_S,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._guard = guard
        self._holders = tuple(holders)
        self._period_s = period_s
        self._give_up_s = give_up_s
        self._retry_s = retry_s
        self._ttl_s = ttl_s
        self._refresh_s = refresh_s
        self._clock = clock
        self._failing_since: float | None = None
        """When the rounds began failing (``None`` while Redis answers)."""
        self._next_try = 0.0
        self._next_refresh = clock() + refresh_s
        self._overfull: set[tuple[str, str]] = set()
        """(model, key)s whose set was found holding more values than this process's cap (warned once)."""

    async def run(self) -> None:
        """:meth:`settle` every ``period_s`` until cancelled; a round that fails never ends the task."""
        await every(self._period_s, self.settle, what="deciding cohort values")

    async def settle(self) -> None:
        """One round: decide every undecided value (one round trip), then let each holder place what it held."""
        now = self._clock()
        asked: dict[tuple[str, str], list[str]] = dict(self._guard.undecided())
        refresh = now >= self._next_refresh
        if refresh:
            for pair in self._guard.kept():
                asked.setdefault(pair, [])
        if asked and (self._failing_since is None or now >= self._next_try):
            try:
                await self._decide(asked)
            except REDIS_FAILED as error:
                if cancelling():
                    raise
                if self._failing_since is None:
                    self._failing_since = now
                    log.warning(
                        "cohort values wait for redis (%s); after %.1f s they count as __other__ until it answers",
                        type(error).__name__,
                        self._give_up_s,
                    )
                self._next_try = self._clock() + self._retry_s
            else:
                if self._failing_since is not None:
                    log.info("redis answers again: cohort values are decided fleet-wide again")
                self._failing_since = None
                if refresh:
                    self._next_refresh = now + self._refresh_s
        give_up = self._failing_since is not None and self._clock() - self._failing_since >= self._give_up_s
        for holder in self._holders:
            holder.release(give_up=give_up)

    async def load(self, model: str) -> None:
        """Learn the fleet's decisions of every key of ``model`` (one round trip), e.g. before a new owner replays
        its records: the values the previous owner's slices were decided with."""
        if self._guard.keys:
            await self._decide({(model, key): [] for key in self._guard.keys})

    def close(self) -> None:
        """Place everything held, undecided values under ``__other__`` (at shutdown)."""
        for holder in self._holders:
            holder.release(give_up=True)

    async def _decide(self, asked: dict[tuple[str, str], list[str]]) -> None:
        kept = self._guard.kept()
        pairs = list(asked)
        args: list[str | int] = [self._guard.max_values, self._ttl_s]
        for pair in pairs:
            args += _counted(kept.get(pair, []))
            args += _counted(asked[pair])
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, _ADMIT, [keys.cohort_values(model, key) for model, key in pairs], args)
        (answers,) = await execute(pipe)
        members: list[Any]
        for (model, key), members in zip(pairs, answers, strict=True):
            admitted = sorted(text(member) for member in members)
            if len(admitted) > self._guard.max_values and (model, key) not in self._overfull:
                self._overfull.add((model, key))
                log.warning(
                    "the fleet admitted %d values of cohort key %s of model %s, more than VAI_MAX_COHORT_VALUES=%d "
                    "here: this process labels the rest as __other__ where other processes do not; give every role "
                    "the same VAI_MAX_COHORT_VALUES",
                    len(admitted),
                    key,
                    model,
                    self._guard.max_values,
                )
            self._guard.admit(model, key, admitted)


def _counted(values: Iterable[str]) -> list[str | int]:
    found = list(values)
    return [len(found), *found]
