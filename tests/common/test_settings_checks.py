"""The settings checks themselves, in-process: what each accepts and refuses, where a refusal says the value came
from, and which ``VAI_*`` variables count as misspelt (`test_settings_refused` runs the command a user types)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from attribution_workers.settings import WorkerSettings
from common.cli import describe
from common.settings import ConfigFileError, RoleSettings, role_classes, undeclared_variables, warn_undeclared
from monitors.fleet.settings import MonitorSettings
from service.settings import SidecarSettings


@pytest.fixture(autouse=True)
def no_vai_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("VAI_"):
            monkeypatch.delenv(name)


def _refusal(monkeypatch: pytest.MonkeyPatch, *options: str, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    overrides: dict[str, Any] = {"port": int(options[1])} if options else {}
    with pytest.raises(ValidationError) as refused:
        SidecarSettings(**overrides)
    return describe(refused.value, options=options)


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        pytest.param("WARNING", "warning", id="upper-case"),
        pytest.param("Debug", "debug", id="mixed-case"),
        pytest.param("critical", "critical", id="lower-case"),
    ],
)
def test_a_log_level_is_taken_in_any_case_and_kept_in_lower_case_for_uvicorn(level: str, kept: str) -> None:
    assert RoleSettings(log_level=level).log_level == kept


@pytest.mark.parametrize("level", ["warn", "fatal", "trace", "bogus", ""])
def test_a_log_level_python_or_uvicorn_does_not_know_is_refused(level: str) -> None:
    with pytest.raises(ValidationError, match="'critical', 'error', 'warning', 'info' or 'debug'"):
        RoleSettings(log_level=level)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:secret@h:6380/1", "unix:///run/redis.sock"])
def test_redis_urls_redis_py_takes_are_accepted(url: str) -> None:
    assert RoleSettings(redis_url=url).redis_url == url


@pytest.mark.parametrize("url", ["notaurl", "http://h:6379", "REDIS://h", "h:6379"])
def test_other_redis_urls_are_refused_at_start_up_without_echoing_them(url: str) -> None:
    with pytest.raises(ValidationError, match="must start with redis://, rediss://, unix://") as refused:
        RoleSettings(redis_url=url)
    assert url not in describe(refused.value)  # the value may hold a password


def test_empty_optional_settings_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAI_REDIS_URL", "")
    monkeypatch.setenv("VAI_CONFIG_FILE", "")
    monkeypatch.setenv("VAI_WORKER_DEVICE", "")
    settings = WorkerSettings()
    assert settings.redis_url is None and settings.config_file is None and settings.worker_device is None


@pytest.mark.parametrize(("device", "kept"), [("cpu", "cpu"), ("cuda", "cuda"), ("CUDA:1", "cuda:1")])
def test_worker_devices_torch_has_are_accepted(device: str, kept: str) -> None:
    assert WorkerSettings(worker_device=device).worker_device == kept


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:", "cuda:x", "auto"])
def test_other_worker_devices_are_refused(device: str) -> None:
    with pytest.raises(ValidationError, match="is not a device the worker can use: cpu, cuda or cuda:N"):
        WorkerSettings(worker_device=device)


@pytest.mark.parametrize(
    ("queue", "stream", "accepted"),
    [
        pytest.param(10_000, 50_000, True, id="defaults"),
        pytest.param(10_000, 20_000, True, id="twice-the-cap"),
        pytest.param(10_000, 19_999, False, id="less-than-twice"),
        pytest.param(100, 1_100, True, id="small-cap-1000-above"),
        pytest.param(100, 1_099, False, id="small-cap-less-than-1000-above"),
        pytest.param(50_000, 50_000, False, id="equal"),
    ],
)
def test_the_stream_must_leave_room_above_the_backlog_cap(queue: int, stream: int, accepted: bool) -> None:
    """What ``XADD MAXLEN ~`` trims is lost without a counter: the cap (``queue_full``, counted) must act first."""
    if accepted:
        SidecarSettings(queue_max_length=queue, stream_maxlen=stream)
    else:
        with pytest.raises(ValidationError, match=r"VAI_STREAM_MAXLEN \(\d+\) must exceed VAI_QUEUE_MAX_LENGTH"):
            SidecarSettings(queue_max_length=queue, stream_maxlen=stream)


def test_a_model_section_s_sampling_error_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "vai.toml"
    config.write_text("[models.m.sampling]\nevery_n = 0\n", encoding="utf-8")
    line = _refusal(monkeypatch, VAI_CONFIG_FILE=str(config))
    assert line == "[models.m.sampling] every_n: Input should be greater than or equal to 1 (got 0)"


@pytest.mark.parametrize(
    ("env", "file", "where"),
    [
        pytest.param({"VAI_SAMPLING__EVERY_N": "0"}, None, "VAI_SAMPLING__EVERY_N", id="nested-variable"),
        pytest.param({"vai_sampling__every_n": "0"}, None, "vai_sampling__every_n", id="as-the-user-spelt-it"),
        pytest.param({"VAI_SAMPLING": '{"every_n": 0}'}, None, "VAI_SAMPLING (every_n)", id="json-variable"),
        pytest.param({}, "[sampling]\nevery_n = 0\n", "{file}: [sampling] every_n", id="file"),
        pytest.param(
            {"VAI_SAMPLING__EVERY_N": "0"}, "[sampling]\nevery_n = 5\n", "VAI_SAMPLING__EVERY_N", id="env-wins"
        ),
        pytest.param(
            {"VAI_SAMPLING": '{"every_n": 0}'},
            "[sampling]\nevery_n = 5\n",
            "VAI_SAMPLING (every_n) or {file}: [sampling] every_n",
            id="cannot-tell-names-both",
        ),
    ],
)
def test_a_refusal_names_where_the_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], file: str | None, where: str
) -> None:
    config = tmp_path / "vai.toml"
    if file is not None:
        config.write_text(file, encoding="utf-8")
        env = {"VAI_CONFIG_FILE": str(config), **env}
    line = _refusal(monkeypatch, **env)
    assert line.startswith(where.format(file=config) + ": Input should be greater than or equal to 1"), line


def test_an_option_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _refusal(monkeypatch, "--port", "70000", VAI_PORT="8000").startswith("--port: ")


def test_the_monitor_s_option_is_named_for_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as refused:
        MonitorSettings(monitor_metrics_port=70000)
    assert describe(refused.value, options=["--metrics-port", "70000"]).startswith("--metrics-port: ")
    assert describe(refused.value, options=["--port", "70000"]).startswith("VAI_MONITOR_METRICS_PORT or ")


def test_a_missing_config_file_is_our_error_naming_it() -> None:
    with pytest.raises(ConfigFileError, match=r"^VAI_CONFIG_FILE: no such file: /nonexistent\.toml$"):
        RoleSettings(config_file="/nonexistent.toml")


def test_variables_of_every_role_are_declared_and_misspellings_are_not() -> None:
    """Every role's class is a root: ``VAI_WORKER_DEVICE`` is no typo in the sidecar's environment."""
    environ = {
        "VAI_WORKER_DEVICE": "cpu",
        "VAI_INGEST_TOKENS": "t",
        "VAI_DRIFT__ERT": "100",
        "VAI_MODELS__M__KSERVE__SCORES_ARE": "logits",
        "VAI_MODELS__M__SAMPLING__EVERY_N": "1",
        "vai_port": "1",
        "VAI_BOGUS": "1",
        "VAI_MAX_BATCHH": "5",
        "VAI_SAMPLING__EVRY_N": "1",
        "VAI_PORT__X": "1",
        "PATH": "/bin",
    }
    roots = [SidecarSettings, MonitorSettings, WorkerSettings]
    assert set(roots) <= set(role_classes())
    assert undeclared_variables(environ, roots) == [
        "VAI_BOGUS",
        "VAI_MAX_BATCHH (VAI_MAX_BATCH?)",
        "VAI_PORT__X",
        "VAI_SAMPLING__EVRY_N (VAI_SAMPLING__EVERY_N?)",
    ]


def test_keys_of_the_file_no_role_declares_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "vai.toml"
    config.write_text("max_bach = 5\ncohort_keys = []\n[drift]\nert = 100\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="common.settings"):
        warn_undeclared({"VAI_CONFIG_FILE": str(config)}, config)
    assert [record.getMessage() for record in caplog.records] == [
        f"{config}: max_bach (max_batch?): no role has such a setting; ignored"
    ]


def test_the_demo_checks_every_role_s_settings_before_it_starts_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's settings were built once Redis and the model were up, and a mistake was logged with its
    traceback as 'the demo failed'; refused up front, ``vai-sidecar demo`` names it on one line."""
    from demo.main import check_role_settings

    monkeypatch.setenv("VAI_DRIFT__WINDOW_SIZE", "2000")
    with pytest.raises(ValidationError) as refused:
        check_role_settings(SidecarSettings())
    assert refused.value.title == "MonitorSettings"
    assert describe(refused.value).startswith("VAI_DRIFT__WINDOW_SIZE: the online detector's reference")
