"""Loopback servers for the client tests: a scripted HTTP sidecar stand-in and a hung one; caller-side timing."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

INGEST_TOKEN = "client-test-ingest"
READ_TOKEN = "client-test-read"
"""Tokens of the real sidecar the tests start."""

Answer = tuple[int, dict[str, str], dict[str, Any]]
"""Status, headers, JSON body."""


def accept_all(path: str, document: dict[str, Any]) -> Answer:
    items = document.get("events") or document.get("labels") or []
    return 202, {}, {"accepted": len(items), "rejected": [], "sampled": []}


class ScriptedServer:
    """A real HTTP server on loopback: records each POST (time, path, JSON) and answers with ``respond``."""

    def __init__(self, respond: Callable[[str, dict[str, Any]], Answer] = accept_all) -> None:
        self.respond = respond
        self.requests: list[tuple[float, str, dict[str, Any], dict[str, str]]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                document = json.loads(body)
                with outer._lock:
                    outer.requests.append((time.monotonic(), self.path, document, dict(self.headers)))
                status, headers, answer = outer.respond(self.path, document)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def items(self, path: str = "/v1/events") -> list[dict[str, Any]]:
        """Every event (or label) received at ``path``, in arrival order (answered or not)."""
        with self._lock:
            key = path.rsplit("/", 1)[-1]
            return [item for _, p, document, _ in self.requests if p == path for item in document[key]]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class HungServer:
    """Accepts connections and never answers (nor reads): a sidecar stuck in a GC pause or a dead proxy."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._socket.settimeout(0.05)
        while not self._stop:
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        for connection in self.accepted:
            connection.close()
        self._socket.close()


def failing_first(
    times: int, status: int, headers: dict[str, str] | None = None
) -> Callable[[str, dict[str, Any]], Answer]:
    """Answer ``status`` (with ``headers``) to the first ``times`` requests, then accept everything."""
    calls = {"n": 0}
    lock = threading.Lock()

    def respond(path: str, document: dict[str, Any]) -> Answer:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n <= times:
            return status, headers or {}, {"error": "not now", "field": "body"}
        return accept_all(path, document)

    return respond


@contextmanager
def scripted(respond: Callable[[str, dict[str, Any]], Answer] = accept_all) -> Iterator[ScriptedServer]:
    server = ScriptedServer(respond)
    try:
        yield server
    finally:
        server.close()


def timed_logs(client: Any, n: int, *, model: str = "m", start: int = 0, **fields: Any) -> list[float]:
    """Call ``client.log`` n times; each call's duration in seconds (caller's view)."""
    durations = []
    logits = fields.pop("logits", [2.0, 1.0, 0.5])
    for i in range(start, start + n):
        began = time.perf_counter()
        client.log(model=model, request_id=f"{model}-{i}", logits=logits, **fields)
        durations.append(time.perf_counter() - began)
    return durations


def report(case: str, durations: list[float]) -> str:
    """Print caller-side p50/p99/max of ``log()`` for the test output (measured, never asserted)."""
    ordered = sorted(durations)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    line = (
        f"[vai_client] {case}: log() n={len(ordered)} p50={statistics.median(ordered) * 1e6:.1f} us "
        f"p99={p99 * 1e6:.1f} us max={ordered[-1] * 1e6:.1f} us"
    )
    print(line)
    return line
