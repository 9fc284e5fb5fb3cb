"""Reading a request body within a size limit, for FastAPI routes and the bare ingest route alike,
and parsing a small JSON body into a pydantic model."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from common.errors import (
    BadRequest,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from common.numbers import ascii_decimal
from service.events.errors import first_problem

M = TypeVar("M", bound=BaseModel)
NOT_UNICODE = "not valid Unicode: invalid UTF-8, or a UTF-16 surrogate escape (\\ud800 to \\udfff) without its pair"
_CLOSE = {"Connection": "close"}
"""On a body left unread: the rest of it would otherwise arrive as the connection's next request, or keep
a client that dribbles it connected."""
LINGER_MIN_BYTES = 64 * 2**20
"""A 413 for a declared length of at most ``max(LINGER_MIN_BYTES, 4 × limit)`` keeps the connection open: the
server (uvicorn on httptools, as ``vai-sidecar serve`` runs it) then discards the rest of the body as it
arrives, without the app reading it, so that a client that writes its whole body before it reads the answer
(``http.client``, ``requests``) gets the 413 instead of a reset (a socket closed with unread data resets the
connection, and the answer with it). A larger declared length, or a chunked body over the limit, closes it."""
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""The only way JSON text spells a lone surrogate (UTF-8 cannot encode one)."""


async def collect_body(
    chunks: AsyncIterator[bytes],
    *,
    content_length: str | None,
    content_encoding: str | None,
    limit_bytes: int,
    deadlines: BodyDeadlines,
    limit_setting: str | None = "VAI_MAX_BODY_BYTES",
    on_chunk: Callable[[bytes], None] | None = None,
) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit_bytes``, with 503 when the
    process's bodies being read would pass ``deadlines.budget`` with it (its declared length at once, a chunked
    body's bytes as they come), and with 408 when it has not all arrived within ``deadlines.timeout_s`` (a
    client that stops half-way would hold its connection, and a graceful shutdown, for as long as it likes).

    A read cancelled otherwise (a shutdown) raises :class:`BodyCutOff`, still a cancellation. The body's share of
    the budget is given back however the read ends.
    ``limit_setting`` names the setting behind the limit in the error (``None``: a fixed limit).
    ``on_chunk`` sees every chunk as it arrives, while it is still in the CPU cache.
    """
    declared = None if content_length is None else ascii_decimal(content_length, max_digits=30)
    if content_length is not None and (declared is None or declared > limit_bytes):
        raise (
            _too_large(limit_bytes, limit_setting, declared=declared)
            if declared is not None
            else BadRequest("content-length: not a number", field="content-length")
        )
    encoding = (content_encoding or "identity").lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"content-encoding: {encoding!r} is not supported; send plain JSON", field="content-encoding"
        )
    budget = deadlines.budget
    parts: list[bytes] = []
    size = held = 0
    task = deadlines.enter()
    try:
        held = budget.take(declared or 0, declared=declared, limit_bytes=limit_bytes)  # refused: nothing held
        async for chunk in chunks:
            size += len(chunk)
            if size > held:  # a chunked body (a declared one never passes its length: the server frames it)
                if size > limit_bytes:
                    raise _too_large(limit_bytes, limit_setting)
                held += budget.take(size - held, declared=None, limit_bytes=limit_bytes)
            parts.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    except asyncio.CancelledError:
        if deadlines.timed_out(task):
            raise RequestTimeout(
                f"body: not all received within {deadlines.timeout_s:g} s (VAI_BODY_TIMEOUT_S)",
                field="body",
                headers=_CLOSE,
            ) from None
        _SERVER_LOG.addFilter(_QUIET_CUT_OFFS)  # once: a logger holds a filter once
        raise BodyCutOff(f"body: cut off after {size} bytes: its request was cancelled (a shutdown)") from None
    finally:
        budget.give_back(held)
        deadlines.leave(task)
    return b"".join(parts)


class BodyBudget:
    """The bytes of request bodies being read by the whole process, within ``max_pending_bytes``
    (``VAI_MAX_PENDING_BODY_BYTES``; ``None``: no limit).

    Each read may hold up to its route's limit for up to ``VAI_BODY_TIMEOUT_S``, and nothing else bounds how many
    connections do so at once: 60 connections each sending 8 MiB less a byte took a sidecar from 132 to 580 MB,
    held until they closed. A read takes its declared length before its first byte (a chunked one, its bytes as
    they come) and gives it back when it ends, however it ends (:func:`collect_body`'s ``finally``); past the budget
    it is answered 503 with ``Retry-After`` (:class:`Overloaded`). An integer add and compare per read.
    """

    RETRY_AFTER_S = 1
    """Bodies in flight normally last milliseconds; a client told to wait longer would lose its events for nothing."""

    def __init__(self, max_pending_bytes: int | None) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._room = sys.maxsize if max_pending_bytes is None else max_pending_bytes
        self.pending_bytes = 0
        """Bytes held now by the reads under way."""

    def take(self, size: int, *, declared: int | None, limit_bytes: int) -> int:
        """Hold ``size`` more bytes (returned), or raise :class:`Overloaded` holding nothing more. ``declared``:
        the body's declared length (``None``: chunked), which decides whether the 503 keeps the connection, as
        a 413 does (:data:`LINGER_MIN_BYTES`)."""
        if self.pending_bytes + size > self._room:
            lingers = declared is not None and declared <= max(LINGER_MIN_BYTES, 4 * limit_bytes)
            raise Overloaded(
                f"body: this sidecar is reading as many request bodies as it may hold at once ({self._room} "
                "bytes, VAI_MAX_PENDING_BODY_BYTES); send it again after Retry-After seconds",
                field="body",
                headers={"Retry-After": str(self.RETRY_AFTER_S)} | ({} if lingers else _CLOSE),
            )
        self.pending_bytes += size
        return size

    def give_back(self, size: int) -> None:
        self.pending_bytes -= size


class BodyCutOff(asyncio.CancelledError):
    """The request was cancelled while its body was still arriving: by the server, when its graceful shutdown
    ran out (uvicorn cancels the requests still open then). It is still the cancellation, raised on, never
    swallowed; a kind of its own so that the route can count the request that ends here, and so that the
    server's log leaves out the traceback it writes for every exception out of the app, a cancellation
    included ("Exception in ASGI application" and ~35 lines per open request: noise on every rollout).
    The server's own line ("Cancel N running task(s), timeout graceful shutdown exceeded") still says it."""


class _QuietCutOffs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None or not isinstance(record.exc_info[1], BodyCutOff)


_SERVER_LOG = logging.getLogger("uvicorn.error")
"""Where uvicorn logs an exception out of the app. Its filter is added at the first cut-off, just before the
server logs it: nothing to set up at start-up, however the app is served."""
_QUIET_CUT_OFFS = _QuietCutOffs()


class BodyDeadlines:
    """The body reads in progress and their deadlines, enforced by one sweep every ``sweep_s`` (:meth:`run`).

    ``asyncio.timeout`` arms a loop timer per read, ~5 µs of CPU on uvloop: a few percent of a single-event
    request, the path a serving stack that posts per prediction waits on. Here a read costs a dict entry;
    the sweep cancels a read past its deadline, which then raises ``RequestTimeout`` (up to ``sweep_s``
    late). A read whose task is cancelled for another reason too (a shutdown) is cancelled, as with
    ``asyncio.timeout`` (:class:`BodyCutOff`). The same reads share :attr:`budget` of bytes held.
    """

    def __init__(
        self,
        timeout_s: float,
        *,
        max_pending_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.budget = BodyBudget(max_pending_bytes)
        """The bytes every read under way holds, within ``max_pending_bytes``: held here so that every route that
        reads a body within a deadline reads it within the budget too."""
        self.sweep_s = min(1.0, timeout_s / 4)
        self._clock = clock
        self._reading: dict[asyncio.Task[Any], tuple[float, int]] = {}
        """Each read's task: its deadline and how many cancellations it already had when the read began."""
        self._expired: set[asyncio.Task[Any]] = set()

    def enter(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a body is read inside a task")
        self._reading[task] = (self._clock() + self.timeout_s, task.cancelling())
        return task

    def leave(self, task: asyncio.Task[Any]) -> None:
        del self._reading[task]
        self._expired.discard(task)

    def timed_out(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task``'s cancellation, caught inside its read, is the sweep's and nobody else's."""
        if task not in self._expired:
            return False
        return task.uncancel() <= self._reading[task][1]

    def sweep(self) -> None:
        """Cancel the reads past their deadline (each once)."""
        now = self._clock()
        for task, (deadline, _) in list(self._reading.items()):  # a copy: nothing a cancel sets off can change it
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            self.sweep()


def _too_large(limit_bytes: int, limit_setting: str | None, *, declared: int | None = None) -> PayloadTooLarge:
    where = f" ({limit_setting})" if limit_setting else ""
    lingers = declared is not None and declared <= max(LINGER_MIN_BYTES, 4 * limit_bytes)
    return PayloadTooLarge(
        f"body: larger than {limit_bytes} bytes{where}", field="body", headers=None if lingers else _CLOSE
    )


def parse_json(body: bytes, model: type[M], *, text_checked_by_model: bool = False) -> M:
    """``body`` as ``model``; 422 naming the field at fault.

    The standard library's reader accepts ``NaN`` and ``Infinity`` tokens and reads ``1e400`` as
    infinity, so a non-finite number is refused by the model against its own field, not as "not JSON".
    ``text_checked_by_model``: invalid UTF-8 and lone surrogates are left in the document (as lone
    surrogates) for the model's consumer to refuse item by item (:func:`not_unicode_at`), instead of
    refusing the whole body.
    """
    try:
        document = lenient_json(body)[0] if text_checked_by_model else json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"body: not valid JSON ({error})", field="body") from None
    if not text_checked_by_model:
        refuse_lone_surrogates(body, document)
    try:
        return model.model_validate(document)
    except ValidationError as error:
        field, message = first_problem(error)
        raise InvalidInput(message, field=field) from None


def lenient_json(text: bytes) -> tuple[Any, bool]:
    """``text`` read by the standard library's JSON reader, which reads ``NaN`` and ``Infinity`` tokens (so the
    field holding one can be named), with invalid UTF-8 read as lone surrogates: the string holding it, not the
    whole body, is then refused (:func:`not_unicode_at`). Also whether all its text is surely Unicode (no
    invalid UTF-8, no surrogate escape), when no string needs that check. Raises ``ValueError`` or
    ``RecursionError``."""
    try:
        return json.loads(text), _SURROGATE_ESCAPE.search(text) is None
    except UnicodeDecodeError:
        return json.loads(text.decode("utf-8", "surrogateescape")), False


def refuse_lone_surrogates(text: bytes, document: Any) -> None:
    """422 naming the first key or string of ``document`` (read from ``text`` by the standard library's
    JSON reader) that is not Unicode; a scan of ``text`` for a surrogate escape first, so most bodies cost
    no walk."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return
    try:
        where = not_unicode_at(document)
    except RecursionError:
        raise InvalidInput("body: nested too deeply", field="body") from None
    if where is not None:
        field = ".".join(str(part) for part in where) or "body"
        raise InvalidInput(f"{field}: {NOT_UNICODE}", field=field)


def is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8. The standard library's JSON reader (the one that reads
    ``NaN``) lets a lone surrogate escape such as ``"\\ud800"`` through, and every writer after it refuses it."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode written as a backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode()


def not_unicode_at(value: Any) -> list[str | int] | None:
    """Where the first key or string of a parsed JSON ``value`` is not Unicode (see :func:`is_unicode`):
    its path of keys and indices, ``[]`` for ``value`` itself; ``None`` when all are."""
    if isinstance(value, str):
        return None if is_unicode(value) else []
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and not is_unicode(key):
            return [printable(key)]
        found = not_unicode_at(item)
        if found is not None:
            return [key, *found]
    return None
