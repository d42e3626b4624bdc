from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["support.fixtures"]

REPO = Path(__file__).resolve().parent.parent

# Everything that could make a test depend on the machine it runs on, or leak into a child.
STRIPPED_PREFIXES = ("KAI_RUN_",)
STRIPPED = {
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
    "NO_PROXY", "no_proxy", "OPENAI_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "AWS_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT", "NODE_EXTRA_CA_CERTS",
    "PYTHONHTTPSVERIFY", "NODE_TLS_REJECT_UNAUTHORIZED", "GIT_SSL_NO_VERIFY", "NODE_USE_ENV_PROXY",
    "REQUEST_METHOD", "XDG_CONFIG_DIRS", "JAVA_TOOL_OPTIONS", "MAVEN_OPTS", "JDK_JAVA_OPTIONS",
    "_JAVA_OPTIONS",
}  # fmt: skip


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the real home, config or cache, or inherits a proxy/CA variable."""
    for name in list(os.environ):
        if name in STRIPPED or name.startswith(STRIPPED_PREFIXES):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_DATA_HOME", "data"),
    ):
        monkeypatch.setenv(var, str(tmp_path / "xdg" / sub))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "xdg" / "site"))
    return tmp_path


class Run:
    """The result of running kai-run as a real subprocess."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def __repr__(self) -> str:
        return f"Run(rc={self.returncode}, stdout={self.stdout!r}, stderr={self.stderr!r})"


@pytest.fixture
def kai_run():
    """Run the installed CLI (`python -m kai_launch`) as a subprocess with the test's environment."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60, **kw) -> Run:
        full = dict(os.environ)
        if env:
            full.update(env)
        proc = subprocess.run(
            [sys.executable, "-m", "kai_launch", *args],
            env=full,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kw,
        )
        return Run(proc)

    return run


@pytest.fixture
def write_profiles(tmp_path: Path):
    """Write a profile file (dedented) and return its path."""

    def write(text: str, name: str = "profiles.toml", directory: Path | None = None) -> Path:
        path = (directory or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
