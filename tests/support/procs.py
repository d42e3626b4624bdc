"""Processes the sidecar tests start, and the check that none of them survives.

Every sidecar a test starts (the tiny server below, its grandchild, mitmdump through a test
addon) writes a file named after its pid into one folder, holding its start time (Linux) so
that a reused pid is not mistaken for it. A test module takes the two fixtures by assignment:

    sidecar_pid_dir = procs.sidecar_pid_dir
    no_leftover_sidecar = procs.no_leftover_sidecar

(an import would do the same for pytest, but reads as unused to ruff).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Python source defining _record_pid(pid_dir), for programs that run as sidecars.
PID_RECORDER = """
def _record_pid(pid_dir):
    import os
    token = ""
    try:
        with open("/proc/self/stat", "rb") as f:
            token = f.read().rsplit(b")", 1)[1].split()[19].decode()
    except OSError:
        pass
    with open(os.path.join(pid_dir, str(os.getpid())), "w") as f:
        f.write(token)
"""

# A TCP server standing in for a sidecar proxy (fast), run as `python tiny.py HOST PORT MODE`.
# MODE: serve, grandchild (also starts an `orphan`), ignore-term, exit-early, never-ready.
# Environment: TINY_PID_DIR (required), TINY_ECHO (printed), TINY_LIFETIME (seconds, then
# exit 5), TINY_READY_FILE written TINY_READY_FILE_DELAY seconds after listening.
TINY_SIDECAR = (
    PID_RECORDER
    + """
import os, signal, socket, subprocess, sys, time

host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
_record_pid(os.environ["TINY_PID_DIR"])
print(f"tiny sidecar pid={os.getpid()} mode={mode} echo={os.environ.get('TINY_ECHO')}", flush=True)
if mode == "orphan":  # a process of the sidecar's group that ignores SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
    sys.exit(0)
if mode == "exit-early":
    print("fatal: the frobnicator is missing", flush=True)
    sys.exit(3)
if mode == "never-ready":
    time.sleep(60)
    sys.exit(0)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "grandchild":
    subprocess.Popen([sys.executable, __file__, host, "0", "orphan"])
lifetime = float(os.environ.get("TINY_LIFETIME", "60"))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen(16)
server.settimeout(0.1)
print("listening", flush=True)
ready_file = os.environ.get("TINY_READY_FILE")
if ready_file:
    time.sleep(float(os.environ.get("TINY_READY_FILE_DELAY", "0")))
    open(ready_file, "w").write("ca")
deadline = time.monotonic() + lifetime
while time.monotonic() < deadline:
    try:
        conn, _ = server.accept()
        conn.close()
    except socket.timeout:
        pass
print("lifetime over", flush=True)
sys.exit(5)
"""
)


def alive(pid: int, token: str = "") -> bool:
    """Whether pid runs (a zombie does not: this container's init never reaps orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    fields = stat.rsplit(b")", 1)[1].split()
    if fields[0] in (b"Z", b"X"):
        return False
    return not token or fields[19].decode() == token


def recorded(pid_dir: Path) -> dict[int, str]:
    return {int(p.name): p.read_text() for p in pid_dir.iterdir() if p.name.isdigit()}


def survivors(pid_dir: Path, wait: float = 0.0) -> list[int]:
    deadline = time.monotonic() + wait
    while True:
        left = [pid for pid, token in recorded(pid_dir).items() if alive(pid, token)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session", autouse=True)
def sidecar_pid_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Fails the run if any sidecar process of the module is still alive at the end."""
    pid_dir = tmp_path_factory.mktemp("sidecar-pids")
    yield pid_dir
    left = survivors(pid_dir, wait=3.0)
    kill_all(left)
    if left:
        pytest.fail(f"sidecar processes survived the tests: {left}", pytrace=False)


@pytest.fixture(autouse=True)
def no_leftover_sidecar(sidecar_pid_dir: Path) -> Iterator[None]:
    """Names the test that left a sidecar behind (the session fixture is the last resort)."""
    before = set(recorded(sidecar_pid_dir))
    yield
    left = [p for p in survivors(sidecar_pid_dir, wait=3.0) if p not in before]
    kill_all(left)
    assert not left, f"sidecar processes left running: {left}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def q(value: object) -> str:
    """A TOML string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))
