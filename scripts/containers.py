"""fedq's containers for real: build the images, run compose.yaml, kill a worker, audit.

    sudo python scripts/containers.py build   # the images only (fedq-base, fedq-redis, fedq)
    sudo python scripts/containers.py test    # build, then a federation under docker-compose

Needs root and Debian's ``docker.io``, ``docker-compose`` and ``debootstrap`` (apt-get install).
It starts a dockerd of its own (``--bridge=none --iptables=false --ip-forward=false``, its data
under a temporary directory, its own socket), so no container gets a network address: every
service runs with host networking and talks over 127.0.0.1 only. No registry is needed: the
base image is Debian bookworm made by debootstrap and imported, fedq is installed from a
wheelhouse the host's pip fills (``build/wheels``), Redis is Debian's redis-server.

``test`` generates the small data set, writes compose.yaml with the test's changes (host
networking, Redis on a free loopback port, one worker per region, a small target) beside it,
runs ``docker-compose up``, kills one worker container's process with SIGKILL when the
federation is under way, checks that Docker restarted it and that the federation reached its
target with ``fedq audit`` passing (every update applied once or rejected), that the regional
service serves the final version, then tears everything down: the compose project, dockerd and
everything it made. It prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import yaml  # noqa: E402

from shared.keys import Keys  # noqa: E402
from shared.processes import wait_until  # noqa: E402
from shared.redis_server import free_port  # noqa: E402
from shared.streams import applied_updates  # noqa: E402

TOOLS = ("dockerd", "docker", "docker-compose", "debootstrap")
PROJECT = "fedqtest"
TARGET = 1200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["build", "test"])
    args = parser.parse_args()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        need = ", ".join(missing or TOOLS)
        print(f"containers: needs root and {need} (apt-get install docker.io docker-compose "
              "debootstrap)", file=sys.stderr)  # fmt: skip
        return 1
    work = Path(tempfile.mkdtemp(prefix="fedq-containers-"))
    daemon = Dockerd(work / "docker")
    try:
        daemon.start()
        started = time.monotonic()
        build_images(work, daemon.env)
        print(f"images built in {time.monotonic() - started:.0f} s", flush=True)
        if args.what == "test":
            return run_federation(work, daemon.env)
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"containers: {' '.join(map(str, exc.cmd))[:200]} failed ({exc.returncode})",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


class Dockerd:
    """A dockerd of the script's own: no bridge, no iptables, its data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{directory}/docker.sock"}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        log = (self.dir / "dockerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--bridge=none", "--iptables=false", "--ip-forward=false",
             "--ip-masq=false", "--data-root", str(self.dir / "data"),
             "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "dockerd.pid"),
             "-H", self.env["DOCKER_HOST"]],
            stdout=log, stderr=log)  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "info"], env=self.env, capture_output=True).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(
                    f"dockerd did not start: {(self.dir / 'dockerd.log').read_text()[-800:]}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        ids = subprocess.run(["docker", "ps", "-aq"], env=self.env, capture_output=True,
                             text=True).stdout.split()  # fmt: skip
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], env=self.env, capture_output=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        # what dockerd leaves mounted under its directories (its default netns handle)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for target in sorted((m for m in mounts if m.startswith(str(self.dir))), reverse=True):
            subprocess.run(["umount", target], capture_output=True)


def build_images(work: Path, env: dict[str, str]) -> None:
    rootfs = work / "rootfs"
    _run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs),
          "http://deb.debian.org/debian"], env, quiet=True)  # fmt: skip
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "-", "fedq-base:bookworm"], stdin=tar.stdout, env=env,
                   check=True, capture_output=True)  # fmt: skip
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    wheels = ROOT / "build" / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "-q", "--wheel-dir", str(wheels), str(ROOT)], env, quiet=True)
    # Debian's Python is 3.11.2: redis-py wants async-timeout below 3.11.3, the host may not
    _run([*pip, "download", "-q", "--no-deps", "-d", str(wheels), "async-timeout>=4.0.3"], env,
         quiet=True)  # fmt: skip
    for dockerfile, tag in (("docker/redis.Dockerfile", "fedq-redis:latest"),
                            ("docker/Dockerfile", "fedq:latest")):  # fmt: skip
        _run(["docker", "build", "--network", "host", "-f", str(ROOT / dockerfile), "-t", tag,
              str(ROOT)], env, quiet=True)  # fmt: skip


def test_compose(work: Path, data: Path, redis_port: int, service_port: int) -> Path:
    """compose.yaml as the test runs it: host networking (no container address), Redis on a
    loopback port, one worker per region, the service on loopback, absolute host paths."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    url = f"redis://127.0.0.1:{redis_port}/0"
    for name, service in compose["services"].items():
        service["network_mode"] = "host"
        service.pop("ports", None)
        service.pop("build", None)  # built above, with the host's network
        service.get("deploy", {})["replicas"] = 1
        if name == "redis":
            service["command"] += ["--port", str(redis_port), "--bind", "127.0.0.1"]
            service["healthcheck"]["test"] = ["CMD", "redis-cli", "-p", str(redis_port), "ping"]
            continue
        service["environment"] = {**service["environment"], "FEDQ_REDIS_URL": url}
        if name.startswith("service-"):
            command = service["command"]
            command[command.index("--host") + 1] = "127.0.0.1"
            command[command.index("--port") + 1] = str(service_port)
        volumes = []
        for volume in service.get("volumes", []):
            volume = volume.replace("${FEDQ_DATA:-./data}", str(data))
            volume = volume.replace("${FEDQ_CONFIG:-./fedq.toml}", str(work / "fedq.toml"))
            volumes.append(volume)
        service["volumes"] = volumes
    path = work / "compose.yaml"
    path.write_text(yaml.safe_dump(compose, sort_keys=False))
    return path


def run_federation(work: Path, env: dict[str, str]) -> int:
    data = work / "data"
    _run([sys.executable, "-m", "cli", "data", "generate", "--scale", "small", "--out",
          str(data)], env, quiet=True)  # fmt: skip
    settings = _with_settings((ROOT / "fedq.toml").read_text(), target_versions=TARGET,
                              eval_every=8)  # fmt: skip
    (work / "fedq.toml").write_text(settings)
    redis_port, service_port = free_port(), free_port()
    compose = test_compose(work, data, redis_port, service_port)
    base = ["docker-compose", "-f", str(compose), "-p", PROJECT, "--compatibility"]
    r = redis.Redis(port=redis_port)
    started = time.monotonic()
    try:
        _run([*base, "up", "-d"], env, quiet=True)
        if not wait_until(lambda: _version(r) >= TARGET // 4, 600, poll=0.2):
            return _fail("the federation did not start", base, env)
        victim = _container(base, env, "worker-cn")
        pid = int(_out(["docker", "inspect", "-f", "{{.State.Pid}}", victim], env))
        os.kill(pid, signal.SIGKILL)  # a process this script's dockerd started
        killed_at = _version(r)
        if not wait_until(lambda: _restarts(victim, env) >= 1 and _running(victim, env), 120):
            return _fail("the killed worker was not restarted", base, env)
        restarted_at, restarted_t = _version(r), time.monotonic()

        def cn_after() -> list[dict]:  # only one cn worker: a cn update now is the restarted one's
            return [u for u in applied_updates(r, Keys("fedq"))
                    if u["region"] == "cn" and u["version"] > restarted_at]  # fmt: skip

        if not wait_until(lambda: cn_after() or r.exists("fedq:done"), 300):
            return _fail("the restarted cn worker applied nothing", base, env, "worker-cn")
        resumed = time.monotonic() - restarted_t
        if not wait_until(lambda: r.exists("fedq:done"), 900):
            return _fail("the federation did not reach its target", base, env)
        seconds = time.monotonic() - started
        audit = subprocess.run([sys.executable, "-m", "cli", "audit", "--json",
                                "--redis-url", f"redis://127.0.0.1:{redis_port}/0"],
                               env=env, capture_output=True, text=True)  # fmt: skip
        report = json.loads(audit.stdout) if audit.stdout.strip().startswith("{") else {}
        ready = wait_until(lambda: _served(service_port) == _version(r), 120)
        after = cn_after()
        print(f"federation in containers: version {_version(r)} (target {TARGET}) in "
              f"{seconds:.0f} s; worker-cn killed (SIGKILL) at version {killed_at}, restarted "
              f"by Docker ({_restarts(victim, env)} restart), its first update applied "
              f"{resumed:.0f} s after the restart ({len(after)} in all); fedq audit: "
              f"{'passed' if audit.returncode == 0 else 'FAILED'} {json.dumps(report)[:300]}; "
              f"service-cn serves version {_served(service_port)}", flush=True)  # fmt: skip
        if not after:
            return _fail("the restarted cn worker applied nothing", base, env, "worker-cn")
        return 0 if audit.returncode == 0 and ready else 1
    finally:
        subprocess.run([*base, "down", "-v", "--remove-orphans"], env=env, capture_output=True)


def _with_settings(toml: str, **values: int) -> str:
    lines = []
    for line in toml.splitlines():
        key = line.split("=")[0].strip()
        if key in values and not line.lstrip().startswith("#"):
            line = f"{key} = {values.pop(key)}"
        lines.append(line)
    head = [f"{k} = {v}" for k, v in values.items()]  # top-level keys come before any table
    return "\n".join([*head, *lines]) + "\n"


def _version(r: redis.Redis) -> int:
    try:
        return int(r.get("fedq:model:version") or -1)
    except redis.RedisError:
        return -1


def _served(port: int) -> int | None:
    from harness.serving import get

    status, body = get(f"http://127.0.0.1:{port}/readyz")
    return json.loads(body)["model_version"] if status == 200 else None


def _container(base: list[str], env: dict[str, str], service: str) -> str:
    return _out([*base, "ps", "-q", service], env).split()[0]


def _restarts(container: str, env: dict[str, str]) -> int:
    return int(_out(["docker", "inspect", "-f", "{{.RestartCount}}", container], env) or 0)


def _running(container: str, env: dict[str, str]) -> bool:
    return _out(["docker", "inspect", "-f", "{{.State.Running}}", container], env) == "true"


def _out(cmd: list[str], env: dict[str, str]) -> str:
    return subprocess.run(cmd, env=env, capture_output=True, text=True).stdout.strip()


def _run(cmd: list[str], env: dict[str, str], quiet: bool = False) -> None:
    subprocess.run(cmd, env=env, check=True, capture_output=quiet)


def _fail(why: str, base: list[str], env: dict[str, str], *services: str) -> int:
    logs = _out([*base, "logs", "--no-color", "--tail", "40", *services], env)
    print(f"containers: {why}\n{logs[-4000:]}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
