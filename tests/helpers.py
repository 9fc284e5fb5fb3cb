"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def event(request_id: str = "r1", *, model: str = "digits", **fields: Any) -> dict[str, Any]:
    """A valid event; ``fields`` override or add to it."""
    body: dict[str, Any] = {"model": model, "request_id": request_id, "logits": [4.0, 1.0, 0.5]}
    body.update(fields)
    return body


def wait_until(predicate: Callable[[], Any], *, timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
