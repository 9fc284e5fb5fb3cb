"""``AsyncClient``: the same guarantees, with an asyncio task as the sender."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from client_servers import Answer, HungServer, accept_all, failing_first, report, scripted, timed_logs
from vai_client import AsyncClient, Client, RetryPolicy

from common.embedded_redis import free_port
from helpers import wait_until

FAST_RETRY = RetryPolicy(backoff_base_s=0.01, backoff_max_s=0.05)


def test_events_and_labels_arrive_in_order() -> None:
    async def main(url: str) -> AsyncClient:
        async with AsyncClient(url, batch_size=16, flush_interval_s=0.01) as client:
            durations = []
            for i in range(100):
                durations += timed_logs(client, 1, model="a", start=i)
                durations += timed_logs(client, 1, model="b", start=i)
            client.label("a", "a-0", 1)
            report("async, sidecar up", durations)
            assert await client.flush(10)
        return client

    with scripted() as server:
        client = asyncio.run(main(server.url))
        assert client.stats.sent == 201
        for model in ("a", "b"):
            assert [e["request_id"] for e in server.items() if e["model"] == model] == [
                f"{model}-{i}" for i in range(100)
            ]
        assert server.items("/v1/labels") == [{"model": "a", "request_id": "a-0", "label": 1}]


def test_retry_after_then_close_drains() -> None:
    calls: list[float] = []

    def busy_once(path: str, document: dict[str, Any]) -> Answer:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return 503, {"Retry-After": "1"}, {"error": "busy", "field": "body"}
        return accept_all(path, document)

    async def main(url: str) -> AsyncClient:
        client = AsyncClient(url, flush_interval_s=0.01, retry_policy=FAST_RETRY)
        await client.start()
        timed_logs(client, 30)
        assert await client.close(10)
        return client

    with scripted(busy_once) as server:
        client = asyncio.run(main(server.url))
        assert (client.stats.sent, client.stats.retried) == (30, 30)
        assert calls[1] - calls[0] >= 0.95


@pytest.mark.parametrize("kind", [pytest.param("refused", id="down"), pytest.param("hung", id="hung")])
def test_unreachable_sidecar_leaves_the_loop_free(kind: str) -> None:
    hung = HungServer() if kind == "hung" else None
    url = hung.url if hung else f"http://127.0.0.1:{free_port()}"

    async def main() -> AsyncClient:
        client = AsyncClient(
            url, timeout_s=0.2, max_buffer=50, batch_size=10, flush_interval_s=0.01, retry_policy=FAST_RETRY
        )
        await client.start()
        durations = []
        lags = []
        for i in range(200):
            began = time.perf_counter()
            await asyncio.sleep(0)  # the loop keeps turning while the sender waits on the sidecar
            lags.append(time.perf_counter() - began)
            durations += timed_logs(client, 1, start=i)
        await asyncio.sleep(0.5)
        report(f"async, sidecar {kind}", durations)
        report(f"async, sidecar {kind}: event-loop turn", lags)
        assert client.stats.retried > 0 and client.stats.dropped >= 200 - 50 - 10
        assert not await client.close(0.3)
        return client

    try:
        client = asyncio.run(main())
        stats = client.stats
        assert stats.sent == 0 and stats.dropped + stats.failed == 200
    finally:
        if hung:
            hung.close()


def test_log_before_the_loop_starts_is_kept() -> None:
    with scripted() as server:
        client = AsyncClient(server.url, flush_interval_s=0.01)
        client.log(model="m", request_id="early", logits=[1.0, 0.0])  # no running loop yet: buffered

        async def main() -> None:
            await client.start()
            assert await client.flush(10)
            await client.close()

        asyncio.run(main())
        wait_until(lambda: server.items(), what="the early event")
        assert [e["request_id"] for e in server.items()] == ["early"]


def test_close_sends_what_a_never_started_client_holds() -> None:
    """Made and given events before any loop ran, then closed in one: close() starts the sender to drain them."""
    with scripted() as server:
        client = AsyncClient(server.url, flush_interval_s=0.01)
        client.log(model="m", request_id="early", logits=[1.0, 0.0])
        client.label("m", "early", 0)
        assert asyncio.run(client.close(10))
        assert (client.stats.sent, client.stats.failed) == (2, 0)
        assert [e["request_id"] for e in server.items()] == ["early"]


@pytest.mark.parametrize("method", [pytest.param("log", id="log"), pytest.param("label", id="label")])
def test_both_clients_share_one_log_and_label(method: str) -> None:
    """``log()`` and ``label()`` are written once for both clients: same signature, same event, one definition."""
    threaded, asynchronous = getattr(Client, method), getattr(AsyncClient, method)
    assert inspect.signature(threaded) == inspect.signature(asynchronous)
    assert threaded is asynchronous


def test_close_during_encoding_counts_each_event_once() -> None:
    """``close()`` cancels the sender while the worker thread encodes a batch: the thread still counts what it
    cannot encode (rejected), so the cancel may count as failed only what the thread did encode."""
    slow_logits = [float(i % 7) for i in range(20_000)]  # a list: encoded on the worker thread, not in log()
    events = 600

    async def main(url: str) -> AsyncClient:
        client = AsyncClient(
            url, batch_size=events, max_buffer_bytes=2**30, flush_interval_s=0.01, tensor_encoding="compact"
        )
        await client.start()
        timed_logs(client, events - 1, logits=slow_logits)
        client.log(model="m", request_id="m-overflow", logits=[10**400, 1.0])  # unreadable, last in the batch
        while client.stats.buffered:  # until the sender has taken the batch (it then encodes it for ~1 s)
            await asyncio.sleep(0.001)
        await client.close(timeout_s=0)
        return client

    with scripted() as server:
        client = asyncio.run(main(server.url))
        wait_until(lambda: not any(t.name.startswith("vai-client-http") for t in threading.enumerate()), timeout_s=30)
        stats = client.stats
        assert stats.rejected == 1
        assert stats.sent + stats.rejected + stats.failed + stats.dropped + stats.errored == events


def holding_the_first(first: str) -> tuple[Callable[[str, dict[str, Any]], Answer], list[str]]:
    """A sidecar stand-in that refuses duplicates as the sidecar does, and whose first request is held unanswered
    until the next one arrives, then answered 503 (``first="held"``) or 202 (``first="taken"``: its events were
    taken, the client never learns it); or answered 503 with ``Retry-After: 60`` at once (``first="busy"``).
    Also returns the request ids taken, in order."""
    taken: list[str] = []
    calls = {"n": 0}
    lock = threading.Lock()
    released = threading.Event()

    def respond(path: str, document: dict[str, Any]) -> Answer:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n > 1:
            released.set()
        elif first == "busy":
            return 503, {"Retry-After": "60"}, {"error": "busy", "field": "body"}
        elif first == "held":
            released.wait(30)
            return 503, {}, {"error": "busy", "field": "body"}
        events = document["events"]
        with lock:
            duplicates = [i for i, event in enumerate(events) if event["request_id"] in taken]
            taken.extend(event["request_id"] for i, event in enumerate(events) if i not in duplicates)
        if n == 1:
            released.wait(30)
        rejected = [{"index": i, "field": "request_id", "error": "duplicate of a recent event"} for i in duplicates]
        return 202, {}, {"accepted": len(events) - len(rejected), "rejected": rejected, "sampled": []}

    return respond, taken


@pytest.mark.parametrize(
    "first",
    [
        pytest.param("held", id="cancelled-in-flight"),
        pytest.param("taken", id="cancelled-in-flight-after-it-arrived"),
        pytest.param("busy", id="cancelled-backing-off"),
    ],
)
def test_a_batch_cancelled_with_the_loop_is_sent_at_exit(tmp_path: Path, first: str) -> None:
    """``asyncio.run(main())`` returning without ``close()`` while a batch is posted (or backing off): the loop
    cancels the sender, the batch goes back ahead of the buffer, and the exit hook sends it, then the rest, in
    order. A batch that did arrive comes back as duplicates, counted as sent. A real interpreter exit, in a
    subprocess; its counts are read after the client's own exit hook."""
    respond, taken = holding_the_first(first)
    with scripted(respond) as server:
        script = f"""
import asyncio, atexit
from vai_client import AsyncClient, RetryPolicy
clients = []
atexit.register(lambda: print("final", clients[0].stats, flush=True))  # registered first: runs last
async def main():
    policy = RetryPolicy(backoff_max_s=0.05)
    client = AsyncClient({server.url!r}, timeout_s=0.5, atexit_timeout_s=10, retry_policy=policy)
    clients.append(client)
    await client.start()
    for i in range(350):
        client.log(model="m", request_id=str(i), logits=[1.0, 0.0])
    while client.stats.buffered > 250 or ({first!r} == "busy" and not client.stats.retried):
        await asyncio.sleep(0.001)  # until the first batch is taken (and, busy, refused once)
    await asyncio.sleep(0.005)
asyncio.run(main())
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert taken == [str(i) for i in range(350)]
    final = out.stdout.strip().splitlines()[-1]
    assert all(f"{count}," in final for count in ("sent=350", "rejected=0", "failed=0", "buffered=0")), final


def test_a_batch_cancelled_before_it_was_encoded_is_sent_at_exit(tmp_path: Path) -> None:
    """The loop ends while the taken batch still waits for the worker thread to encode it: the items go back to
    the front of the buffer as they were, and the exit hook sends them."""
    with scripted() as server:
        script = f"""
import asyncio, time
from vai_client import AsyncClient
client = AsyncClient({server.url!r}, flush_interval_s=0.01)
async def main():
    await client.start()
    client._executor.submit(time.sleep, 0.3)  # the worker thread busy: the batch waits there to be encoded
    for i in range(5):
        client.log(model="m", request_id=str(i), logits=[1.0, 0.0])
    while client.stats.buffered:
        await asyncio.sleep(0.001)  # until the sender has taken the batch (and handed it to the worker thread)
asyncio.run(main())
print("cancelled", client.stats.buffered, client.stats.failed, flush=True)
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["cancelled", "5", "0"]
        assert [e["request_id"] for e in server.items()] == [str(i) for i in range(5)]


@pytest.mark.parametrize("closed", [pytest.param(True, id="close"), pytest.param(False, id="exit-hook")])
def test_a_post_hung_on_the_worker_thread_never_holds_up_the_exit(tmp_path: Path, closed: bool) -> None:
    """A hung sidecar and ``timeout_s=60``: once ``close(1.0)`` (or the exit hook, ``atexit_timeout_s=1``) gives up,
    the process exits, though the worker thread is still stuck in its post (a daemon thread, never joined at exit).
    Measured in a real interpreter; the bound asserted is loose, far under ``timeout_s``."""
    hung = HungServer()
    script = f"""
import asyncio
from vai_client import AsyncClient
async def main():
    client = AsyncClient({hung.url!r}, timeout_s=60, flush_interval_s=0.01, atexit_timeout_s=1.0)
    await client.start()
    client.log(model="m", request_id="r", logits=[1.0, 0.0])
    await asyncio.sleep(0.5)  # the post is on the worker thread, waiting for an answer that never comes
    if {closed}:
        assert not await client.close(1.0)
asyncio.run(main())
"""
    try:
        began = time.monotonic()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        elapsed = time.monotonic() - began
        print(f"[vai_client] async client, hung sidecar, timeout_s=60: process exited after {elapsed:.1f} s")
        assert out.returncode == 0, out.stderr
        assert hung.accepted  # the post did reach the hung server
        assert elapsed < 30
    finally:
        hung.close()


def test_a_child_forked_inside_the_loop_never_sends_the_batch_of_the_parents_sender(tmp_path: Path) -> None:
    """``fork()`` from a coroutine while the sender backs off holding a batch: the child's copy of that task is
    cancelled when the child's ``asyncio.run()`` ends, and neither parks the parent's batch for the child's exit
    hook nor counts it; the parent sends it, once (after the refused first attempt)."""
    with scripted(failing_first(1, 503, {"Retry-After": "1"})) as server:
        script = f"""
import asyncio, os, sys
from vai_client import AsyncClient
async def main():
    client = AsyncClient({server.url!r}, flush_interval_s=0.01)
    await client.start()
    for i in range(5):
        client.log(model="m", request_id=str(i), logits=[1.0, 0.0])
    while not client.stats.retried:
        await asyncio.sleep(0.001)  # until the batch is refused once: the sender backs off, holding it
    pid = os.fork()
    if pid == 0:
        print("child", client.stats, flush=True)
        sys.exit(0)
    os.waitpid(pid, 0)
    while client.stats.sent < 5:  # polled: the child's loop, closing, took the self-pipe out of the epoll both share
        await asyncio.sleep(0.01)
    assert await client.close(10)
    print("parent", client.stats, flush=True)
asyncio.run(main())
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        child, parent = out.stdout.splitlines()[:2]
        assert "sent=0," in child and "buffered=0," in child and "rejected=0," in child
        assert "sent=5," in parent and "retried=5," in parent
        assert [e["request_id"] for e in server.items()] == [str(i) for i in range(5)] * 2  # refused, then taken
