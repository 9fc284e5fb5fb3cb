"""The buffer: bounded in bytes as well as in items, and not inherited by a forked child."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from client_servers import scripted
from vai_client import Client
from vai_client._encoding import LIST_ITEM_BYTES

from common.embedded_redis import free_port
from helpers import wait_until

IMAGE = np.zeros((3, 224, 224), dtype=np.float32)  # 602,112 bytes, an ImageNet input


def test_the_default_byte_bound_drops_the_oldest_inputs() -> None:
    """Sidecar down, large inputs: the buffer stops at 64 MiB of tensors (not 10,000 images, 6 GB)."""
    client = Client(f"http://127.0.0.1:{free_port()}", batch_size=1000, flush_interval_s=3600)  # sender stays idle
    for i in range(120):
        client.log(model="m", request_id=str(i), logits=[1.0, 0.0], input=IMAGE)
    stats = client.stats
    logits = 2 * LIST_ITEM_BYTES  # each event also holds its two logits, as Python floats
    kept = 64 * 2**20 // (IMAGE.nbytes + logits)
    assert (stats.buffered, stats.dropped) == (kept, 120 - kept)
    assert stats.buffered_bytes == kept * (IMAGE.nbytes + logits) <= 64 * 2**20
    assert not client.close(0.2)
    wait_until(lambda: client.stats.failed == kept, what="the unsent events counted as failed")


def test_the_newest_events_within_the_byte_bound_are_sent() -> None:
    with scripted() as server:
        one = np.ones((128, 128), dtype=np.float32)  # 64 KiB
        client = Client(server.url, max_buffer_bytes=2**20, batch_size=1000, flush_interval_s=3600)
        for i in range(40):
            client.log(model="m", request_id=str(i), probabilities=[0.5, 0.5], input=one)
        client.log(model="m", request_id="huge", probabilities=[0.5, 0.5], input=np.ones(2**19, np.float32))
        assert (client.stats.buffered, client.stats.dropped) == (15, 26)  # 15 x (64 KiB + 2 floats) fit in 1 MiB
        assert client.close(10)
        assert [e["request_id"] for e in server.items()] == [str(i) for i in range(25, 40)]
        assert (client.stats.sent, client.stats.buffered_bytes) == (15, 0)


def test_a_forked_child_does_not_send_what_the_parent_buffered(tmp_path: Path) -> None:
    """gunicorn --preload: events logged before fork() are the parent's; the child sends only its own,
    and counts only its own (its Prometheus counters too)."""
    with scripted() as server:
        script = f"""
import os
from prometheus_client import CollectorRegistry
from vai_client import Client
registry = CollectorRegistry()
client = Client({server.url!r}, flush_interval_s=3600, registry=registry)
for i in range(5):
    client.log(model="m", request_id=f"sent-{{i}}", logits=[1.0, 0.0])
assert client.flush(5)
for i in range(2):
    client.log(model="m", request_id=f"waiting-{{i}}", logits=[1.0, 0.0])
pid = os.fork()
if pid == 0:
    fresh = client.stats
    client.log(model="m", request_id="child", logits=[1.0, 0.0])
    ok = client.close(5)
    exported = registry.get_sample_value("vai_client_events_total", {{"client": "default", "outcome": "sent"}})
    print("child", fresh.buffered, client.stats.sent, exported, ok, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert client.close(5) and client.stats.sent == 7, client.stats
print("parent", os.waitstatus_to_exitcode(status), flush=True)
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[:2] == ["child 0 1 1.0 True", "parent 0"]
        ids = sorted(e["request_id"] for e in server.items())
        assert ids == ["child", *(f"sent-{i}" for i in range(5)), "waiting-0", "waiting-1"]


@pytest.mark.parametrize(
    "started",
    [pytest.param(False, id="never-started-in-the-parent"), pytest.param(True, id="started-in-the-parent")],
)
def test_a_forked_child_of_an_async_client_does_not_send_what_the_parent_buffered(
    tmp_path: Path, started: bool
) -> None:
    """gunicorn --preload with uvicorn workers: the ``AsyncClient`` made in the parent (never started there, or started
    on a loop of a thread the child does not have). The child's copy starts empty with counts at zero, sends what the
    child logs from the child's own loop (and its exit hook what is left), never what the parent buffered."""
    with scripted() as server:
        script = f"""
import asyncio, os, sys, threading
from vai_client import AsyncClient
client = AsyncClient({server.url!r}, flush_interval_s=3600)
if {started}:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(client.start(), loop).result()
for i in range(50):
    client.log(model="m", request_id=f"parent-{{i}}", logits=[1.0, 0.0])
pid = os.fork()
if pid == 0:
    fresh = client.stats
    async def child():
        client.log(model="m", request_id="child", logits=[1.0, 0.0])
        return await client.flush(5)
    ok = asyncio.run(child())
    print("child", fresh.buffered, client.stats.sent, ok, flush=True)
    client.log(model="m", request_id="child-at-exit", logits=[1.0, 0.0])
    sys.exit(0)  # the exit hook sends what the child left, and nothing of the parent's
_, status = os.waitpid(pid, 0)
async def parent():
    await client.start()
    return await client.close(5)
ok = asyncio.run_coroutine_threadsafe(parent(), loop).result() if {started} else asyncio.run(parent())
print("parent", os.waitstatus_to_exitcode(status), ok, client.stats.sent, flush=True)
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[:2] == ["child 0 1 True", "parent 0 True 50"], out.stderr
        ids = sorted(e["request_id"] for e in server.items())
        assert ids == sorted(["child", "child-at-exit", *(f"parent-{i}" for i in range(50))])
