"""kai_launch/sidecar.py: the spec from a profile, start/wait/stop with real processes, the
watchdog and PR_SET_PDEATHSIG, and `kai-run sidecar start|status|stop` in the background.

The sidecar here is a tiny Python TCP server (fast); tests/test_e2e.py runs the real mitmdump.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import procs
from support.procs import TINY_SIDECAR, alive, free_port, q, recorded
from support.servers import HangingServer

from kai_launch.config import load_config
from kai_launch.errors import ConfigError, SecretError, SidecarError
from kai_launch.profiles import Profile, resolve_profile
from kai_launch.sidecar import (
    SidecarSpec,
    Watchdog,
    check_address_free,
    log_path_for,
    running_sidecar,
    start,
    state_path_for,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")

# Processes the tests start must not survive them (support/procs.py).
sidecar_pid_dir = procs.sidecar_pid_dir
no_leftover_sidecar = procs.no_leftover_sidecar


@pytest.fixture
def tiny_script(tmp_path: Path) -> Path:
    script = tmp_path / "tiny_sidecar.py"
    script.write_text(TINY_SIDECAR)
    return script


SpecFactory = Callable[..., SidecarSpec]


@pytest.fixture
def tiny_spec(tiny_script: Path, sidecar_pid_dir: Path) -> SpecFactory:
    def make(
        mode: str = "serve",
        *,
        port: int | None = None,
        ready_timeout: float = 10,
        grace: float = 2,
        ready_file: str | None = None,
        env: dict[str, str] | None = None,
    ) -> SidecarSpec:
        port = port or free_port()
        variables = {**os.environ, "TINY_PID_DIR": str(sidecar_pid_dir), **(env or {})}
        return SidecarSpec(
            "tiny",
            [sys.executable, str(tiny_script), "127.0.0.1", str(port), mode],
            "127.0.0.1",
            port,
            ready_timeout=ready_timeout,
            ready_file=ready_file,
            grace_period=grace,
            env=variables,
        )

    return make


def load_profile(path: Path, name: str, environ: dict[str, str] | None = None) -> Profile:
    return resolve_profile(load_config(str(path), environ or dict(os.environ)), name)


# --- the spec --------------------------------------------------------------------------------


def test_spec_expands_vars_home_paths_and_resolves_secrets(write_profiles, tmp_path) -> None:
    (tmp_path / "token.txt").write_text("from-file\n")
    path = write_profiles(
        """
        [profiles.audit]
        https_proxy = "http://127.0.0.1:8080"

        [profiles.audit.sidecar]
        command = ["${TOOLS}/mitmdump", "-s", "~/kai/add_auth_header.py", "--set", "x=$${HOME}"]
        ready = "[::1]:8081"
        ready_timeout = 3
        ready_file = "ca/mitmproxy-ca-cert.pem"
        grace_period = 0.5
        env = { PLAIN = "v-${TOOLS}", FROM_ENV = { env = "AUDIT_TOKEN" }, FROM_FILE = { file = "token.txt" }, FLAG = true, PYTHONUNBUFFERED = "0" }
        """
    )
    environ = {**os.environ, "TOOLS": "/opt/tools", "AUDIT_TOKEN": "s3cret"}
    spec = SidecarSpec.from_profile(load_profile(path, "audit", environ), environ)
    home = os.environ["HOME"]
    assert spec.argv == [
        "/opt/tools/mitmdump",
        "-s",
        f"{home}/kai/add_auth_header.py",
        "--set",
        "x=${HOME}",
    ]
    assert (spec.host, spec.port, spec.address) == ("::1", 8081, "[::1]:8081")
    assert spec.ready_timeout == 3.0 and spec.grace_period == 0.5
    assert spec.ready_file == str(tmp_path / "ca" / "mitmproxy-ca-cert.pem")  # relative to file
    assert spec.cwd == str(tmp_path)
    assert spec.env["PLAIN"] == "v-/opt/tools"
    assert spec.env["FROM_ENV"] == "s3cret"
    assert spec.env["FROM_FILE"] == "from-file"
    assert spec.env["FLAG"] == "true"
    assert spec.env["PYTHONUNBUFFERED"] == "0"  # sidecar.env wins over kai-run's default
    assert spec.env["HOME"] == home  # kai-run's own environment underneath


def test_spec_without_ready_waits_for_the_profiles_proxy(write_profiles) -> None:
    path = write_profiles(
        """
        [profiles.p]
        http_proxy = "http://127.0.0.1:3128"
        https_proxy = "http://localhost:8899"

        [profiles.p.sidecar]
        command = ["proxy"]
        """
    )
    spec = SidecarSpec.from_profile(load_profile(path, "p"), os.environ)
    assert (spec.host, spec.port) == ("localhost", 8899)
    assert spec.ready_timeout == 15.0 and spec.grace_period == 5.0 and spec.ready_file is None


def test_spec_errors_name_the_key(write_profiles) -> None:
    path = write_profiles(
        """
        [profiles.nocmd.sidecar]
        ready = "127.0.0.1:1"

        [profiles.unset.sidecar]
        command = ["${NO_SUCH_VAR_KAI}/proxy"]
        ready = "127.0.0.1:1"

        [profiles.secret.sidecar]
        command = ["proxy"]
        ready = "127.0.0.1:1"
        env = { TOKEN = { env = "NO_SUCH_SECRET_KAI" } }

        [profiles.noready.sidecar]
        command = ["proxy"]

        [profiles.none]
        """
    )
    with pytest.raises(SidecarError, match="the sidecar has no command") as e:
        SidecarSpec.from_profile(load_profile(path, "nocmd"), os.environ)
    assert "key 'sidecar.command'" in str(e.value)
    with pytest.raises(ConfigError, match="variable NO_SUCH_VAR_KAI is not set"):
        SidecarSpec.from_profile(load_profile(path, "unset"), os.environ)
    with pytest.raises(SecretError, match="NO_SUCH_SECRET_KAI") as e2:
        SidecarSpec.from_profile(load_profile(path, "secret"), os.environ)
    assert "sidecar.env.TOKEN" in str(e2.value)
    with pytest.raises(SidecarError, match="no `ready` address"):
        SidecarSpec.from_profile(load_profile(path, "noready"), os.environ)
    with pytest.raises(SidecarError, match="has no sidecar"):
        SidecarSpec.from_profile(load_profile(path, "none"), os.environ)


def test_log_and_state_files_live_in_the_user_dirs(tmp_path) -> None:
    assert log_path_for("corp") == str(tmp_path / "xdg/state/kai-run/log/sidecar-corp.log")
    assert state_path_for("corp") == str(tmp_path / "xdg/state/kai-run/sidecars/corp.json")
    # Any profile name gives one safe file name, and different names never collide.
    odd = os.path.basename(log_path_for("../a b/é"))
    assert "/" not in odd and odd != os.path.basename(log_path_for("../a_b/_"))


# --- start, wait_ready, stop -------------------------------------------------------------------


def test_start_wait_stop_leaves_no_process_of_the_group(tiny_spec, sidecar_pid_dir, tmp_path):
    spec = tiny_spec("grandchild", env={"TINY_ECHO": "hello"})
    log = str(tmp_path / "logs" / "tiny.log")
    before = set(recorded(sidecar_pid_dir))
    proc = start(spec, log)
    assert wait_ready(spec, proc, log) < 5
    group = [p for p in recorded(sidecar_pid_dir) if p not in before]
    deadline = time.monotonic() + 5
    while len(group) < 2 and time.monotonic() < deadline:  # the grandchild may lag
        time.sleep(0.05)
        group = [p for p in recorded(sidecar_pid_dir) if p not in before]
    assert len(group) == 2
    assert all(os.getpgid(p) == proc.pid for p in group)  # one group, led by the sidecar
    t0 = time.monotonic()
    assert stop(proc, grace=2) == -signal.SIGTERM
    assert time.monotonic() - t0 < 1.5  # the leader went at once; its SIGTERM-proof child too
    assert not [p for p in group if alive(p)]
    text = Path(log).read_text()
    assert text.startswith("kai-run: sidecar of profile 'tiny': ")
    assert "echo=hello" in text and "listening" in text


def test_stop_kills_after_the_grace_period(tiny_spec, tmp_path) -> None:
    spec = tiny_spec("ignore-term")
    log = str(tmp_path / "tiny.log")
    proc = start(spec, log)
    wait_ready(spec, proc, log)
    t0 = time.monotonic()
    assert stop(proc, grace=0.5) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - t0 < 3
    assert not alive(proc.pid)


def test_ready_waits_for_the_ready_file(tiny_spec, tmp_path) -> None:
    ready_file = tmp_path / "ca.pem"
    spec = tiny_spec(
        ready_file=str(ready_file),
        env={"TINY_READY_FILE": str(ready_file), "TINY_READY_FILE_DELAY": "0.7"},
    )
    log = str(tmp_path / "tiny.log")
    proc = start(spec, log)
    try:
        assert wait_ready(spec, proc, log) >= 0.7
        assert ready_file.exists()
    finally:
        stop(proc)


def test_early_exit_is_reported_with_the_end_of_the_log(tiny_spec, tmp_path) -> None:
    spec = tiny_spec("exit-early")
    log = str(tmp_path / "tiny.log")
    proc = start(spec, log)
    try:
        with pytest.raises(SidecarError) as e:
            wait_ready(spec, proc, log)
    finally:
        stop(proc)
    assert e.value.what == (
        "the sidecar exited with status 3 before it was ready: fatal: the frobnicator is missing"
    )
    assert e.value.hint is not None and "tiny sidecar pid=" in e.value.hint and log in e.value.hint


def test_not_ready_in_time(tiny_spec, tmp_path) -> None:
    spec = tiny_spec("never-ready", ready_timeout=0.5)
    log = str(tmp_path / "tiny.log")
    proc = start(spec, log)
    t0 = time.monotonic()
    try:
        with pytest.raises(SidecarError, match=r"not ready within 0.5 s \(waited for 127.0.0.1:"):
            wait_ready(spec, proc, log)
        assert time.monotonic() - t0 < 2
    finally:
        stop(proc, grace=0.5)


def test_missing_and_non_executable_programs(tiny_spec, tmp_path) -> None:
    spec = tiny_spec()
    spec.argv = ["kai-no-such-proxy-xyz", "-p", "1"]
    with pytest.raises(SidecarError, match="sidecar program not found: kai-no-such-proxy-xyz"):
        start(spec, str(tmp_path / "a.log"))
    script = tmp_path / "proxy.sh"
    script.write_text("#!/bin/sh\n")
    spec.argv = [str(script)]
    with pytest.raises(SidecarError, match="sidecar program is not executable"):
        start(spec, str(tmp_path / "b.log"))


# --- running_sidecar (doctor's entry point) ---------------------------------------------------


def tiny_profile_text(script: Path, pid_dir: Path, port: int, mode: str = "serve") -> str:
    argv = [sys.executable, str(script), "127.0.0.1", str(port), mode]
    return f"""
    [profiles.tiny]
    https_proxy = "http://127.0.0.1:{port}"

    [profiles.tiny.sidecar]
    command = [{", ".join(q(a) for a in argv)}]
    ready = "127.0.0.1:{port}"
    ready_timeout = 10
    grace_period = 1
    env = {{ TINY_PID_DIR = {q(pid_dir)} }}
    """


def test_running_sidecar_serves_inside_and_stops_after(
    write_profiles, tiny_script, sidecar_pid_dir
) -> None:
    port = free_port()
    path = write_profiles(tiny_profile_text(tiny_script, sidecar_pid_dir, port))
    messages: list[str] = []
    profile = load_profile(path, "tiny")
    with (
        pytest.raises(RuntimeError, match="a check failed"),
        running_sidecar(profile, os.environ, verbose=True, notify=messages.append) as sidecar,
    ):
        pid = sidecar.pid
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        raise RuntimeError("a check failed")
    assert not alive(pid)
    assert any(f"log: {log_path_for('tiny')}" in m for m in messages), messages
    assert any("ready at 127.0.0.1:" in m for m in messages), messages


def test_running_sidecar_refuses_a_taken_port(write_profiles, tiny_script, sidecar_pid_dir):
    with HangingServer() as stranger:
        path = write_profiles(tiny_profile_text(tiny_script, sidecar_pid_dir, stranger.port))
        before = set(recorded(sidecar_pid_dir))
        with (
            pytest.raises(SidecarError, match=f"127.0.0.1:{stranger.port} is already in use"),
            running_sidecar(load_profile(path, "tiny"), os.environ),
        ):
            pass
    assert set(recorded(sidecar_pid_dir)) == before  # never started


# --- what happens when the owner dies without stopping the sidecar ---------------------------

OWNER = """
import os, signal, sys
from kai_launch.sidecar import SidecarSpec, Watchdog, start, wait_ready
argv, port, log, use_watchdog, detach = sys.argv[1:-4], int(sys.argv[-4]), sys.argv[-3], sys.argv[-2] == "1", sys.argv[-1] == "1"
spec = SidecarSpec("tiny", argv, "127.0.0.1", port)
watchdog = Watchdog.launch() if use_watchdog else None
proc = start(spec, log, detach=detach)
if watchdog:
    watchdog.arm(proc.pid)
wait_ready(spec, proc, log)
print(proc.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_owner(tiny_script, sidecar_pid_dir, tmp_path, *, watchdog: bool, detach: bool):
    port = free_port()
    argv = [sys.executable, str(tiny_script), "127.0.0.1", str(port), "grandchild"]
    before = set(recorded(sidecar_pid_dir))
    env = {**os.environ, "TINY_PID_DIR": str(sidecar_pid_dir)}
    owner = subprocess.run(
        [
            *(sys.executable, "-c", OWNER, *argv, str(port), str(tmp_path / "o.log")),
            "1" if watchdog else "0",
            "1" if detach else "0",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=30,
        env=env,
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    leader = int(owner.stdout)
    deadline = time.monotonic() + 5
    group: list[int] = []
    while len(group) < 2 and time.monotonic() < deadline:
        group = [p for p in recorded(sidecar_pid_dir) if p not in before]
        time.sleep(0.02)
    return leader, group


def test_watchdog_kills_the_group_when_its_owner_dies(tiny_script, sidecar_pid_dir, tmp_path):
    # detach=True: no PDEATHSIG, so this is the watchdog's work alone (macOS gets just this).
    leader, group = run_owner(tiny_script, sidecar_pid_dir, tmp_path, watchdog=True, detach=True)
    assert leader in group and len(group) == 2
    t0 = time.monotonic()
    while any(alive(p) for p in group) and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    assert not [p for p in group if alive(p)]
    assert time.monotonic() - t0 < 2.5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pdeathsig_stops_the_leader_when_its_owner_dies(tiny_script, sidecar_pid_dir, tmp_path):
    leader, group = run_owner(tiny_script, sidecar_pid_dir, tmp_path, watchdog=False, detach=False)
    t0 = time.monotonic()
    while alive(leader) and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    assert not alive(leader)
    # Without the watchdog the SIGTERM-proof grandchild would survive: the reason for both.
    (orphan,) = [p for p in group if p != leader]
    assert alive(orphan)
    os.kill(orphan, signal.SIGKILL)


def test_watchdog_released_normally_kills_nothing(tiny_spec, tmp_path) -> None:
    spec = tiny_spec()
    log = str(tmp_path / "tiny.log")
    watchdog = Watchdog.launch()
    proc = start(spec, log, detach=True)
    watchdog.arm(proc.pid)
    wait_ready(spec, proc, log)
    watchdog.disarm()  # as if kai-run had stopped the sidecar: the watchdog must leave it be
    assert watchdog.proc is not None and watchdog.proc.returncode == 0
    time.sleep(0.3)
    assert alive(proc.pid)
    stop(proc)


# --- kai-run sidecar start|status|stop ---------------------------------------------------------


@pytest.fixture
def tiny_config(write_profiles, tiny_script, sidecar_pid_dir) -> Callable[..., Path]:
    def make(port: int | None = None, mode: str = "serve") -> Path:
        port = port or free_port()
        text = tiny_profile_text(tiny_script, sidecar_pid_dir, port, mode)
        # A second profile on the same port: it must find the first one's sidecar in the way.
        text += text.replace("[profiles.tiny", "[profiles.other")
        return write_profiles(text)

    return make


def test_background_start_status_reuse_stop(kai_run, tiny_config) -> None:
    config = str(tiny_config())
    run = kai_run("-c", config, "sidecar", "start", "-p", "tiny")
    assert run.returncode == 0, run
    first = run.stdout.splitlines()[0]
    assert first.startswith("sidecar of profile 'tiny' started: pid ")
    pid = int(first.split("pid ")[1].split(",")[0])
    assert f"  log: {log_path_for('tiny')}" in run.stdout
    try:
        assert alive(pid)  # it outlived the kai-run that started it
        state = json.loads(Path(state_path_for("tiny")).read_text())
        assert state["pid"] == pid and state["address"].startswith("127.0.0.1:")

        run = kai_run("-c", config, "sidecar", "status", "-p", "tiny")
        assert run.returncode == 0
        assert run.stdout.startswith(f"sidecar of profile 'tiny' is running: pid {pid}, 127.0.0.1:")

        run = kai_run("-c", config, "sidecar", "start", "-p", "tiny")
        assert run.returncode == 0
        assert run.stdout.startswith(f"sidecar of profile 'tiny' is already running: pid {pid}")

        # A supervised run uses it, and leaves it running.
        run = kai_run("-c", config, "-p", "tiny", "--verbose", "--", sys.executable, "-c", "pass")
        assert run.returncode == 0, run
        assert f"using the background sidecar of profile 'tiny' (pid {pid})" in run.stderr
        assert alive(pid)

        # Another profile on the same address names what is in the way.
        run = kai_run("-c", config, "-p", "other", "--", sys.executable, "-c", "pass")
        assert run.returncode == 2
        assert f"in use by the background sidecar of profile 'tiny' (pid {pid})" in run.stderr
    finally:
        run = kai_run("-c", config, "sidecar", "stop", "-p", "tiny")
    assert run.returncode == 0, run
    assert run.stdout.startswith(f"sidecar of profile 'tiny' stopped (pid {pid})")
    assert not alive(pid)
    assert not Path(state_path_for("tiny")).exists()

    run = kai_run("-c", config, "sidecar", "status", "-p", "tiny")
    assert run.returncode == 3
    assert run.stdout.startswith("sidecar of profile 'tiny' is not running")
    run = kai_run("-c", config, "sidecar", "stop", "-p", "tiny")
    assert run.returncode == 0
    assert run.stdout.startswith("sidecar of profile 'tiny' is not running")


def test_stale_pid_file_is_noticed_and_removed(kai_run, tiny_config) -> None:
    config = str(tiny_config())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = Path(state_path_for("tiny"))
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "profile": "tiny",
                "pid": gone.pid,
                "address": "127.0.0.1:1",
                "log": "x.log",
                "argv": ["x"],
                "started": 0,
                "token": None,
            }
        )
    )
    run = kai_run("-c", config, "sidecar", "status", "-p", "tiny")
    assert run.returncode == 3
    assert "removed the stale pid file" in run.stdout
    assert not path.exists()
    path.write_text("{not json")
    run = kai_run("-c", config, "sidecar", "stop", "-p", "tiny")
    assert run.returncode == 0 and "not running" in run.stdout
    assert not path.exists()


def test_background_start_failure_leaves_nothing(kai_run, tiny_config) -> None:
    config = str(tiny_config(mode="exit-early"))
    run = kai_run("-c", config, "sidecar", "start", "-p", "tiny")
    assert run.returncode == 2
    assert run.stderr.startswith(
        "kai-run: error: the sidecar exited with status 3 before it was ready"
    )
    assert not Path(state_path_for("tiny")).exists()


def test_sidecar_commands_have_examples_in_help(kai_run) -> None:
    for command in ("start", "status", "stop"):
        run = kai_run("sidecar", command, "--help")
        assert run.returncode == 0
        assert "kai-run sidecar start -p local-mitm" in run.stdout


def mode_of(path: str | Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_logs_and_state_files_are_private(kai_run, tiny_config) -> None:
    """A sidecar's log holds what its addons print, tokens included: 0600 in 0700 folders."""
    log = Path(log_path_for("tiny"))
    log.parent.mkdir(parents=True, mode=0o755)
    log.parent.chmod(0o755)
    log.write_text("an older, world-readable log\n")
    log.chmod(0o644)
    config = str(tiny_config())
    run = kai_run("-c", config, "sidecar", "start", "-p", "tiny")
    assert run.returncode == 0, run
    try:
        state = Path(state_path_for("tiny"))
        assert (mode_of(log), mode_of(log.parent)) == (0o600, 0o700)
        assert (mode_of(state), mode_of(state.parent)) == (0o600, 0o700)
        assert "older" not in log.read_text()
    finally:
        run = kai_run("-c", config, "sidecar", "stop", "-p", "tiny")
    assert run.returncode == 0, run


def test_a_second_supervised_run_names_the_first_one(kai_run, tiny_config) -> None:
    """Each `kai-run -p P -- cmd` starts its own sidecar: a second one at the same time finds the
    port taken, and says by whom."""
    config = str(tiny_config())
    child = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]
    first = subprocess.Popen(
        [sys.executable, "-m", "kai_launch", "-c", config, "-p", "tiny", "--", *child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert first.stdout is not None and first.stdin is not None
    try:
        assert first.stdout.readline() == "ready\n"
        folder = Path(state_path_for("tiny")).parent / "supervised"
        (state,) = [json.loads(p.read_text()) for p in folder.glob("*.json")]
        assert state["supervisor"] == first.pid and alive(state["pid"])
        assert (mode_of(folder), mode_of(folder.parent)) == (0o700, 0o700)
        assert all(mode_of(p) == 0o600 for p in folder.iterdir())

        run = kai_run("-c", config, "-p", "tiny", "--", sys.executable, "-c", "pass")
        assert run.returncode == 2, run
        assert (
            f"is already in use by the sidecar that another kai-run (pid {first.pid}) runs for "
            f"profile 'tiny' (sidecar pid {state['pid']}); the sidecar was not started"
        ) in run.stderr
        assert "kai-run sidecar start -p tiny" in run.stderr  # the way to share one
        # A background start is refused the same way, and names the same holder.
        run = kai_run("-c", config, "sidecar", "start", "-p", "tiny")
        assert run.returncode == 2 and f"another kai-run (pid {first.pid})" in run.stderr
    finally:
        first.stdin.close()
        assert first.wait(30) == 0
        first.stdout.close()
        assert first.stderr is not None
        first.stderr.close()
    assert not list(folder.iterdir())  # the first run removed its state file


def test_a_killed_supervisors_state_file_is_not_believed(tiny_spec) -> None:
    """kai-run killed with SIGKILL leaves its state file: its sidecar is gone, so is the claim."""
    folder = Path(state_path_for("tiny")).parent / "supervised"
    folder.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with HangingServer() as stranger:
        spec = tiny_spec(port=stranger.port)
        stale = folder / f"tiny-{gone.pid}.json"
        record = {"profile": "tiny", "pid": gone.pid, "address": spec.address, "log": "x.log"}
        record |= {"argv": ["x"], "started": 0, "token": None, "supervisor": 1}
        stale.write_text(json.dumps(record))
        with pytest.raises(SidecarError, match="in use by another program"):
            check_address_free(spec)
    assert not stale.exists()
