"""Where kai-run keeps its files: config, cache, state and logs.

All locations are platformdirs' (appname "kai-run"). They are computed by functions, never at import
time, so tests can redirect them through XDG_* variables. On XDG platforms (Linux, the BSDs) the rules
are re-stated here because importing platformdirs costs more than the whole exec path may spend
(see bench/startup.py); tests/test_paths.py checks that both agree. Elsewhere platformdirs answers.
"""

from __future__ import annotations

import os
import sys

APP = "kai-run"
PROFILES_FILE = "profiles.toml"


def _xdg_platform() -> bool:
    # platformdirs uses its Unix (XDG) class for everything but Windows, macOS and Android.
    return sys.platform not in ("win32", "darwin", "android") and "ANDROID_DATA" not in os.environ


def _xdg(var: str, default: str) -> str:
    # Like platformdirs >= 4.3, a relative XDG value is ignored (the spec says it is invalid).
    value = os.environ.get(var, "")
    if not os.path.isabs(value):
        value = os.path.expanduser(default)
    return os.path.join(value, APP)


def user_config_dir() -> str:
    if _xdg_platform():
        return _xdg("XDG_CONFIG_HOME", "~/.config")
    import platformdirs

    return platformdirs.user_config_dir(APP)


def site_config_dir() -> str:
    if _xdg_platform():
        dirs = [
            d for d in os.environ.get("XDG_CONFIG_DIRS", "").split(os.pathsep) if os.path.isabs(d)
        ]
        return os.path.join(dirs[0] if dirs else "/etc/xdg", APP)
    import platformdirs

    return platformdirs.site_config_dir(APP)


def user_cache_dir() -> str:
    if _xdg_platform():
        return _xdg("XDG_CACHE_HOME", "~/.cache")
    import platformdirs

    return platformdirs.user_cache_dir(APP)


def user_state_dir() -> str:
    if _xdg_platform():
        return _xdg("XDG_STATE_HOME", "~/.local/state")
    import platformdirs

    return platformdirs.user_state_dir(APP)


def user_log_dir() -> str:
    if _xdg_platform():
        return os.path.join(user_state_dir(), "log")
    import platformdirs

    return platformdirs.user_log_dir(APP)


def user_config_file() -> str:
    return os.path.join(user_config_dir(), PROFILES_FILE)


def site_config_file() -> str:
    return os.path.join(site_config_dir(), PROFILES_FILE)
