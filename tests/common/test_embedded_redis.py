"""The embedded Redis the sidecar starts when no VAI_REDIS_URL is given."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import redis

from common.embedded_redis import EmbeddedRedis
from helpers import redis_servers_in, wait_until


def test_a_redis_server_that_dies_is_started_again_with_its_data(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    stop = threading.Event()
    watcher = threading.Thread(target=server.watch, args=(stop,), kwargs={"period_s": 0.05}, daemon=True)
    watcher.start()
    client = redis.Redis(port=server.port, socket_timeout=1, socket_connect_timeout=1)
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
