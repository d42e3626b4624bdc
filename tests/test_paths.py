"""paths.py restates platformdirs' XDG rules for speed; it must give the same answers."""

from __future__ import annotations

import platformdirs
import pytest

from kai_launch import paths


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"XDG_CONFIG_HOME": "/x/conf", "XDG_CACHE_HOME": "/x/cache", "XDG_STATE_HOME": "/x/state"},
        {"XDG_CONFIG_HOME": "relative/ignored", "XDG_CACHE_HOME": "", "XDG_STATE_HOME": "  "},
        {"XDG_CONFIG_DIRS": "/etc/corp:/etc/xdg"},
        {"XDG_CONFIG_DIRS": "rel:/abs/second"},
        {"XDG_CONFIG_DIRS": ""},
    ],
)
def test_same_answers_as_platformdirs(monkeypatch, env):
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_DIRS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert paths.user_config_dir() == platformdirs.user_config_dir("kai-run")
    assert paths.site_config_dir() == platformdirs.site_config_dir("kai-run")
    assert paths.user_cache_dir() == platformdirs.user_cache_dir("kai-run")
    assert paths.user_state_dir() == platformdirs.user_state_dir("kai-run")
    assert paths.user_log_dir() == platformdirs.user_log_dir("kai-run")
    assert paths.user_config_file() == str(
        platformdirs.user_config_path("kai-run") / "profiles.toml"
    )
    assert paths.site_config_file() == str(
        platformdirs.site_config_path("kai-run") / "profiles.toml"
    )
