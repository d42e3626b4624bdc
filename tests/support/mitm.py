"""A real mitmdump on loopback for tests, and the code that finds (or installs) it.

mitmproxy lives in its own venv (`<repo>/.venv-mitm`): on Python 3.11 it cannot share one
environment with the openai SDK 3.x (see issue 4), so tests run it as a separate program.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "ADD_HEADER_ADDON",
    "ADD_HEADER_DEFAULT_VALUE",
    "ADD_HEADER_NAME",
    "LOOPBACK_GUARD_ADDON",
    "MitmDump",
    "MitmError",
    "ensure_mitmdump",
    "find_mitmdump",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
MITM_VENV = REPO_ROOT / ".venv-mitm"
ENV_BINARY = "KAI_RUN_TEST_MITMDUMP"
# Which mitmproxy to install into a fresh `.venv-mitm`; overridable for other Pythons.
ENV_SPEC = "KAI_RUN_TEST_MITMPROXY_SPEC"
DEFAULT_SPEC = "mitmproxy>=11,<13"

ADDONS_DIR = Path(__file__).resolve().parent / "addons"
ADD_HEADER_ADDON = ADDONS_DIR / "add_header.py"
ADD_HEADER_NAME = "X-Corp-Auth"
ADD_HEADER_DEFAULT_VALUE = "kai-secret"
LOOPBACK_GUARD_ADDON = ADDONS_DIR / "loopback_only.py"

_STOP_GRACE = 5.0
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


class MitmError(RuntimeError):
    """mitmdump could not be found, installed, started or stopped."""


def _venv_bin(venv: Path, name: str) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / f"{name}.exe"
    return venv / "bin" / name


def find_mitmdump() -> Path | None:
    """The mitmdump to use: $KAI_RUN_TEST_MITMDUMP, then <repo>/.venv-mitm, then PATH."""
    env = os.environ.get(ENV_BINARY)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise MitmError(f"{ENV_BINARY}={env} is not a file")
        return p
    local = _venv_bin(MITM_VENV, "mitmdump")
    if local.is_file():
        return local
    found = shutil.which("mitmdump")
    return Path(found) if found else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (parallel sessions, xdist workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # Windows: no lock; concurrent first runs there are unlikely
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_mitmdump(*, install_timeout: float = 900.0) -> Path:
    """Find mitmdump, or install it into <repo>/.venv-mitm so a fresh checkout's tests run."""
    found = find_mitmdump()
    if found is not None:
        return found
    # The lock lives in the temp dir, not the repo, so it never shows up in `git status`.
    digest = hashlib.sha256(str(MITM_VENV).encode()).hexdigest()[:16]
    lock = Path(tempfile.gettempdir()) / f"kai-run-venv-mitm-{digest}.lock"
    target = _venv_bin(MITM_VENV, "mitmdump")
    with _file_lock(lock):
        if target.is_file():  # another session installed it while we waited
            return target
        spec = os.environ.get(ENV_SPEC, DEFAULT_SPEC)
        steps = [
            [sys.executable, "-m", "venv", str(MITM_VENV)],
            [str(_venv_bin(MITM_VENV, "python")), "-m", "pip", "install", "-q", spec],
        ]
        for cmd in steps:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=install_timeout, check=False
            )
            if proc.returncode != 0:
                raise MitmError(
                    f"installing mitmproxy for the tests failed: {' '.join(cmd)} exited "
                    f"{proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}\n"
                    f"Set {ENV_BINARY} to an existing mitmdump to skip the install."
                )
    if not target.is_file():
        raise MitmError(f"mitmproxy installed, but {target} does not exist")
    return target


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LIVE: set[MitmDump] = set()


@atexit.register
def _stop_leftovers() -> None:
    # Last resort for an interrupted run: never leave a mitmdump behind.
    for m in list(_LIVE):
        with contextlib.suppress(Exception):
            m.stop(check=False)


class MitmDump:
    """A real mitmdump listening on 127.0.0.1:<free port>, with its own confdir (and so its own CA).

    Every instance also loads `loopback_only.py`, which refuses non-loopback destinations before
    mitmproxy resolves or dials them. Use as a context manager; `stop()` terminates, then kills,
    the process group and raises if anything of it survives.
    """

    def __init__(
        self,
        binary: Path | str,
        *,
        confdir: Path | str | None = None,
        proxyauth: str | None = None,
        upstream_ca: Path | str | None = None,
        addons: Sequence[Path | str] = (),
        env: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
        loopback_only: bool = True,
        ready_timeout: float = 30.0,
    ) -> None:
        self.binary = Path(binary)
        self._own_confdir = confdir is None
        self.confdir = (
            Path(tempfile.mkdtemp(prefix="kai-mitm-")) if confdir is None else Path(confdir)
        )
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.proxyauth = proxyauth
        self.upstream_ca = Path(upstream_ca) if upstream_ca is not None else None
        self.addons = [Path(a) for a in addons]
        self.extra_env = dict(env or {})
        self.extra_options = dict(options or {})
        self.loopback_only = loopback_only
        self.ready_timeout = ready_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path = self.confdir / "mitmdump.log"
        self.command: list[str] = []
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ addresses and files
    @property
    def url(self) -> str:
        """The proxy URL without credentials."""
        return f"http://{self.host}:{self.port}"

    @property
    def url_with_auth(self) -> str:
        """The proxy URL with the proxyauth credentials in it (same as `url` without auth)."""
        if not self.proxyauth:
            return self.url
        return f"http://{self.proxyauth}@{self.host}:{self.port}"

    @property
    def ca_cert_path(self) -> Path:
        """mitmproxy's CA certificate (PEM), generated in the confdir at start."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ life cycle
    def build_command(self, port: int) -> list[str]:
        opts: dict[str, str] = {
            "confdir": str(self.confdir),
            "listen_host": self.host,
            "listen_port": str(port),
            # No mitm.it onboarding app: nothing served that tests did not ask for.
            "onboarding": "false",
            # Info level keeps "proxy listening at" (part of readiness) and errors in the log;
            # flow_detail 1 is one line per flow, enough to read a failure from the log tail.
            "termlog_verbosity": "info",
            "flow_detail": "1",
        }
        if self.proxyauth:
            opts["proxyauth"] = self.proxyauth
        if self.upstream_ca is not None:
            opts["ssl_verify_upstream_trusted_ca"] = str(self.upstream_ca)
        opts.update(self.extra_options)
        cmd = [str(self.binary)]
        for k, v in opts.items():
            cmd += ["--set", f"{k}={v}"]
        scripts = ([LOOPBACK_GUARD_ADDON] if self.loopback_only else []) + self.addons
        for s in scripts:
            cmd += ["-s", str(s)]
        return cmd

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
        # Unbuffered, so the log tail in an error message is complete.
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("SSLKEYLOGFILE", None)
        env.update(self.extra_env)
        return env

    def start(self) -> Self:
        if self._proc is not None:
            raise MitmError("mitmdump already started")
        if not self.binary.is_file():
            raise MitmError(f"mitmdump not found at {self.binary}")
        t0 = time.monotonic()
        # A port picked here can be taken before mitmdump binds it; retry on "address in use".
        for _attempt in range(3):
            self.port = _free_port()
            self.command = self.build_command(self.port)
            if self._launch_and_wait():
                self.startup_seconds = time.monotonic() - t0
                return self
        raise MitmError(f"mitmdump could not bind a free port:\n{self.log_tail()}")

    def _launch_and_wait(self) -> bool:
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.confdir,
                start_new_session=True,  # own process group: stop() kills all of it
            )
        _LIVE.add(self)
        marker = f"listening at {self.host}:{self.port}"
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = self.log_text()
                self._reap()
                if "address already in use" in text.lower():
                    return False
                raise MitmError(
                    f"mitmdump exited with {self._proc.returncode} before it was ready.\n"
                    f"command: {' '.join(self.command)}\nlog tail:\n{self.log_tail()}"
                )
            # The log line proves it is mitmdump (not a stranger) that owns the port.
            if (
                marker in self.log_text()
                and self.ca_cert_path.is_file()
                and _port_accepts(self.port)
            ):
                return True
            time.sleep(0.05)
        self.stop(check=False)
        raise MitmError(
            f"mitmdump not ready within {self.ready_timeout:.0f} s "
            f"(port {self.port} accepting and {self.ca_cert_path} present).\n"
            f"command: {' '.join(self.command)}\nlog tail:\n{self.log_tail()}"
        )

    def _reap(self) -> None:
        _LIVE.discard(self)
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self, *, check: bool = True) -> None:
        """SIGTERM, then SIGKILL after a grace period; with check, raise if anything survives."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_STOP_GRACE)
        # SIGKILL whatever is left of the group (the leader, or children it may have started).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(_STOP_GRACE)
        _LIVE.discard(self)
        deadline = time.monotonic() + 2
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        survived = _group_alive(pgid)
        if self._own_confdir:
            shutil.rmtree(self.confdir, ignore_errors=True)
        if check and survived:
            raise MitmError(f"mitmdump process group {pgid} survived stop()")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(check=exc_type is None)
