"""The codebase stays lint-, format- and type-clean: ruff and mypy run here as a developer runs them.

Both use the venv's own tools (``sys.executable -m``) and the settings in pyproject.toml, from the repository
root, and keep their caches under ``tmp_path`` so that a test run never writes into the repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


def _run(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("ruff", "check", "--no-cache", "."), id="ruff-check"),
        pytest.param(("ruff", "format", "--check", "--no-cache", "."), id="ruff-format"),
    ],
)
def test_ruff_finds_nothing_to_fix(command: tuple[str, ...]) -> None:
    result = _run(*command, timeout_s=120)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"


@pytest.mark.slow
def test_mypy_strict_passes_on_the_packages_and_the_tests(tmp_path: Path) -> None:
    """``mypy`` with no arguments checks what pyproject's ``[tool.mypy] files`` lists: every package and tests/.

    The cache starts empty, so this is the cold run CI sees: 36-40 s on a 2-core machine, well inside the budget for
    checking the tests too.
    """
    result = _run("mypy", "--cache-dir", str(tmp_path / "mypy"), timeout_s=280)
    assert result.returncode == 0, f"mypy failed:\n{result.stdout}{result.stderr}"
