"""Fixtures of the client tests: a real sidecar process on loopback (on the test Redis), startable on a given port."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from client_servers import INGEST_TOKEN, READ_TOKEN

from common.embedded_redis import free_port
from helpers import role_env, start_role, stop_process, wait_http


@pytest.fixture
def start_sidecar(redis_url: str, tmp_path: Path) -> Iterator[Callable[[int], str]]:
    """``start_sidecar(port)`` runs ``vai-sidecar serve`` there (every event sampled, so the per-model
    stream shows arrival order) and returns its URL once it answers; all are stopped after the test."""
    config = tmp_path / "vai.toml"
    config.write_text("[sampling]\nevery_n = 1\nconfidence_below = 0.0\nmax_per_second = 100000\n")
    processes: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> str:
        env = role_env(
            VAI_REDIS_URL=redis_url,
            VAI_MONITOR="external",
            VAI_CONFIG_FILE=str(config),
            VAI_INGEST_TOKENS=INGEST_TOKEN,
            VAI_READ_TOKENS=READ_TOKEN,
        )
        process = start_role("serve", "--port", str(port), env=env, cwd=tmp_path)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/livez", process)
        return url

    yield start
    for process in processes:
        stop_process(process)


@pytest.fixture
def sidecar(start_sidecar: Callable[[int], str]) -> str:
    return start_sidecar(free_port())
