"""Shared fixtures: a small generated data set, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.task import generate


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "small"
    generate.write(generate.generate(seed=3, scale="small"), out)
    return out
