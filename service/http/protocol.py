"""uvicorn's httptools protocol with bounds on a request's head, which uvicorn does not set.

uvicorn on httptools keeps every header line of a request however many there are and however long the client
takes to send them, all before any route (or its token check) runs: one connection sending 1,000 MB of
headers took a sidecar from 122 MB to 1.1 GB resident, and 2,000 connections each sending a header line every
15 s were all still open two minutes later (uvicorn's keep-alive timeout starts only after a first response).
:class:`BoundedHttpToolsProtocol` answers

- **431** (``{"error", "field": "headers"}``, connection closed) once the head of a request (request line and
  headers) has passed :data:`MAX_HEAD_BYTES` bytes, or its headers :data:`MAX_HEADERS`; the bytes are counted as
  they arrive, so at most one read past the bound is ever held;
- **408** (same shape, closed) when the head has not arrived in full :data:`HEAD_TIMEOUT_S` after the connection
  was made or after the request's first byte (a keep-alive connection idle between requests is uvicorn's
  ``timeout_keep_alive``).

A body answered before it arrived in full (a ``413`` that keeps the connection, so that the client reads it rather
than a reset) is read and dropped for at most :data:`BODY_LINGER_S` more: each byte restarted uvicorn's keep-alive
timer, and a client sending one byte every few seconds held the connection for as long as it liked.

The body is bounded by the routes (``VAI_MAX_BODY_BYTES``, ``VAI_BODY_TIMEOUT_S``). Nothing here runs per event:
a few additions per read of a request's head.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
"""Most bytes of a request's line and headers (nginx's default large_client_header_buffers hold 4 x 8 KiB)."""
MAX_HEADERS = 100
"""Most header lines of a request (the figure h2 and Go's servers use)."""
HEAD_TIMEOUT_S = 10.0
"""Longest a request's head may take to arrive in full."""
BODY_LINGER_S = 60.0
"""Longest the rest of a body answered early is read and dropped (``VAI_BODY_TIMEOUT_S``'s default)."""
LINGER_S = 2.0
"""How long a refused connection still reads (and drops) what the client sends before it is closed: closed at
once with unread data, the kernel resets it, and the client loses the answer with it."""

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``http=`` of uvicorn's config for the sidecar (``vai-sidecar serve``, the demo)."""

    head_timeout_s = HEAD_TIMEOUT_S
    max_head_bytes = MAX_HEAD_BYTES
    max_headers = MAX_HEADERS
    body_linger_s = BODY_LINGER_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        """Between a request's first byte (or the connection's start) and the end of its headers."""
        self._head_bytes = 0
        """Bytes received since the head began (whole reads: a read that ends the head may carry body too)."""
        self._parsed_bytes = 0
        """Bytes of the request line and headers as parsed (exact once the head is complete)."""
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._body_linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_linger()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering: dropped unread
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and not self._refused and not self.transport.is_closing():
            self._check_head(self._head_bytes)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request of a keep-alive connection: its first byte has just arrived
            self._start_head()

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._parsed_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """A head that arrived in one read is checked here, on its exact size, before the request goes on."""
        if self._refused or self._check_head(self._parsed_bytes):
            return
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._stop_body_linger()
        if not self._refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            self._body_linger = self.loop.call_later(self.body_linger_s, self.transport.close)

    def _stop_body_linger(self) -> None:
        if self._body_linger is not None:
            self._body_linger.cancel()
            self._body_linger = None

    def _check_head(self, size: int) -> bool:
        """Refuse the request if its head is past a bound; whether it was."""
        if size > self.max_head_bytes:
            self._refuse(431, f"headers: the request's line and headers exceed {self.max_head_bytes} bytes")
        elif self._header_count > self.max_headers:
            self._refuse(431, f"headers: more than {self.max_headers} header lines")
        return self._refused

    def _start_head(self) -> None:
        self._in_head, self._head_bytes, self._parsed_bytes, self._header_count = True, 0, 0, 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, f"headers: not received in full within {self.head_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` in the error shape of every other refusal and close: the rest of the head is not
        parsed. The answer is followed by the end of our side of the stream, and what the client still sends is
        read and dropped for :data:`LINGER_S` before the connection is closed."""
        self._stop_head_timer()
        self._refused = True
        body = json.dumps({"error": message, "field": "headers"}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)
