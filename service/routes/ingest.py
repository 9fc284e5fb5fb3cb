"""``POST /v1/events`` as a bare ASGI layer in front of FastAPI's routing.

FastAPI's per-request machinery (route matching, dependency solving, request
and response objects, its own middleware) costs ~140 µs of CPU per request on
our 2-core machine class, about as much as decoding and checking an event of
1,800 numbers. The serving stack waits on this one path, so it is answered
here, before that machinery; every other path goes on to FastAPI. The layer
sits inside Starlette's error middleware: a bug still becomes a logged 500,
and errors keep the one ``VaiError`` shape. ``service.app`` documents the
path in the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from common.errors import (
    Forbidden,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    VaiError,
)
from service.decoding.binary_body import HEADER_LENGTH
from service.decoding.fast_parsing import BracketTally
from service.http.auth import Scope
from service.http.body import BodyCutOff, collect_body
from service.sidecar import Sidecar

INGEST_PATH = "/v1/events"
_JSON = (b"content-type", b"application/json")
_HEADER_LENGTH = HEADER_LENGTH.encode()
_WANTED = (b"authorization", b"content-length", b"content-encoding", _HEADER_LENGTH)
_REFUSED: dict[type[VaiError], str] = {
    MethodNotAllowed: "method_not_allowed",
    Unauthorized: "unauthorized",
    Forbidden: "forbidden",
}
"""``vai_events_rejected_total`` reasons of a request refused before its body is read."""
_BODY_REFUSED: dict[type[VaiError], str] = {
    PayloadTooLarge: "body_too_large",
    RequestTimeout: "body_timeout",
    Overloaded: "body_budget",
}
"""``vai_events_rejected_total`` reasons of a request refused while its body is read (else ``invalid_body``)."""


class IngestRoute:
    """ASGI middleware answering ``INGEST_PATH`` itself and passing everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != INGEST_PATH:
            await self._app(scope, receive, send)
            return
        sidecar: Sidecar = scope["app"].state.sidecar
        headers: dict[str, Any] = {}
        try:
            status, content = 202, await _ingest(sidecar, scope, receive)
        except VaiError as error:
            status, content, headers = error.status, orjson.dumps(error.body()), error.headers or {}
        except _Disconnected:
            return  # nobody is left to answer
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    _JSON,
                    (b"content-length", b"%d" % len(content)),
                    *((name.lower().encode(), value.encode()) for name, value in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


async def _ingest(sidecar: Sidecar, scope: AsgiScope, receive: Receive) -> bytes:
    headers = _headers(scope, _WANTED)
    try:
        if scope["method"] != "POST":
            raise MethodNotAllowed("method: POST only", field="method", headers={"Allow": "POST"})
        sidecar.auth.check(headers.get(b"authorization"), Scope.INGEST)
    except VaiError as error:  # counted too: a fleet sending with a wrong token must show on the dashboard
        sidecar.ingest.reject_body(_REFUSED.get(type(error), "invalid_body"))
        raise
    header_length = headers.get(_HEADER_LENGTH)
    tally = BracketTally() if header_length is None else None
    try:
        body = await collect_body(
            _chunks(receive),
            content_length=headers.get(b"content-length"),
            content_encoding=headers.get(b"content-encoding"),
            limit_bytes=sidecar.settings.max_body_bytes,
            deadlines=sidecar.body_deadlines,
            on_chunk=tally,
        )
    except VaiError as error:
        sidecar.ingest.reject_body(_BODY_REFUSED.get(type(error), "invalid_body"))
        raise
    except _Disconnected:  # the request ends unanswered, but not uncounted
        sidecar.ingest.reject_body("disconnected")
        raise
    except BodyCutOff:  # the server's shutdown closes the connection mid-body: counted as a sender that left is
        sidecar.ingest.reject_body("disconnected")
        raise
    open_brackets = tally.count if tally is not None else None
    try:
        return sidecar.ingest.ingest(body, open_brackets=open_brackets, header_length=header_length).to_json()
    except VaiError:
        raise
    except Exception:  # a bug, answered 500 by InternalErrors: its request still ends in a counter
        sidecar.ingest.reject_body("internal")
        raise


def _headers(scope: AsgiScope, wanted: tuple[bytes, ...]) -> dict[bytes, str]:
    """The ``wanted`` request headers (ASGI gives names lower-cased), decoded as latin-1 like Starlette."""
    return {name: value.decode("latin-1") for name, value in scope["headers"] if name in wanted}


class _Disconnected(Exception):
    """The client went away before its body was read."""


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
