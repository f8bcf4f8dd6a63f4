"""compose.yaml, checked without Docker: parsed, and every service's command run as a process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared import settings
from shared.settings import FederationSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
FEDQ_SERVICES = [name for name in SERVICES if name != "redis"]


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


def test_redis_keeps_data_and_reports_health():
    redis = SERVICES["redis"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert redis["healthcheck"]["test"][-1] == "ping"
    assert any(v.endswith(":/data") for v in redis["volumes"])


@pytest.mark.parametrize("name", FEDQ_SERVICES)
def test_every_command_is_a_fedq_command_that_runs(name):
    command = SERVICES[name]["command"]
    assert command[0] == "fedq"
    proc = subprocess.run([sys.executable, "-m", "shared", command[1], "--help"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # every option the service passes is one the command knows
    for option in (c for c in command[2:] if c.startswith("--")):
        assert option in proc.stdout, f"{name}: {option} is not an option of fedq {command[1]}"
    assert SERVICES[name]["environment"]["FEDQ_REDIS_URL"].startswith("redis://redis:")


@pytest.mark.parametrize("name", [n for n in FEDQ_SERVICES if n.startswith("worker-")])
def test_workers_scale_outlast_a_job_and_see_only_their_region(name):
    service = SERVICES[name]
    region = name.removeprefix("worker-")
    assert service["deploy"]["replicas"] >= 2
    assert _seconds(service["stop_grace_period"]) > FederationSettings().job_timeout
    assert service["command"][service["command"].index("--region") + 1] == region
    mounted = {v.split(":")[0] for v in service["volumes"]}
    assert mounted == {"./data/meta.json", "./data/catalogue.csv", f"./data/{region}"}


def test_the_settings_file_documents_every_setting_at_its_default():
    import dataclasses
    import tomllib

    loaded = settings.load(ROOT / "fedq.toml")
    assert loaded == settings.FederationSettings()
    raw = tomllib.loads((ROOT / "fedq.toml").read_text())
    fields = {f.name for f in dataclasses.fields(settings.FederationSettings)}
    assert fields - set(raw) == set()
    assert {f.name for f in dataclasses.fields(settings.TrainSettings)} - set(raw["train"]) == set()
