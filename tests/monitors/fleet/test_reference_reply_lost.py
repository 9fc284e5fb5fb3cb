"""A reference's write whose answer is lost with its connection (real Redis behind a proxy that closes the
client's end at ``EXEC``): Redis may have applied it, so the write is confirmed by reading the id back, or left
unconfirmed; only a Redis that cannot be reached before anything is sent is a plain failure (nothing stored)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from common import keys
from common.embedded_redis import free_port
from common.redis import connect
from monitors.drift.reference import Reference
from monitors.fleet.references import ReferenceStore, WriteUnconfirmed

pytestmark = pytest.mark.anyio
_EXEC = b"\r\nEXEC\r\n"


class ReplyLosingProxy:
    """Relays connections to Redis. On the one that sends ``EXEC``: with ``apply``, relays it and, once Redis has
    answered it (so the transaction ran), closes the client's end instead of relaying the answer; without, closes
    both ends before Redis sees it (the transaction is discarded)."""

    def __init__(self, redis_port: int, *, apply: bool) -> None:
        self._redis_port = redis_port
        self._apply = apply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.lost = threading.Event()
        """An ``EXEC`` met (and, with ``apply``, answered by Redis) and its answer withheld."""
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self._redis_port))
            self._sockets += [client, upstream]
            sent = threading.Event()
            self._start(self._up, client, upstream, sent)
            self._start(self._down, client, upstream, sent)

    def _up(self, client: socket.socket, upstream: socket.socket, sent: threading.Event) -> None:
        """Client to Redis."""
        try:
            while data := client.recv(65536):
                if _EXEC in data and not self._apply:
                    _shut(client, upstream)
                    self.lost.set()
                    return
                if _EXEC in data:
                    sent.set()  # before Redis can answer it
                upstream.sendall(data)
        except OSError:
            pass
        _shut(upstream)

    def _down(self, client: socket.socket, upstream: socket.socket, sent: threading.Event) -> None:
        """Redis to client; after an ``EXEC``, withheld until its answer (an array) has come, then dropped."""
        withheld = b""
        try:
            while data := upstream.recv(65536):
                if not sent.is_set():
                    client.sendall(data)
                    continue
                withheld += data
                if b"*" in withheld:  # MULTI and each queued command answer +OK/+QUEUED; EXEC, an array
                    _shut(client)
                    self.lost.set()
                    return
        except OSError:
            pass
        _shut(client)

    def close(self) -> None:
        _shut(self._listener, *self._sockets)  # wakes the threads blocked on them
        self._listener.close()
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(5)


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def proxied(redis_url: str, *, apply: bool) -> Iterator[tuple[str, ReplyLosingProxy]]:
    parts = urlsplit(redis_url)
    proxy = ReplyLosingProxy(int(parts.port or 6379), apply=apply)
    try:
        yield f"redis://127.0.0.1:{proxy.port}{parts.path}", proxy
    finally:
        proxy.close()


def _reference() -> Reference:
    embeddings = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    return Reference(
        predicted=np.zeros(50, dtype=np.int64), confidence=np.ones(50), embeddings=embeddings, has_outputs=False
    )


def _stored_id(client: redis.Redis) -> Any:
    return client.hget(keys.drift_reference("digits"), "id")


async def test_a_write_redis_applied_whose_answer_was_lost_is_confirmed_by_its_id(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Answered ``503`` (nothing stored: send it again) before, a resend stored a second upload (another id and a
    recalibration); the id read back shows it was stored."""
    with proxied(redis_url, apply=True) as (url, proxy):
        client = connect(url, timeout_s=2.0)
        try:
            reference_id = await ReferenceStore(client).put("digits", _reference())
        finally:
            await client.aclose()
        assert proxy.lost.is_set(), "the answer to EXEC was withheld"
    assert _stored_id(redis_client) == reference_id.encode()


async def test_a_write_whose_answer_was_lost_and_not_applied_is_unconfirmed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with proxied(redis_url, apply=False) as (url, proxy):
        client = connect(url, timeout_s=2.0)
        try:
            with pytest.raises(WriteUnconfirmed) as unconfirmed:
                await ReferenceStore(client).put("digits", _reference())
        finally:
            await client.aclose()
        assert proxy.lost.is_set()
    assert len(unconfirmed.value.id) == 32
    assert _stored_id(redis_client) is None


async def test_a_redis_not_reached_before_the_write_is_a_plain_failure() -> None:
    """Nothing was sent: the caller's ``503`` (send it again) is right."""
    with closing(socket.socket()) as unused:  # nothing listens on the port
        unused.bind(("127.0.0.1", free_port()))
        port = unused.getsockname()[1]
        client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
        try:
            with pytest.raises(RedisConnectionError):
                await ReferenceStore(client).put("digits", _reference())
        finally:
            await client.aclose()
