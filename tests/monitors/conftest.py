"""Shared fixtures of the monitors tests, where every warning is an error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The project's pytest settings do not turn warnings into errors yet; these tests do it themselves.
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings("error"), append=False)


WaitUntil = Callable[..., None]


def _wait_until(predicate: Callable[[], bool], *, timeout_s: float = 30.0, interval_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s")
        pause.wait(interval_s)


@pytest.fixture
def wait_until() -> WaitUntil:
    """``wait_until(predicate, timeout_s=30)``: poll until it holds, fail the test at the deadline."""
    return _wait_until
