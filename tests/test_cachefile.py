"""Private cache files: atomic, 0600, in 0700 directories up to the cache root."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from kai_launch import paths
from kai_launch.cachefile import write_private, write_quietly

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_private_modes_and_no_temp_file_left() -> None:
    target = os.path.join(paths.user_cache_dir(), "things", "a.bin")
    write_private(target, b"one")
    write_private(target, b"two")
    assert Path(target).read_bytes() == b"two"
    assert mode(target) == 0o600
    assert mode(os.path.dirname(target)) == 0o700
    assert mode(paths.user_cache_dir()) == 0o700
    assert os.listdir(os.path.dirname(target)) == ["a.bin"]


def test_an_existing_open_directory_is_tightened() -> None:
    directory = os.path.join(paths.user_cache_dir(), "ca")
    os.makedirs(directory, mode=0o755)
    os.chmod(paths.user_cache_dir(), 0o755)
    os.chmod(directory, 0o755)
    write_private(os.path.join(directory, "x.pem"), b"x")
    assert mode(directory) == 0o700
    assert mode(paths.user_cache_dir()) == 0o700


def test_write_quietly_reports_instead_of_raising() -> None:
    # A file where the directory should be: fails for root too.
    blocker = os.path.join(paths.user_cache_dir(), "blocked")
    os.makedirs(paths.user_cache_dir(), exist_ok=True)
    Path(blocker).write_text("not a directory")
    assert write_quietly(os.path.join(blocker, "f"), b"x") is False
    with pytest.raises(OSError):
        write_private(os.path.join(blocker, "f"), b"x")
    assert Path(blocker).read_text() == "not a directory"


def test_a_launch_keeps_the_cache_root_private(kai_run, write_profiles) -> None:
    # Everything a launch writes (merged bundle, truststore) lands under a private root.
    config = write_profiles('[profiles.x]\nca_mode = "system"\njvm = true\n')
    run = kai_run("-c", str(config), "-p", "x", "--", sys.executable, "-c", "pass")
    assert run.returncode == 0, run
    root = Path(os.environ["XDG_CACHE_HOME"]) / "kai-run"
    assert mode(root) == 0o700
    assert mode(root / "ca") == 0o700
    assert {mode(f) for f in (root / "ca").iterdir()} == {0o600}
