"""``HEAD`` on every ``GET`` route: uptime checkers and load balancers probe with it, and FastAPI's routes answer
only the methods they declare (405 otherwise)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` request is served as the ``GET`` of the same path, its status and headers
    (``content-length`` included) answered and its body left out, as RFC 9110 asks."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self._app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self._app({**scope, "method": "GET"}, receive, headers_only)
