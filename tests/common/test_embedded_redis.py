"""The embedded Redis the sidecar starts when no VAI_REDIS_URL is given."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import redis

from common.embedded_redis import DataDirUnusable, EmbeddedRedis
from helpers import redis_servers_in, wait_until


def test_a_redis_server_that_dies_is_started_again_with_its_data(tmp_path: Path) -> None:
    """As serve runs it (private): started again with the same password, so its clients' URL still works."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", private=True).start()
    stop = threading.Event()
    watcher = threading.Thread(target=server.watch, args=(stop,), kwargs={"period_s": 0.05}, daemon=True)
    watcher.start()
    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.config_set("appendfsync", "always")
        client.set("kept", "yes")
        (pid,) = redis_servers_in(server.data_dir)
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
        wait_until(lambda: redis_servers_in(server.data_dir) not in ([], [pid]), what="a new redis-server")

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, what="the same port to answer again")
        assert client.get("kept") == b"yes"
        stop.set()
        watcher.join(5)
        server.stop()  # stopped by us: not started again
        assert redis_servers_in(server.data_dir) == []
    finally:
        stop.set()
        client.close()
        server.stop()


def test_a_data_directory_holds_one_embedded_redis_at_a_time(tmp_path: Path) -> None:
    """Two redis-servers on one directory appended to one file, and a restart loaded both datasets mixed."""
    first = EmbeddedRedis(data_dir=tmp_path / "redis", append_only=False).start()
    second = EmbeddedRedis(data_dir=tmp_path / "redis", append_only=False)
    try:
        with pytest.raises(
            DataDirUnusable, match=rf"in use by another embedded Redis \(started by process {os.getpid()}\)"
        ):
            second.start()
        assert len(redis_servers_in(first.data_dir)) == 1
        first.kill()
        first.start()  # started again by its owner (as its watcher does): still the one holding the directory
        with pytest.raises(DataDirUnusable):
            second.start()
        first.stop()
        second.start()  # stopped: the directory is free
        assert len(redis_servers_in(second.data_dir)) == 1
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize(
    "where",
    [pytest.param("a-file", id="a-file"), pytest.param("/proc/nope", id="not-creatable")],
)
def test_a_data_directory_that_cannot_be_one_is_refused_in_a_sentence(tmp_path: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("")
    server = EmbeddedRedis(data_dir=tmp_path / where)
    with pytest.raises(DataDirUnusable, match=r"is not a directory|cannot hold the embedded Redis"):
        server.start()
    server.stop()


def test_a_private_server_takes_only_clients_with_its_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Any local user reached the sidecar's Redis: every stored input, and CONFIG SET dir + SAVE to write files."""
    caplog.set_level("INFO", logger="common.embedded_redis")
    with EmbeddedRedis(data_dir=tmp_path / "redis", private=True, append_only=False) as server:
        (pid,) = redis_servers_in(server.data_dir)
        password = server.url.split("@")[0].rsplit(":", 1)[1]
        assert len(password) >= 32
        with pytest.raises(redis.AuthenticationError), redis.Redis(port=server.port) as stranger:
            stranger.config_set("dir", str(tmp_path))
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()  # ps shows every user that
        assert (server.data_dir.stat().st_mode & 0o777) == 0o700
    assert password not in caplog.text and f"127.0.0.1:{server.port}" in caplog.text
