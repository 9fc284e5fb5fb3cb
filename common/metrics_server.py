"""The ``/metrics`` server of the monitor and the worker: prometheus_client's, bounded.

prometheus_client's ``start_http_server`` gives every connection a thread of its own and never times one out: 400
idle connections to a monitor's port held 400 threads (~36 MB) for as long as their clients liked. Here a
connection gets :data:`TIMEOUT_S` for each read and write, and at most :data:`MAX_CONNECTIONS` are served at once;
one more is closed unanswered (Prometheus scrapes with one connection per target).
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

TIMEOUT_S = 10.0
"""Longest one read or write of a connection may wait."""
MAX_CONNECTIONS = 16
"""Connections served at once."""


class _Handler(WSGIRequestHandler):
    timeout = TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: a scrape every few seconds is not news."""


class _BoundedServer(ThreadingWSGIServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # closed unanswered: the others keep their threads
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def start_metrics_server(port: int, *, host: str, registry: Collector) -> ThreadingWSGIServer:
    """Serve ``registry`` at ``/metrics`` (any path, as prometheus_client does) on ``host``:``port`` from a daemon
    thread. Raises ``OSError`` when the port cannot be bound."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class _Server(_BoundedServer):
        address_family = family  # IPv6 hosts too

    server = make_server(str(address[0]), port, make_wsgi_app(registry), _Server, handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
