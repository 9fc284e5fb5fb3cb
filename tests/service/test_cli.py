"""`vai-sidecar serve` as a user runs it: embedded Redis, real HTTP, a real Prometheus scraping it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.embedded_redis import free_port
from helpers import event, redis_servers_in, wait_until
from service.main import stop_child


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
    env.update({"VAI_SAMPLING__EVERY_N": "1", "VAI_LOG_LEVEL": "warning", "VAI_COHORT_KEYS": "region"})
    process = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/livez", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None and pytest.fail(f"serve exited with {process.returncode}")

    wait_until(up, timeout_s=30, what="vai-sidecar serve to answer /livez")
    yield base, process
    if process.poll() is None:
        process.terminate()  # SIGKILL would orphan the embedded redis-server
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_uses_an_embedded_redis_and_stops_it(served: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    base, process = served
    response = httpx.post(f"{base}/v1/events", json={"events": [event("a"), event("b")]})
    assert response.status_code == 202
    assert [s["request_id"] for s in response.json()["sampled"]] == ["a", "b"]
    # The server bounds a request's head (service.http.protocol): uvicorn alone kept 1 GB of headers.
    refused = httpx.get(f"{base}/livez", headers={f"x-h{n}": "1" for n in range(150)})
    assert (refused.status_code, refused.json()["field"]) == (431, "headers")
    wait_until(
        lambda: httpx.get(f"{base}/status").json()["queue_lengths"].get("digits") == 2,
        what="both samples in the embedded Redis stream",
    )
    assert (tmp_path / ".vai-data" / "redis").is_dir()

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert redis_servers_in(tmp_path / ".vai-data" / "redis") == [], "the embedded redis-server outlived the sidecar"


def test_prometheus_scrapes_the_sidecar(served: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (scripts/setup.sh installs it)")
        pytest.skip("prometheus is not installed")
    base, _ = served
    httpx.post(f"{base}/v1/events", json={"events": [event(f"r{i}", cohort={"region": "eu"}) for i in range(3)]})
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: vai\n    static_configs: [{{targets: ['{base.removeprefix('http://')}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def scraped() -> float | None:
            try:
                query = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": 'sum(vai_cohort_events_total{cohort="region",value="eu"})'},
                    timeout=1,
                ).json()
            except (httpx.HTTPError, ValueError):
                return None
            results = query.get("data", {}).get("result", [])
            return float(results[0]["value"][1]) if results else None

        assert wait_until(scraped, timeout_s=30, what="Prometheus to scrape vai metrics") == 3.0
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets").json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        prometheus.terminate()
        prometheus.wait(10)


def _monitor_children(parent: int) -> list[int]:
    """Pids of the ``vai-sidecar monitor`` children of ``parent``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"monitor" in command:
            found.append(int(proc.name))
    return found


def test_an_embedded_monitor_that_dies_is_started_again(served: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, process = served
    (first,) = wait_until(lambda: _monitor_children(process.pid), what="the embedded monitor child")
    os.kill(first, signal.SIGKILL)
    (second,) = wait_until(
        lambda: [pid for pid in _monitor_children(process.pid) if pid != first], what="a new monitor child"
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    assert not Path(f"/proc/{second}").exists(), "the monitor started again outlived serve"


def test_ctrl_c_to_the_process_group_stops_serve_before_its_redis(tmp_path: Path) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group: the embedded redis-server is not in it
    (a session of its own), so it is stopped by serve, last, instead of exiting under the running sidecar."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).parents[2]), "VAI_MONITORS_ENABLED": "false"},
        start_new_session=True,  # its own group, as a shell gives a foreground job
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{base}/livez"), timeout_s=30, what="serve to answer /livez")
        assert httpx.get(f"{base}/docs").status_code == 404  # Swagger UI would load from a CDN: no docs pages
        assert httpx.get(f"{base}/openapi.json").status_code == 200
        (redis_pid,) = redis_servers_in(tmp_path / ".vai-data" / "redis")
        assert os.getpgid(redis_pid) != os.getpgid(process.pid)

        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    assert redis_servers_in(tmp_path / ".vai-data" / "redis") == []


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def _serve(
    cwd: Path, port: int, env: dict[str, str], *, stderr: int | Path = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """``vai-sidecar serve --port PORT`` in ``cwd``, with no ``VAI_*`` but ``env``; ``stderr`` to a file if a path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAI_")}
    clean.update({"PYTHONPATH": str(Path(__file__).parents[2]), "VAI_LOG_LEVEL": "warning", **env})
    command = [sys.executable, "-m", "common.cli", "serve", "--port", str(port)]
    if isinstance(stderr, Path):
        with stderr.open("wb") as sink:
            return subprocess.Popen(command, cwd=cwd, env=clean, stderr=sink)
    return subprocess.Popen(command, cwd=cwd, env=clean, stderr=stderr)


def _refused(cwd: Path, port: int, **env: str) -> str:
    """What ``serve`` wrote to stderr, having exited with status 2 (a configuration error)."""
    process = _serve(cwd, port, env)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        stop_child(process)
    text = stderr.decode(errors="replace")
    assert process.returncode == 2, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text
    return text


@pytest.mark.parametrize(
    ("env", "named"),
    [
        pytest.param({"VAI_MONITOR_METRICS_PORT": "{port}"}, "VAI_MONITOR_METRICS_PORT", id="monitor-port-is-serve-s"),
        pytest.param({"VAI_MONITOR_METRICS_PORT": "{taken}"}, "VAI_MONITOR_METRICS_PORT", id="monitor-port-in-use"),
        pytest.param({"VAI_DRIFT__ERT": "abc"}, "VAI_DRIFT__ERT", id="bad-drift-variable"),
        pytest.param({"VAI_CONFIG_FILE": "vai.toml"}, "vai.toml", id="bad-drift-section"),
        pytest.param({"VAI_REDIS_DATA_DIR": "a-file"}, "VAI_REDIS_DATA_DIR", id="data-dir-is-a-file"),
        pytest.param({"VAI_REDIS_DATA_DIR": "/proc/nope"}, "VAI_REDIS_DATA_DIR", id="data-dir-not-creatable"),
    ],
)
def test_serve_refuses_a_setting_its_embedded_parts_cannot_run_with(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    """Each used to leave serve answering /livez while its embedded monitor failed and was started again for
    ever (a 25-line traceback every 30 s), or to end in a traceback of the embedded Redis."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "vai.toml").write_text('[drift]\nert = "abc"\n')
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:  # another sidecar's embedded monitor, say
        values = {k: v.format(port=port, taken=taken.getsockname()[1]) for k, v in env.items()}
        assert named in _refused(tmp_path, port, **values)
    assert not (tmp_path / ".vai-data").exists(), "something started before the refusal"


def test_a_second_serve_on_one_data_directory_is_refused(tmp_path: Path) -> None:
    """Both redis-servers appended to one .vai-data/redis/appendonly.aof."""
    first = _serve(tmp_path, free_port(), {"VAI_MONITORS_ENABLED": "false"}, stderr=tmp_path / "first.log")
    try:
        wait_until(lambda: redis_servers_in(tmp_path / ".vai-data" / "redis"), timeout_s=30, what="the first Redis")
        stderr = _refused(tmp_path, free_port(), VAI_MONITORS_ENABLED="false")
        assert (
            "VAI_REDIS_DATA_DIR" in stderr
            and f"in use by another embedded Redis (started by process {first.pid})" in stderr
        )
        assert len(redis_servers_in(tmp_path / ".vai-data" / "redis")) == 1
        assert first.poll() is None
    finally:
        stop_child(first)
    assert first.returncode == 0


def test_an_embedded_monitor_refused_by_its_settings_is_not_started_again(tmp_path: Path, redis_url: str) -> None:
    """Two sidecars of one host on one Redis: the second's monitor finds the metrics port taken by the first's, says
    so once and is not started again (the first's covers the models: the leases share them)."""
    port, log = free_port(), tmp_path / "serve.log"
    with socket.create_server(("127.0.0.1", 0)) as taken:  # the first sidecar's monitor
        env = {"VAI_REDIS_URL": redis_url, "VAI_MONITOR_METRICS_PORT": str(taken.getsockname()[1])}
        process = _serve(tmp_path, port, env, stderr=log)
        try:
            wait_until(lambda: "not started again" in log.read_text(), timeout_s=60, what="serve to give up")
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert "vai_embedded_monitor_up 0.0" in metrics
            # The line is logged as the watching thread returns: nothing is left that would start it again.
            assert _monitor_children(process.pid) == [], "the monitor was started again"
            assert httpx.get(f"http://127.0.0.1:{port}/livez").status_code == 200
        finally:
            stop_child(process)
    text = log.read_text()
    assert text.count("exited with status 2") == 1 and "Traceback" not in text, text
    (gave_up,) = [line for line in text.splitlines() if "not started again" in line]
    assert "VAI_MONITOR_METRICS_PORT" in gave_up and "Address already in use" in gave_up, gave_up
