"""Baselines trained side by side in processes of their own match those trained one by one."""

from __future__ import annotations

import pytest

from harness.baselines import FitSettings, run_baselines
from tasks.api import TaskError


def test_fits_in_processes_give_the_figures_of_fits_in_turn(small_data):
    settings = FitSettings(settings={"baseline_batch_size": 512, "dim": 16}, max_epochs=2)
    messages: list[str] = []
    alone = run_baselines("recommender", small_data, ("local", "centralized", "popularity"),
                          settings, say=messages.append)  # fmt: skip
    side_by_side = run_baselines("recommender", small_data, ("local", "centralized"), settings,
                                 processes=2)  # fmt: skip
    for mode in ("local", "centralized"):
        assert side_by_side[mode].regions == alone[mode].regions
        assert side_by_side[mode].epochs == alone[mode].epochs
        assert list(side_by_side[mode].regions) == list(alone["popularity"].regions)
    assert set(alone["local"].epochs) == set(alone["local"].regions)
    assert set(alone["centralized"].epochs) == {"all"}
    assert any(m.startswith("centralized epoch 1:") for m in messages)
    assert any(m.startswith("local [me] epoch 1:") for m in messages)


def test_a_bad_setting_or_mode_fails_before_any_fit(small_data):
    with pytest.raises(TaskError, match="unknown baseline 'nearest'"):
        run_baselines("recommender", small_data, ("local", "nearest"),
                      processes=2)  # fmt: skip
    with pytest.raises(TaskError, match="dimm"):
        run_baselines("recommender", small_data, ("local",), FitSettings(settings={"dimm": 3}),
                      processes=2)  # fmt: skip


def test_missing_baselines_are_computed_once_then_read_from_the_cache(small_data, tmp_path):
    import shutil

    from reporting.report import ensure_baselines
    from tasks.api import load_task

    task, data = load_task("recommender"), tmp_path / "data"
    shutil.copytree(small_data, data)
    name, settings = task.describe(data).name, task.settings({"dim": 16})
    messages: list[str] = []
    done = ensure_baselines(task, data, name, settings, messages.append)
    assert set(done) == {"local", "centralized"}
    assert len(list((data / "baselines").glob("recommender-*.json"))) == 2
    assert any("processes side by side" in m for m in messages)
    messages.clear()
    again = ensure_baselines(task, data, name, settings, messages.append)
    assert again == done and not messages  # read back, not trained again
    other = ensure_baselines(task, data, name, task.settings({"dim": 8}), messages.append)
    assert other["local"]["overall"] != done["local"]["overall"]  # other settings, other models
