"""The client as a model server installs it: standard library only, flushed at interpreter exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from client_servers import scripted

from helpers import REPO

HEAVY = ("numpy", "torch", "fastapi", "httpx", "pydantic", "redis", "prometheus_client", "common", "service")


def test_importing_needs_nothing_but_the_standard_library() -> None:
    code = f"import sys, vai_client; heavy = [m for m in {HEAVY!r} if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"
    pyproject = (REPO / "client" / "pyproject.toml").read_text()
    assert "dependencies = []" in pyproject


def test_works_without_numpy_installed(tmp_path: Path) -> None:
    """numpy hidden: plain lists, both encodings."""
    with scripted() as server:
        script = f"""
import sys
sys.modules["numpy"] = None  # import numpy now fails
from vai_client import Client
for encoding in ("json", "compact"):
    c = Client({server.url!r}, tensor_encoding=encoding, flush_interval_s=0.01)
    c.log(model="m", request_id=encoding, logits=[1.0, 2.0], embedding=(0.5, 0.25), input=[[1.0, 2.0]])
    assert c.close(5), c.stats
"""
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=tmp_path)
        events = server.items()
        assert [e["request_id"] for e in events] == ["json", "compact"]
        assert events[0]["embedding"] == [0.5, 0.25] and events[1]["embedding"]["dtype"] == "float64"


def test_events_waiting_at_exit_are_sent(tmp_path: Path) -> None:
    with scripted() as server:
        for client_class in ("Client", "AsyncClient"):
            script = f"""
import asyncio
from vai_client import {client_class}
client = {client_class}({server.url!r}, flush_interval_s=3600)
for i in range(250):
    client.log(model="{client_class}", request_id=str(i), logits=[1.0, 0.0])
# no close(): the atexit hook sends them
"""
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=tmp_path, env=env)
        for client_class in ("Client", "AsyncClient"):
            ids = [e["request_id"] for e in server.items() if e["model"] == client_class]
            assert ids == [str(i) for i in range(250)]
