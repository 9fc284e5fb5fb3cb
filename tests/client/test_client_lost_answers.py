"""Labels whose answer was lost: the sidecar joined them, the answer never came back (a reset, a timeout), and the
retry finds their records gone and answers ``unmatched``. Those are ``unconfirmed`` (maybe joined), not lost, and
not warned about; labels unmatched at their first attempt, or after an answer that applied nothing (503), are."""

from __future__ import annotations

import http.client
import json
import logging
import select
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from client_servers import INGEST_TOKEN
from vai_client import Client, RetryPolicy

from common import keys
from helpers import wait_until

FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)
TIMEOUT_S = 0.5
"""The client's per-attempt timeout; a held answer outlasts it."""


class _Handler(BaseHTTPRequestHandler):
    """Answers each POST with ``server.answer``; ``None`` loses the answer: the connection is closed unanswered
    (``reset``) or after the client's timeout (``timeout``), as ``server.lose`` says."""

    protocol_version = "HTTP/1.1"
    server: LossyServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = self.server.answer(self.path, body, self.headers)
        if answer is None:
            if self.server.lose == "timeout":  # held until the client gives up on it and closes its end
                select.select([self.connection], [], [], 3 * TIMEOUT_S)
            self.close_connection = True
            return
        status, payload = answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class LossyServer(ThreadingHTTPServer):
    """A real HTTP server on loopback whose ``answer`` may lose an answer after acting on its request."""

    daemon_threads = True

    def __init__(self, lose: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lose = lose
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, path: str, body: bytes, headers: Any) -> tuple[int, bytes] | None:
        raise NotImplementedError

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class JoiningServer(LossyServer):
    """The sidecar's labels as it joins them: a label takes its prediction record (gone once joined) or is
    ``unmatched``. The first ``/v1/labels`` request of each kind in ``faults`` is joined, then its answer lost
    (``lost``), or answered 503 with nothing joined (``503``)."""

    def __init__(self, lose: str, records: set[str], faults: list[str]) -> None:
        super().__init__(lose)
        self.records = set(records)
        self.faults = list(faults)
        self.joined: list[str] = []

    def answer(self, path: str, body: bytes, headers: Any) -> tuple[int, bytes] | None:
        labels = json.loads(body)["labels"]
        with self.lock:
            fault = self.faults.pop(0) if self.faults else None
            if fault == "503":
                return 503, json.dumps({"error": "redis: labels not joined; try again", "field": None}).encode()
            unmatched = []
            for index, label in enumerate(labels):
                if label["request_id"] in self.records:
                    self.records.discard(label["request_id"])
                    self.joined.append(label["request_id"])
                else:
                    unmatched.append({"index": index, "request_id": label["request_id"], "outcome": "unmatched"})
        if fault == "lost":
            return None
        answer = {"matched": len(labels) - len(unmatched), "unmatched": unmatched, "rejected": []}
        return 200, json.dumps(answer).encode()


@pytest.fixture(params=[pytest.param("reset", id="reset"), pytest.param("timeout", id="timeout")])
def lose(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _label_all(client: Client, request_ids: list[str]) -> None:
    for request_id in request_ids:
        client.label("digits", request_id, 1)
    assert client.flush(20)


def _unmatched_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "matched no prediction" in r.getMessage()]


def test_labels_joined_by_an_attempt_whose_answer_was_lost_are_unconfirmed_not_lost(
    lose: str, caplog: pytest.LogCaptureFixture
) -> None:
    """r0..r4 are joined by the first attempt (and ``x`` matches nothing); its answer is lost, and the retry is
    answered ``unmatched`` for all six. None is known lost: six ``unconfirmed``, no warning. A later label that
    matches nothing at its first attempt is ``unmatched`` and warned about."""
    joined = [f"r{i}" for i in range(5)]
    server = JoiningServer(lose, set(joined), ["lost"])
    try:
        with caplog.at_level(logging.WARNING, logger="vai_client"):
            client = Client(server.url, batch_size=10, timeout_s=TIMEOUT_S, retry_policy=FAST_RETRY)
            _label_all(client, [*joined, "x"])
            stats = client.stats
            assert server.joined == joined
            assert (stats.sent, stats.unmatched, stats.unconfirmed, stats.rejected) == (0, 0, 6, 0), stats
            assert stats.retried >= 6
            assert _unmatched_warnings(caplog) == []
            _label_all(client, ["y"])
            assert (client.stats.unmatched, client.stats.unconfirmed) == (1, 6)
            assert len(_unmatched_warnings(caplog)) == 1
            assert client.close(5)
    finally:
        server.close()


def test_labels_unmatched_after_a_503_are_lost(caplog: pytest.LogCaptureFixture) -> None:
    """A 503 applies nothing (the sidecar joins no label of it), so labels unmatched on the retry are lost:
    ``unmatched``, with the warning."""
    server = JoiningServer("reset", {"r0"}, ["503"])
    try:
        with caplog.at_level(logging.WARNING, logger="vai_client"):
            client = Client(server.url, batch_size=10, timeout_s=TIMEOUT_S, retry_policy=FAST_RETRY)
            _label_all(client, ["r0", "x"])
            stats = client.stats
            assert (stats.sent, stats.unmatched, stats.unconfirmed, stats.retried) == (1, 1, 0, 2), stats
            assert len(_unmatched_warnings(caplog)) == 1
            assert client.close(5)
    finally:
        server.close()


class LosingProxy(LossyServer):
    """A proxy in front of a real sidecar: forwards each POST, and loses the sidecar's answer to the next
    ``/v1/labels`` request once ``lose_next_labels`` is set (after the sidecar applied it)."""

    def __init__(self, lose: str, upstream: str) -> None:
        super().__init__(lose)
        parts = urlsplit(upstream)
        self._upstream = (str(parts.hostname), int(parts.port or 80))
        self.lose_next_labels = False

    def answer(self, path: str, body: bytes, headers: Any) -> tuple[int, bytes] | None:
        connection = http.client.HTTPConnection(*self._upstream, timeout=10)
        try:
            wanted = {name: headers[name] for name in ("Content-Type", "Authorization") if headers.get(name)}
            connection.request("POST", path, body=body, headers=wanted)
            response = connection.getresponse()
            answer = response.status, response.read()
        finally:
            connection.close()
        with self.lock:
            if path == "/v1/labels" and self.lose_next_labels:
                self.lose_next_labels = False
                return None
        return answer


@pytest.fixture
def proxy(sidecar: str, lose: str) -> Iterator[LosingProxy]:
    server = LosingProxy(lose, sidecar)
    yield server
    server.close()


def _labels_counted(sidecar: str, matched: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(f"{sidecar}/metrics").text.splitlines()
        if line.startswith("vai_labels_total{") and 'model="digits"' in line and f'matched="{matched}"' in line
    )


@pytest.mark.slow
def test_a_real_sidecar_answers_labels_sent_again_after_a_lost_answer_as_matched_duplicates(
    sidecar: str, proxy: LosingProxy, caplog: pytest.LogCaptureFixture, redis_client: redis.Redis
) -> None:
    """Through a proxy that loses the sidecar's answer to one ``/v1/labels`` request: the sidecar joined its five
    labels (``vai_labels_total{matched="true"}`` 5) and left a marker of each; the retry finds the markers and is
    answered ``matched`` (counted ``duplicate``, not ``false``), so the client counts the labels sent, neither
    unmatched nor unconfirmed. The first label, sent before the model kept records (as
    ``test_labels_join_their_events`` shows), is truly unmatched: counted and warned."""
    client = Client(proxy.url, token=INGEST_TOKEN, timeout_s=TIMEOUT_S, retry_policy=FAST_RETRY)
    with caplog.at_level(logging.WARNING, logger="vai_client"):
        client.log(model="digits", request_id="first", logits=[3.0, 1.0, 0.5])
        assert client.flush(10)
        _label_all(client, ["first"])  # the model's first label: records are kept from now on
        for i in range(5):
            client.log(model="digits", request_id=f"r{i}", logits=[3.0, 1.0, 0.5])
        assert client.flush(10)
        waiting = [keys.prediction("digits", f"r{i}") for i in range(5)]  # joined from Redis: markers left
        wait_until(lambda: redis_client.exists(*waiting) == 5, what="the records in Redis")
        proxy.lose_next_labels = True
        _label_all(client, [f"r{i}" for i in range(5)])
    stats = client.stats
    assert (stats.sent, stats.unmatched, stats.unconfirmed, stats.rejected) == (6 + 5, 1, 0, 0), stats
    assert len(_unmatched_warnings(caplog)) == 1 and "1 labels" in _unmatched_warnings(caplog)[0]
    assert wait_until(lambda: _labels_counted(sidecar, "true") == 5.0, what="five labels joined")
    assert _labels_counted(sidecar, "duplicate") == 5.0 and _labels_counted(sidecar, "false") == 1.0
    assert client.close(5)
