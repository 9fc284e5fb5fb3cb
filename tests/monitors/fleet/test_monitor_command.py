"""`vai-sidecar monitor` as a process: a metrics port it cannot have is a configuration error (exit status 2)."""

from __future__ import annotations

import socket
import subprocess
import sys

from helpers import role_env


def test_a_metrics_port_in_use_is_named_in_one_line_and_exit_status_2() -> None:
    """It used to end in a traceback (exit status 1), which the embedded monitor's sidecar took for a crash and
    started again every 30 s for ever."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        env = role_env(VAI_REDIS_URL="redis://127.0.0.1:1/0", VAI_MONITOR_METRICS_PORT=str(taken.getsockname()[1]))
        answer = subprocess.run(
            [sys.executable, "-m", "common.cli", "monitor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert answer.returncode == 2, answer.stderr
    (line,) = answer.stderr.strip().splitlines()
    assert "VAI_MONITOR_METRICS_PORT" in line and "Address already in use" in line, line
