"""A role given a setting it cannot start with says so on one line that names the setting as the user wrote it, and
exits 2, as a user runs it (`vai-sidecar ROLE`): each used to crash with a 20-50 line traceback, status 1 (3 for a
bad Redis URL in `serve`, after the embedded Redis and monitor had started), naming a field rather than the
variable or the key of the config file.

Each refusal comes after the role's imports and before anything starts: ~1 s for `serve`, ~3 s for `monitor` and
`worker` (alibi-detect, torch), so most cases run `serve`."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, role_env


def _run(role: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", role, *args],
        env=role_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _refused(answer: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refusal (status 2, no traceback)."""
    assert answer.returncode == 2, answer.stderr
    assert "Traceback" not in answer.stderr, answer.stderr
    lines = answer.stderr.splitlines()
    assert len(lines) == 1, answer.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("env", "file", "expected"),
    [
        pytest.param(
            {"VAI_PORT": "abc"},
            None,
            "vai-sidecar serve: VAI_PORT: Input should be a valid integer, unable to parse string as an integer "
            "(got 'abc')",
            id="env-not-a-number",
        ),
        pytest.param(
            {"VAI_SAMPLING__EVERY_N": "0"},
            None,
            "vai-sidecar serve: VAI_SAMPLING__EVERY_N: Input should be greater than or equal to 1 (got '0')",
            id="env-nested",
        ),
        pytest.param(
            {},
            "[sampling]\nevery_nn = 3\n",
            "vai-sidecar serve: {file}: [sampling] every_nn: no such setting (did you mean every_n?)",
            id="file-misspelt-key",
        ),
        pytest.param(
            {},
            'max_batch = "lots"\n',
            "vai-sidecar serve: {file}: max_batch: Input should be a valid integer, unable to parse string as an "
            "integer (got 'lots')",
            id="file-wrong-type",
        ),
        pytest.param(
            {},
            "[sampling]\nflagged_cohorts = [{region = 1},\n",
            "vai-sidecar serve: VAI_CONFIG_FILE: {file} is not valid TOML: Invalid value (at end of document)",
            id="file-not-toml",
        ),
        pytest.param(
            {"VAI_CONFIG_FILE": "/nonexistent/vai.toml"},
            None,
            "vai-sidecar serve: VAI_CONFIG_FILE: no such file: /nonexistent/vai.toml",
            id="file-missing",
        ),
        pytest.param(
            {"VAI_REDIS_URL": "localhost:6379"},
            None,
            "vai-sidecar serve: VAI_REDIS_URL: must start with redis://, rediss://, unix:// (e.g. redis://host:6379/0)",
            id="redis-url-without-scheme",
        ),
        pytest.param(
            {"VAI_LOG_LEVEL": "warn"},
            None,
            "vai-sidecar serve: VAI_LOG_LEVEL: Input should be 'critical', 'error', 'warning', 'info' or 'debug' "
            "(got 'warn')",
            id="log-level-uvicorn-does-not-know",
        ),
        pytest.param(
            {"VAI_QUEUE_MAX_LENGTH": "50000"},
            None,
            "vai-sidecar serve: VAI_STREAM_MAXLEN (50000) must exceed VAI_QUEUE_MAX_LENGTH (50000) by at least 50000",
            id="backlog-cap-at-maxlen",
        ),
    ],
)
def test_serve_names_the_wrong_setting_on_one_line(
    tmp_path: Path, env: dict[str, str], file: str | None, expected: str
) -> None:
    path = tmp_path / "vai.toml"
    if file is not None:
        path.write_text(file, encoding="utf-8")
        env = {"VAI_CONFIG_FILE": str(path), **env}
    line = _refused(_run("serve", cwd=tmp_path, **env))
    assert line.startswith(expected.format(file=path)), line
    assert not (tmp_path / ".vai-data").exists(), "no embedded Redis was started"


def test_an_option_is_named_as_the_option(tmp_path: Path) -> None:
    line = _refused(_run("serve", "--port", "99999", cwd=tmp_path, VAI_PORT="8000"))
    assert line == "vai-sidecar serve: --port: Input should be less than or equal to 65535 (got 99999)"


def test_a_monitor_names_the_nested_variable_behind_a_section_check(tmp_path: Path) -> None:
    """The check spans the drift section (pydantic says ``drift``): the variable that set part of it is named."""
    line = _refused(_run("monitor", cwd=tmp_path, VAI_DRIFT__WINDOW_SIZE="2000", VAI_REDIS_URL="redis://127.0.0.1:1"))
    assert line.startswith("vai-sidecar monitor: VAI_DRIFT__WINDOW_SIZE: the online detector's reference"), line


def test_a_worker_refuses_a_device_torch_does_not_have_before_any_model_loads(tmp_path: Path) -> None:
    line = _refused(_run("worker", cwd=tmp_path, VAI_WORKER_DEVICE="tpu", VAI_REDIS_URL="redis://127.0.0.1:1"))
    assert line == (
        "vai-sidecar worker: VAI_WORKER_DEVICE: 'tpu' is not a device the worker can use: cpu, cuda or cuda:N "
        "(the GPU of index N)"
    )


def test_a_worker_whose_metrics_port_is_taken_says_so_before_it_loads_a_model(tmp_path: Path) -> None:
    """The port is bound first: the model below does not exist, and would have been reported (status 1) first."""
    config = tmp_path / "vai.toml"
    config.write_text('[models.m.attribution]\nmodel = "/nonexistent/model.pt"\n', encoding="utf-8")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        answer = _run(
            "worker",
            cwd=tmp_path,
            VAI_CONFIG_FILE=str(config),
            VAI_REDIS_URL="redis://127.0.0.1:1",
            VAI_WORKER_METRICS_PORT=str(port),
        )
    line = _refused(answer)
    assert line.startswith(
        f"vai-sidecar worker: VAI_WORKER_METRICS_PORT (or --metrics-port) {port} on VAI_HOST 127.0.0.1: cannot serve "
    ), line


def test_a_variable_no_role_declares_is_warned_about_once(tmp_path: Path) -> None:
    """Variables of other roles (``VAI_INGEST_TOKENS`` is the sidecar's) are no typo; the worker stops at once for
    want of ``VAI_REDIS_URL``, after its warning."""
    answer = _run("worker", cwd=tmp_path, VAI_BOGUS="1", VAI_MAX_BATCHH="5", VAI_INGEST_TOKENS="t")
    assert answer.returncode == 2, answer.stderr
    warnings = [line for line in answer.stderr.splitlines() if "no role has such a setting" in line]
    assert len(warnings) == 1, answer.stderr
    assert "WARNING" in warnings[0]
    assert "VAI_BOGUS, VAI_MAX_BATCHH (VAI_MAX_BATCH?): no role has such a setting" in warnings[0]
    assert "VAI_INGEST_TOKENS" not in warnings[0]


def test_help_goes_to_stdout_and_says_where_settings_come_from() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "common.cli", "--help"],
        env=role_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0 and answer.stderr == ""
    assert answer.stdout.startswith("usage: vai-sidecar {serve,monitor,worker,demo}")
    assert "VAI_* environment variables" in answer.stdout and "VAI_CONFIG_FILE" in answer.stdout
