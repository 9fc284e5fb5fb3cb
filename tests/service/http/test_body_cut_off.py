"""A request whose body is still arriving when the server's graceful shutdown runs out: uvicorn cancels it. It stays
a cancellation, the ingest request still ends in one counter, and the log has uvicorn's one line for it, not a
traceback per open request."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from common.embedded_redis import free_port
from helpers import wait_until
from service.http.body import BodyCutOff, BodyDeadlines, collect_body

REPO = Path(__file__).parents[3]
_SERVER = """
import signal, sys
import uvicorn
from prometheus_client import CollectorRegistry
from service.app import create_app
from service.settings import SidecarSettings

def stop(signum, frame):
    raise SystemExit(0)

signal.signal(signal.SIGTERM, stop)  # as serve does: uvicorn raises the signal again once it has shut down
registry = CollectorRegistry()
try:
    uvicorn.run(
        create_app(SidecarSettings(), registry=registry),
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
finally:
    counted = registry.get_sample_value("vai_events_rejected_total", {"reason": "disconnected"})
    unmapped = {"model": "__unmapped__", "outcome": "disconnected"}
    cloudevents = registry.get_sample_value("vai_kserve_events_total", unmapped)
    print(f"disconnected={counted} cloudevents={cloudevents}", flush=True)
"""
"""The app under uvicorn as ``vai-sidecar serve`` runs it (uvloop, httptools), with a 1 s graceful shutdown instead
of serve's 10 s, printing the ingest counter once the server has stopped."""
_HALF_SENT = [
    b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    b'{"model": "digits", "request_id": "cut"',
    b"PUT /v1/models/digits/reference HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"embeddings": [[0.1, ',
    b"POST /v1/labels HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    b'{"labels": [',
    b"POST /v1/cloudevents HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
    b"ce-specversion: 1.0\r\nce-id: cut\r\nce-type: org.kubeflow.serving.inference.response\r\n\r\n"
    b'{"predictions": [',
]
"""Events, a reference, labels and a CloudEvent (the routes that read a body), each declaring 1,000 bytes and sending
a few."""


def test_bodies_cut_off_by_a_shutdown_are_counted_and_leave_no_traceback(redis_url: str) -> None:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("VAI_")}
    env |= {"PYTHONPATH": str(REPO), "VAI_REDIS_URL": redis_url}
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    connections: list[socket.socket] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{base}/livez", server), timeout_s=60, what="the sidecar to answer /livez")
        for request in _HALF_SENT:
            connection = socket.create_connection(("127.0.0.1", port))
            connection.sendall(request)
            connections.append(connection)
        assert _answers(f"{base}/livez", server)  # accepted after the four, from the same queue: they are in
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=30)
    finally:
        for connection in connections:
            connection.close()
        if server.poll() is None:
            server.kill()
            server.wait()
    log = stderr.decode()
    assert server.returncode == 0, log
    assert "Cancel 4 running task(s)" in log, log  # all four were still reading their body when it ran out
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    # The ingest request and the CloudEvent, each in the counter of a sender that left.
    assert stdout.decode().split() == ["disconnected=1.0", "cloudevents=1.0"]


def _answers(url: str, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        pytest.fail(f"the sidecar exited with {server.returncode}")
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _stalled() -> AsyncIterator[bytes]:
    yield b"{"
    await asyncio.Event().wait()
    yield b"never"


def test_a_read_cancelled_mid_body_stays_a_cancellation_and_only_its_traceback_is_left_out() -> None:
    seen: list[BaseException] = []

    async def read() -> bytes:
        try:
            return await collect_body(
                _stalled(), content_length=None, content_encoding=None, limit_bytes=100, deadlines=BodyDeadlines(60)
            )
        except BaseException as error:
            seen.append(error)
            raise

    async def scenario() -> asyncio.Task[bytes]:
        task = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        task.cancel("shutting down")
        await asyncio.gather(task, return_exceptions=True)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled()  # never swallowed: the task ends cancelled
    assert [type(error) for error in seen] == [BodyCutOff]
    assert isinstance(seen[0], asyncio.CancelledError)

    handler = _Kept()
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(handler)
    try:
        server_log.error("Exception in ASGI application\n", exc_info=seen[0])
        server_log.error("Exception in ASGI application\n", exc_info=RuntimeError("a bug"))
    finally:
        server_log.removeHandler(handler)
    assert [str(record.exc_info and record.exc_info[1]) for record in handler.records] == ["a bug"]


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
