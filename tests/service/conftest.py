"""Fixtures of the sidecar's tests: the browser (viewer, model overview, layer view), and uvicorn held back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from cdp import Browser, find_chromium


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of the browser; looked up before the (slower) data fixtures so that a skip is quick."""
    return find_chromium()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium, tmp_path / "chromium-profile")
    yield opened
    opened.close()


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts ``uvicorn.run`` was asked to bind (it returns at once instead of serving)."""
    runs: list[str] = []

    def run(app: Any, *, host: str, **kwargs: Any) -> None:
        runs.append(host)

    monkeypatch.setattr(uvicorn, "run", run)
    return runs
