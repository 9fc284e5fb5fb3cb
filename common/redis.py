"""Redis clients with short, explicit timeouts and no hidden retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, overload

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)


def connect(url: str, *, timeout_s: float, max_connections: int = 32) -> Redis:
    """An asyncio client whose every call gives up after ``timeout_s``.

    redis-py's defaults would retry with backoff and wait seconds per call,
    holding a caller for a minute while Redis is down; we would rather know
    at once and let the caller buffer. When all ``max_connections`` are in use,
    a call waits for one (within ``timeout_s``) instead of failing at once, as
    redis-py's plain pool does.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return Redis.from_pool(pool)


REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
"""Redis did not answer: down, unreachable or hung past the socket timeout."""
REDIS_FAILED: tuple[type[BaseException], ...] = (RedisError, OSError)
"""Any failure of a Redis call, including refusals such as ``OOM`` under ``noeviction``."""


async def execute(pipe: Pipeline, *, raise_on_error: bool = True) -> list[Any]:
    """Run a pipeline and always give its connection back.

    When a pipelined call fails, times out or is cancelled, redis-py keeps the connection on the
    pipeline object, and warns "Unclosed client session" when the pipeline is collected; every
    pipeline of ours runs through here instead of ``pipe.execute()``.
    """
    try:
        return await pipe.execute(raise_on_error=raise_on_error)
    finally:
        await pipe.reset()  # type: ignore[no-untyped-call]


def queue_script(pipe: Pipeline, script: str, keys: Sequence[str], args: Sequence[bytes | str | int | float]) -> None:
    """Queue a Lua ``script`` on ``pipe`` as ``EVAL``, so the pipeline stays one round trip.

    redis-py's ``Script`` on a pipeline sends ``SCRIPT EXISTS`` in a round trip of its own before every
    execution; ``EVAL`` carries the text, which Redis compiles once and caches by its SHA1 (so a Redis
    that restarted empty needs nothing loaded either).
    """
    pipe.eval(script, len(keys), *keys, *args)


def cancelling() -> bool:
    """Whether the current task has been asked to stop. redis-py on Python 3.11 can swallow a cancellation
    (its ``asyncio.wait_for`` returns the result when the write finished as the cancel came) or turn one into
    a ``ConnectionError``, so a loop that calls Redis checks this after each round instead of trusting the
    ``CancelledError`` to reach it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def every(period_s: float, action: Callable[[], Awaitable[object]], *, what: str) -> None:
    """Run ``action`` every ``period_s`` (after a first wait) until the task is cancelled; a round that fails is
    logged (``what`` names it) and never ends the loop, which outlives any one failure."""
    while not cancelling():  # a cancel that redis-py swallowed still stops the loop
        await asyncio.sleep(period_s)
        try:
            await action()
        except Exception:
            if cancelling():
                break
            log.exception("%s failed", what)


async def rounds(
    step: Callable[[], Awaitable[None]], *, period_s: float = 0.0, what: str, stopping: Callable[[], bool]
) -> None:
    """Run ``step`` at once, then every ``period_s`` (``0``: back to back), until ``stopping()`` or the task is
    cancelled, riding out failures: a Redis failure is logged once until a round succeeds again (``what`` names the
    loop) and retried after 0.5 s, any other failure logged each time and retried after 1 s. A cancellation can
    reach the loop disguised (redis-py turns one inside its own timeout into ``TimeoutError``) or swallowed, so the
    loop also checks, and ends by raising ``CancelledError``.

    Unlike :func:`every` (wait first, every failure logged and waited out by the period): a loop of an owner that
    reads or publishes as soon as it starts, and must neither spin nor flood the log while Redis is down."""
    failing = False
    while not stopping():
        try:
            await step()
        except REDIS_FAILED as error:
            if stopping() or cancelling():
                raise asyncio.CancelledError from error
            if not failing:
                log.warning("%s: redis failed (%s: %s); retrying", what, type(error).__name__, error)
            failing = True
            await asyncio.sleep(0.5)
            continue
        except Exception:
            log.exception("%s: %s failed", what, getattr(step, "__name__", step))
            await asyncio.sleep(1.0)
            continue
        if stopping() or cancelling():
            raise asyncio.CancelledError
        if failing:
            log.info("%s: redis is back", what)
        failing = False
        if period_s:
            await asyncio.sleep(period_s)


def stream_entry_time_s(entry_id: bytes | str) -> float:
    """When Redis wrote a stream entry, epoch seconds on Redis's clock: the first part of an id ``XADD *`` gave
    (``<milliseconds>-<sequence>``)."""
    return int(text(entry_id).split("-", 1)[0]) / 1000


@overload
def text(value: bytes | str) -> str: ...
@overload
def text(value: bytes | str | None) -> str | None: ...
def text(value: bytes | str | None) -> str | None:
    """A reply of a client without ``decode_responses`` as text (``None`` stays ``None``)."""
    return value.decode() if isinstance(value, bytes) else value
