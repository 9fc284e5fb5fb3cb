"""A bug answers 500 in the error shape and leaves the connection open for the client's next request."""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

log = logging.getLogger("service.app")

_BODY = orjson.dumps({"error": "internal error; see the sidecar's log", "field": None})
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BODY))]


class InternalErrors:
    """ASGI middleware, outermost of ours: an exception no handler took is logged with its traceback and answered
    500. Starlette's own last-resort handler answers too, then raises again for the server to log, and uvicorn
    closes the connection after an exception, so a keep-alive client's next request on it (a health check, the
    next batch) failed with it. An exception after the answer began cannot be answered: it goes on up, and the
    connection closes, as it must (the client has half an answer)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._app(scope, receive, watched)
        except Exception:
            if started:
                raise
            log.exception("%s %s: internal error (answered 500)", scope.get("method"), scope.get("path"))
            await send({"type": "http.response.start", "status": 500, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
