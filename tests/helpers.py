"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def event(request_id: str = "r1", *, model: str = "digits", **fields: Any) -> dict[str, Any]:
    """A valid event; ``fields`` override or add to it."""
    body: dict[str, Any] = {"model": model, "request_id": request_id, "logits": [4.0, 1.0, 0.5]}
    body.update(fields)
    return body


def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = 10.0, what: str = "condition", interval_s: float = 0.01
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``.

    The short pause between polls leaves the CPU to the process being waited for (2-core runners).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def redis_servers_in(directory: Path) -> list[int]:
    """Pids of processes whose working directory is ``directory`` (redis-server chdirs into its ``--dir``).

    ``pgrep -f DIR`` cannot find them: redis-server rewrites its command line to ``redis-server HOST:PORT``.
    """
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if Path(os.readlink(proc / "cwd")) == directory.resolve():
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                continue
    return found
