"""`vai-sidecar ROLE --help` and a mistyped option answer at once, as a user types them, for every role: none starts
(a monitor given `--help` used to start watching the fleet, or ask for VAI_REDIS_URL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("VAI_")}
    env.update({"PYTHONPATH": str(ROOT), "VAI_REDIS_URL": "redis://127.0.0.1:1/0"})  # a role that started would fail
    return subprocess.run(
        [sys.executable, "-m", "common.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("role", ["serve", "monitor", "worker"])
def test_help_describes_the_role_and_starts_nothing(role: str) -> None:
    answer = _cli(role, "--help")
    assert answer.returncode == 0, answer.stderr
    assert f"usage: vai-sidecar {role}" in answer.stdout
    assert "--metrics-port" in answer.stdout or role == "serve"


@pytest.mark.parametrize("role", ["serve", "monitor", "worker"])
def test_a_mistyped_option_is_refused(role: str) -> None:
    answer = _cli(role, "--metrics-prot", "9")
    assert answer.returncode == 2
    assert "unrecognized arguments: --metrics-prot" in answer.stderr


def test_a_worker_without_redis_says_so_before_it_loads_a_model(tmp_path: Path) -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("VAI_")}
    config = tmp_path / "vai.toml"
    config.write_text('[models.m.attribution]\nmodel = "/nonexistent/model.pt"\n', encoding="utf-8")
    env.update({"PYTHONPATH": str(ROOT), "VAI_CONFIG_FILE": str(config)})
    answer = subprocess.run(
        [sys.executable, "-m", "common.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert answer.returncode == 2
    assert "needs VAI_REDIS_URL" in answer.stderr
