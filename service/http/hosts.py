"""With auth off, only requests addressed to a loopback name are answered.

A sidecar without tokens binds loopback only (``SidecarSettings.open_without_auth``), and that alone does not keep
out a web page its user visits: by DNS rebinding, the page's own name comes to resolve to 127.0.0.1, and the browser
then sends the page's requests to the sidecar as requests of the page's own origin, free to read the answers. They
carry the page's name as ``Host``; no loopback name can be rebound so. Tokens stop these requests when auth is on
(the page has none), so the check runs only while auth is off (``service.app`` leaves the middleware out otherwise)
and Host is free then: a Service or an ingress reaches a sidecar by any name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from common.errors import Forbidden, VaiError

Refused = Callable[[AsgiScope, VaiError], None]
"""Counts a refused request as its route counts its own refusals."""


def loopback_host(host: str, *, server: str | None = None) -> bool:
    """Whether ``host``, a ``Host`` header (a name, an IPv4 address or a bracketed IPv6 one, with or without a port),
    names a loopback address (``localhost``, 127.0.0.0/8 or ``[::1]``) or ``server``, the ASGI scope's own host: an
    HTTP server puts there the address the connection was accepted on, which no page can rebind (Starlette's test
    client puts its ``testserver``)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        name, rest = host[1:end], host[end + 1 :]
    else:
        name = host.partition(":")[0]
        rest = host[len(name) :]
    if rest and not (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit()):
        return False
    name = name.lower()
    if name == "localhost" or (server is not None and name == server.lower()):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _loopback_origin(origin: str, *, server: str | None) -> bool:
    """Whether ``origin``, an ``Origin`` header, is a page served from a loopback address (the viewer's own). A page
    of any other site may send a "simple" cross-origin POST (``text/plain``, no preflight) to 127.0.0.1: its Host is
    loopback, its Origin is not. ``null`` (a sandboxed frame, a file) is no loopback page either."""
    scheme, separator, host = origin.partition("://")
    return bool(separator) and scheme in ("http", "https") and "/" not in host and loopback_host(host, server=server)


class LoopbackHostOnly:
    """ASGI middleware refusing (403, ``field`` ``host``) every request whose ``Host`` header names no loopback
    address, or whose ``Origin`` is a page of another address. A request without ``Host`` passes: browsers always
    send one, and an HTTP/1.0 probe may not; one without ``Origin`` too (browsers send it on every cross-origin
    request)."""

    def __init__(self, app: ASGIApp, *, refused: Refused | None = None) -> None:
        self._app = app
        self._refused = refused

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            address = None if server is None else str(server[0])
            for name, value in scope["headers"]:
                if (name == b"host" and not loopback_host(value.decode("latin-1"), server=address)) or (
                    name == b"origin" and not _loopback_origin(value.decode("latin-1"), server=address)
                ):
                    await self._refuse(scope, send)
                    return
        await self._app(scope, receive, send)

    async def _refuse(self, scope: AsgiScope, send: Send) -> None:
        error = Forbidden(
            "host: with auth off (no VAI_INGEST_TOKENS, VAI_READ_TOKENS or VAI_ADMIN_TOKENS) the sidecar answers only "
            "requests addressed to localhost, 127.0.0.0/8 or [::1] (Host), and from no page of another address "
            "(Origin), so that no web page can reach it: send Host as one of those, or set tokens",
            field="host",
        )
        if self._refused is not None:
            self._refused(scope, error)
        body = orjson.dumps(error.body())
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers += [(name.lower().encode(), value.encode()) for name, value in (error.headers or {}).items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
