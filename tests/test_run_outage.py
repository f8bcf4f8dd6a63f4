"""``fedq run`` itself rides out a Redis outage (its own embedded server killed and restarted on
its AOF, as an operator would), and gives up with one line and a report after a long one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import redis

from harness.audit import audit
from shared.acl import Users
from shared.auth import ACL_FILE, load_password
from shared.keys import Keys
from shared.redis_server import RedisServer, resolve_maxmemory
from tests.fleet import FEDQ, wait_until

TOY_RUN = ["--task", "toy", "--no-baselines", "--set", "job_seconds=0.2"]


def _start_run(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FEDQ_REDIS_URL", None)
    with log.open("wb") as out:
        return subprocess.Popen([*FEDQ, "run", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _server_of(run: subprocess.Popen, port: int) -> int | None:
    """The pid of the redis-server ``run`` (our child) started on ``port``, if it runs (the
    server sets its process title to its address)."""
    try:
        children = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"127.0.0.1:{port}".encode() in title:
            return int(pid)
    return None


def _version(client: redis.Redis) -> int:
    try:
        return int(client.get(Keys("fedq").version) or 0)
    except redis.RedisError:
        return 0


def test_fedq_run_rides_out_a_kill_9_of_its_redis_and_writes_its_report(toy_data, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    run = _start_run(["--data", str(toy_data), *TOY_RUN, "--target-versions", "80", "--out",
                      str(out)], log)  # fmt: skip
    restarted = None
    try:
        conf = out / "redis" / "redis.conf"
        assert wait_until(conf.exists, 60), log.read_text()
        port = int(next(x.split()[1] for x in conf.read_text().splitlines()
                        if x.startswith("port ")))  # fmt: skip
        assert wait_until(lambda: _server_of(run, port), 30), log.read_text()
        pid = _server_of(run, port)
        admin = Users("fedq").admin
        assert wait_until(lambda: load_password(out / "keys", admin), 30)
        login = (admin, load_password(out / "keys", admin) or "")
        client = redis.Redis(port=port, username=login[0], password=login[1], socket_timeout=5)
        assert client.config_get("maxmemory")["maxmemory"] == str(resolve_maxmemory())
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert wait_until(lambda: _version(client) >= 15, 90), log.read_text()
        os.kill(pid, signal.SIGKILL)  # the run's own server, a grandchild of this test
        assert wait_until(lambda: "fedq run: Redis unreachable" in log.read_text(), 30)
        # restarted on the same port, directory and AOF, with the run's ACL users: the run no
        # longer owns it, and must neither end nor shut it down
        restarted = RedisServer(out / "redis", port=port, acl_file=out / "keys" / ACL_FILE,
                                admin=login, maxmemory=resolve_maxmemory()).start()  # fmt: skip
        assert run.wait(timeout=150) == 0, log.read_text()
        text = log.read_text()
        assert text.count("fedq run: Redis unreachable") == 1, text
        assert "fedq run: Redis reachable again" in text, text
        assert "Traceback" not in text, text
        report = json.loads((out / "report.json").read_text())
        assert report["versions"] >= 80 and report["final"]["regions"], report.keys()
        assert restarted.ping()  # still the test's, still serving
        result = audit(restarted.client(), Keys("fedq"))
        assert result.ok and result.applied >= 80, result.problems
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(timeout=60)
        if restarted is not None:
            restarted.stop()


def test_fedq_run_gives_up_on_a_redis_gone_for_good_in_one_line_with_a_report(toy_data, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    out, log = tmp_path / "run", tmp_path / "run.log"
    run = _start_run(["--data", str(toy_data), *TOY_RUN, "--target-versions", "5000",
                      "--redis-url", server.url, "--redis-patience", "3", "--out", str(out)],
                     log)  # fmt: skip
    try:
        assert wait_until(lambda: _version(server.client()) >= 10, 90), log.read_text()
        server.process.send_signal(signal.SIGKILL)  # gone, and nobody restarts it
        server.process.wait()
        code = run.wait(timeout=120)
        text = log.read_text()
        assert code == 1, text
        assert "Traceback" not in text, text
        assert text.count("fedq run: Redis unreachable") == 1, text
        last = text.strip().splitlines()[-1]
        assert last.startswith(f"Error: Redis at {server.url} unreachable for more than 3s"), last
        assert str(out / "report.json") in last, last
        report = json.loads((out / "report.json").read_text())
        assert "giving up" in report["error"] and report["progress"]["version"] > 0, report
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(timeout=60)
        server.stop()
