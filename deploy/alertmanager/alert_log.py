"""A webhook receiver for Alertmanager that prints every notification it gets, one line per alert.

The compose stack's stand-in for a pager: ``docker compose logs -f alert-log`` shows alerts firing
and resolving. Standard library only (it runs in the plain ``python:3.11-slim`` image)::

    python alert_log.py [--port 9099]

It answers ``POST /<receiver>`` with 200 and ``GET /healthz`` with 200 (the health check).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def lines(receiver: str, notification: dict[str, Any]) -> list[str]:
    """One line per alert of an Alertmanager webhook notification (version 4)."""
    out = []
    for alert in notification.get("alerts", []):
        labels = dict(alert.get("labels", {}))
        name = labels.pop("alertname", "?")
        severity = labels.pop("severity", "?")
        shown = " ".join(f"{key}={value}" for key, value in sorted(labels.items()))
        summary = alert.get("annotations", {}).get("summary", "")
        status = str(alert.get("status", notification.get("status", "?"))).upper()
        out.append(f"[{receiver}] {status} {severity} {name} {shown} :: {summary}".rstrip(" :"))
    return out


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(200 if self.path == "/healthz" else 404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            notification = json.loads(self.rfile.read(length))
        except ValueError:
            self._answer(400)
            return
        for line in lines(self.path.strip("/") or "default", notification):
            print(line, flush=True)
        self._answer(200)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the alerts are the log
        return None

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print Alertmanager webhook notifications.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9099)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    # PID 1 in a container gets no default SIGTERM action: exit on it explicitly.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"alert-log listening on {args.host}:{server.server_port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
