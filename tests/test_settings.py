"""Federation settings: defaults, TOML, flags, and clear errors."""

from __future__ import annotations

import pytest

from shared import settings
from shared.settings import FederationSettings, SettingsError


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('mode = "buffered"\nbuffer_size = 4\n[train]\nlr = 0.01\n')
    loaded = settings.load(path, {"buffer_size": 8, "train.encoding": "int8", "alpha": None})
    assert loaded.mode == "buffered" and loaded.buffer_size == 8
    assert loaded.train.lr == 0.01 and loaded.train.encoding == "int8"
    assert loaded.alpha == FederationSettings().alpha
    assert FederationSettings.from_json(loaded.to_json()) == loaded


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("colour = 1\n", "unknown settings: colour"),
        ("[train]\nspeed = 2\n", "train.speed"),
        ('mode = "fast"\n', "mode 'fast'"),
        ("alpha = 2.0\n", "alpha 2.0"),
        ("mode = \n", "not valid TOML"),
    ],
)
def test_bad_settings_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "f.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=needle):
        settings.load(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        settings.load(tmp_path / "nope.toml")


def test_local_lr_decays_linearly_to_the_floor_at_the_target():
    s = FederationSettings(target_versions=100, decay_floor=0.1)
    assert s.local_lr(0, 0.0) == pytest.approx(s.train.lr)
    assert s.local_lr(50, 0.0) == pytest.approx(s.train.lr * 0.55)
    assert s.local_lr(100, 0.0) == pytest.approx(s.train.lr * 0.1)
    assert s.local_lr(500, 0.0) == pytest.approx(s.train.lr * 0.1)
    timed = FederationSettings(target_versions=0, time_budget=60.0, decay_floor=0.5)
    assert timed.local_lr(10_000, 30.0) == pytest.approx(timed.train.lr * 0.75)
    assert FederationSettings(target_versions=0).local_lr(10_000, 1e6) == timed.train.lr
