"""One keep-alive HTTP connection to the sidecar, and what an attempt may raise instead of an answer."""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit


class CutOff(ConnectionError):
    """The connection, opened for this request, was reset or closed before an answer came.

    What a sidecar (or a proxy) refusing a body too large looks like from here when it answers 413 and closes
    without reading the body: the client, still sending, gets a reset or a broken pipe instead of the 413.
    A keep-alive connection the sidecar closed while it was idle fails the same way, so a connection used
    before never raises this (the plain error is raised, and the attempt made again on a fresh connection).
    """


TRANSIENT_ERRORS = (OSError, TimeoutError, http.client.HTTPException)
"""What a failed attempt may raise: refused, reset (``CutOff`` among them), timed out, or a broken answer."""
_RESETS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
"""Errors of a connection the peer dropped (``http.client.RemoteDisconnected`` is a ``ConnectionResetError``)."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Transport:
    """One keep-alive HTTP connection to the sidecar, used by one thread at a time."""

    def __init__(self, url: str, *, token: str | None, timeout_s: float) -> None:
        self._url = url
        self._token = token
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected http(s)://host[:port], got {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def clone(self) -> Transport:
        """The same sidecar on a connection of its own."""
        return Transport(self._url, token=self._token, timeout_s=self.timeout_s)

    def attempt_timeout_s(self, remaining_s: float | None) -> float:
        """The timeout of one attempt: ``timeout_s``, or less when a deadline is that close."""
        return self.timeout_s if remaining_s is None else max(0.001, min(self.timeout_s, remaining_s))

    def post(self, path: str, body: bytes, *, timeout_s: float | None = None) -> Response:
        """POST ``body``; raises one of ``TRANSIENT_ERRORS`` when no answer came back (``CutOff`` when a
        connection opened for this request was reset or closed before the answer)."""
        fresh = self._connection is None
        connection = self._connect(timeout_s or self.timeout_s)
        try:
            connection.request("POST", self._prefix + path, body=body, headers=self._headers)
            answer = connection.getresponse()
            payload = answer.read()
        except _RESETS as error:
            self.close()
            if fresh:
                raise CutOff(f"{type(error).__name__} on a new connection, before an answer: {error}") from error
            raise
        except BaseException:
            self.close()
            raise
        if answer.will_close:
            self.close()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, payload)

    def _connect(self, timeout_s: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout_s, context=ssl.create_default_context()
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout_s)
            connection.connect()  # refused or timed out: raised as it is, with no connection kept
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connection = connection
        elif self._connection.sock is not None:
            self._connection.sock.settimeout(timeout_s)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
