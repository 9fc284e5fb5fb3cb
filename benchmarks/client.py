"""What ``vai_client.Client.log()`` costs the model server's thread, with the sidecar up, down and hung.

    .venv/bin/python -m benchmarks.client [--calls 20000] [--rate 2000] [--logits 10] [--embedding 64]

Each case calls ``log()`` ``--calls`` times from one thread, paced at ``--rate`` calls/s (a model server
calls it once per prediction), and times every call with ``perf_counter``: p50, p99 and max per call.
The events carry ``--logits`` logits as a float32 numpy array and a ``--embedding``-d float32 embedding.

* up: a real ``vai-sidecar serve`` (embedded Redis, ``VAI_MONITOR=external``) on loopback, with the
  client's default settings (``tensor_encoding="compact"``). Also timed: events/s delivered when
  ``--calls`` events are logged unpaced and flushed (first ``log()`` to ``flush()`` returning).
  For scale, ``floor``: the same events pre-encoded (as JSON number lists) and posted in batches of 100 with
  bare ``http.client``
  on one connection, one batch after another: the pace of the sidecar itself on this host.
* down: a loopback port nobody listens on (connection refused); the buffer (``--buffer``) overflows
  and drops its oldest.
* hung: a socket server that accepts and never answers; attempts time out after ``timeout_s=0.5``.

Everything shares the host's cores (the sidecar included in the up case), as it would in a pod.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from vai_client import Client

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def sidecar() -> Iterator[str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
        env.update(VAI_MONITOR="external", VAI_LOG_LEVEL="warning", VAI_REDIS_DATA_DIR=data, PYTHONPATH=str(ROOT))
        command = [sys.executable, "-m", "common.cli", "serve", "--port", str(port)]
        process = subprocess.Popen(command, cwd=data, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/livez", timeout=0.5).read()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("the sidecar did not start") from None
                    time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            process.wait(20)


@contextmanager
def hung_server() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


def timed_calls(
    client: Client, args: argparse.Namespace, *, paced: bool, tag: str
) -> np.ndarray[Any, np.dtype[np.float64]]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, args.logits)).astype(np.float32)
    embedding = rng.normal(size=(64, args.embedding)).astype(np.float32)
    durations = np.empty(args.calls)
    interval = 1.0 / args.rate
    next_at = time.perf_counter()
    for i in range(args.calls):
        if paced:
            next_at += interval
            while (now := time.perf_counter()) < next_at:
                time.sleep(min(0.001, next_at - now))
        began = time.perf_counter()
        client.log(model="bench", request_id=f"{tag}-{i}", logits=logits[i % 64], embedding=embedding[i % 64])
        durations[i] = time.perf_counter() - began
    return durations


def line(case: str, durations: np.ndarray[Any, np.dtype[np.float64]], client: Client, extra: str = "") -> str:
    us = durations * 1e6
    stats = client.stats
    return (
        f"{case:<26} mean {us.mean():6.1f} us  p50 {np.percentile(us, 50):7.1f} us  "
        f"p99 {np.percentile(us, 99):7.1f} us  "
        f"max {us.max():8.1f} us   sent {stats.sent} dropped {stats.dropped} retried {stats.retried}{extra}"
    )


def run_case(case: str, url: str, args: argparse.Namespace, **options: Any) -> list[str]:
    client = Client(url, max_buffer=args.buffer, **options)
    out = [line(case, timed_calls(client, args, paced=True, tag="paced"), client)]
    if case.startswith("up"):
        if not client.flush(60):
            raise SystemExit("the sidecar did not take the paced events")
        before = client.stats.sent
        began = time.perf_counter()
        durations = timed_calls(client, args, paced=False, tag="burst")
        if not client.flush(120):
            raise SystemExit("the sidecar did not take the burst")
        elapsed = time.perf_counter() - began
        delivered = client.stats.sent - before
        out.append(line(f"{case}, unpaced", durations, client, f"   delivered {delivered / elapsed:,.0f} events/s"))
    client.close(1.0)
    return out


def floor(url: str, args: argparse.Namespace, *, batches: int = 50) -> str:
    rng = np.random.default_rng(1)
    events = [
        {
            "model": "floor",
            "request_id": f"f{i}",
            "logits": rng.normal(size=args.logits).tolist(),
            "embedding": rng.normal(size=args.embedding).tolist(),
        }
        for i in range(batches * 100)
    ]
    bodies = [json.dumps({"events": events[b * 100 : (b + 1) * 100]}).encode() for b in range(batches)]
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    began = time.perf_counter()
    for body in bodies:
        connection.request("POST", "/v1/events", body=body, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        if answer.status != 202:
            raise SystemExit(f"the sidecar answered {answer.status}")
    elapsed = time.perf_counter() - began
    connection.close()
    return f"{'floor (bare http.client)':<26} delivered {len(events) / elapsed:,.0f} events/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="log() calls per second (paced cases)")
    parser.add_argument("--logits", type=int, default=10)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--buffer", type=int, default=10_000, help="max_buffer of the client")
    args = parser.parse_args()
    print(
        f"log() per call, {args.calls} calls at {args.rate:.0f}/s, {args.logits} logits + {args.embedding}-d "
        f"embedding, buffer {args.buffer}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    results: list[str] = []
    with sidecar() as url:
        results.append(floor(url, args))
        results += run_case("up (compact)", url, args)
    results += run_case("down (refused)", f"http://127.0.0.1:{free_port()}", args)
    with hung_server() as url:
        results += run_case("hung (accepts, silent)", url, args, timeout_s=0.5)
    print("\n".join(results))


if __name__ == "__main__":
    main()
