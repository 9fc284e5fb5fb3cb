"""Fixtures of the sidecar's browser tests (the viewer, the model overview, the layer view)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
