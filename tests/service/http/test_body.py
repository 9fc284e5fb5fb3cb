"""Body reads and their deadlines: one sweep enforces every read's timeout, and only its own cancellations
become 408s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from common.errors import RequestTimeout
from service.http.body import BodyDeadlines, collect_body


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _read(deadlines: BodyDeadlines, chunks: AsyncIterator[bytes]) -> bytes:
    return await collect_body(
        chunks, content_length=None, content_encoding=None, limit_bytes=1_000, deadlines=deadlines
    )


async def _stalled(first: bytes, started: asyncio.Event) -> AsyncIterator[bytes]:
    """A client that sends ``first`` and then nothing more."""
    yield first
    started.set()
    await asyncio.Event().wait()
    yield b"never"


async def _stalled_read(deadlines: BodyDeadlines) -> asyncio.Task[bytes]:
    """A read under way whose client has sent the first byte and then nothing more."""
    started = asyncio.Event()
    read = asyncio.create_task(_read(deadlines, _stalled(b"{", started)))
    await started.wait()
    return read


async def _sent(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


def test_a_read_past_its_deadline_is_a_request_timeout_and_leaves_nothing_behind() -> None:
    async def scenario() -> None:
        clock = _Clock()
        deadlines = BodyDeadlines(2.0, clock=clock)
        read = await _stalled_read(deadlines)
        clock.now += 1.9
        deadlines.sweep()  # not yet
        await asyncio.sleep(0)
        assert not read.done()
        clock.now += 0.2
        deadlines.sweep()
        deadlines.sweep()  # a second sweep before the read ends cancels nothing more
        with pytest.raises(RequestTimeout, match=r"not all received within 2 s"):
            await read
        assert read.cancelling() == 0  # the cancellation is taken back: the request goes on to answer 408
        assert not deadlines._reading and not deadlines._expired

    asyncio.run(scenario())


def test_reads_within_their_deadline_are_whole_and_untouched_by_sweeps() -> None:
    async def scenario() -> None:
        clock = _Clock()
        deadlines = BodyDeadlines(2.0, clock=clock)
        reads = [asyncio.create_task(_read(deadlines, _sent(b'{"a": ', b"%d}" % i))) for i in range(3)]
        deadlines.sweep()
        assert await asyncio.gather(*reads) == [b'{"a": %d}' % i for i in range(3)]
        assert not deadlines._reading

    asyncio.run(scenario())


def test_a_shutdown_that_cancels_a_timed_out_read_is_still_a_cancellation() -> None:
    """As with asyncio.timeout: a cancellation from elsewhere wins over the deadline's."""

    async def scenario() -> None:
        clock = _Clock()
        deadlines = BodyDeadlines(1.0, clock=clock)
        read = await _stalled_read(deadlines)
        clock.now += 5.0
        deadlines.sweep()
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert not deadlines._reading

    asyncio.run(scenario())


def test_the_sweep_runs_often_enough_for_the_timeout() -> None:
    assert BodyDeadlines(60.0).sweep_s == 1.0
    assert BodyDeadlines(0.5).sweep_s == 0.125
