"""Federation settings: defaults, TOML, flags, and clear errors; a task checks its own."""

from __future__ import annotations

import pytest

from shared import settings
from shared.settings import FederationSettings, SettingsError
from tasks.api import TaskError, load_task


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('mode = "buffered"\nbuffer_size = 4\n[task_settings]\nlr = 0.01\n')
    loaded = settings.load(path, {"buffer_size": 8, "encoding": "int8", "alpha": None,
                                  "task_settings.dim": 16})  # fmt: skip
    assert loaded.mode == "buffered" and loaded.buffer_size == 8 and loaded.encoding == "int8"
    assert loaded.task_settings == {"lr": 0.01, "dim": 16}
    assert loaded.alpha == FederationSettings().alpha
    assert FederationSettings.from_json(loaded.to_json()) == loaded


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colour = 1\n", "unknown settings: colour"),
        ("[train]\nlr = 2\n", r"now \[task_settings\]"),
        ('mode = "fast"\n', "mode 'fast'"),
        ("alpha = 2.0\n", "alpha 2.0"),
        ("mode = \n", "not valid TOML"),
        ("task_settings = 3\n", "must be a table"),
        # TOML has nan and inf: a budget of NaN would pass every bound and cap nothing
        ("dp_clip = 1.0\ndp_epsilon = nan\n", "dp_epsilon must be finite"),
        ("time_budget = inf\n", "time_budget must be finite"),
        ("job_timeout = -5.0\n", "job_timeout and queue_ttl must be >= 1 second"),
        ("round_deadline = 0.0\n", "round_deadline > 0"),
        ("eval_every = -1\n", "eval_every, target_versions and eval_grace >= 0"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=needle):
        settings.load(path)


def test_another_task_starts_from_its_own_defaults(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text("[task_settings]\ndim = 16\n")
    loaded = settings.load(path, {"task": "toy"})
    assert loaded.task == "toy" and loaded.task_settings == {}


@pytest.mark.parametrize(
    ("task", "raw", "needle"),
    [
        ("recommender", {"speed": 2}, "no settings speed"),
        ("recommender", {"lr": "fast"}, "not a float"),
        ("recommender", {"dim": 0}, "must be positive"),
        ("toy", {"epochs": True}, "not a int"),
        ("recommender", {"lr": float("nan")}, "not a finite number"),
    ],
)
def test_a_task_refuses_settings_it_does_not_have(task, raw, needle):
    with pytest.raises(TaskError, match=needle):
        load_task(task).settings(raw)


def test_a_tasks_settings_fill_in_its_defaults():
    filled = load_task("recommender").settings({"lr": 1})
    assert filled["lr"] == 1.0 and isinstance(filled["lr"], float) and filled["dim"] == 64


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        settings.load(tmp_path / "nope.toml")


def test_the_decay_falls_linearly_to_the_floor_at_the_target():
    s = FederationSettings(target_versions=100, decay_floor=0.1)
    assert s.decay(0, 0.0) == pytest.approx(1.0)
    assert s.decay(50, 0.0) == pytest.approx(0.55)
    assert s.decay(100, 0.0) == pytest.approx(0.1)
    assert s.decay(500, 0.0) == pytest.approx(0.1)
    timed = FederationSettings(target_versions=0, time_budget=60.0, decay_floor=0.5)
    assert timed.decay(10_000, 30.0) == pytest.approx(0.75)
    assert FederationSettings(target_versions=0).decay(10_000, 1e6) == 1.0


def test_a_setting_is_found_under_its_flags_name():
    """``fedq run`` asks whether a setting was given by the name click gave its flag."""
    from cli.settings_options import param_of

    assert param_of("inflight_per_region") == "inflight"
    assert param_of("target_versions") == "target_versions"
    assert param_of("signed_updates") == "signed_updates"
