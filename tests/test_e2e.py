"""End to end: `kai-run -p PROFILE -- CMD` with a sidecar, real processes only, loopback only.

- A real mitmdump sidecar (its own venv, see support/mitm.py) with examples/add_auth_header.py,
  in front of an OpenAI-compatible HTTPS server with a trustme certificate; the child is Python
  with the real openai SDK or requests, TLS verification on.
- Signals, exit statuses and failure paths with a tiny Python TCP server as the sidecar (fast).

Why the clients ask for `api.kai-e2e.invalid` and not `localhost`: kai-run always puts
localhost, 127.0.0.1 and ::1 in NO_PROXY (kai_launch/noproxy.py), so every loopback spelling
goes direct and would never meet the sidecar. `*.localhost` names do not help either: requests,
curl and Go treat the NO_PROXY entry `localhost` as covering its subdomains. Other 127.0.0.0/8
addresses are outside the network rule of these tests. So the clients ask the proxy (CONNECT,
nothing resolved on their side) for a name under the reserved `.invalid` TLD, and a test addon
inside mitmdump sends that name to the upstream on 127.0.0.1, verifying the upstream's
certificate as `localhost`. The loopback guard addon from support/ runs after it and refuses
anything that is still not loopback, so nothing can leave the machine, not even a DNS query.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import procs
from support.mitm import LOOPBACK_GUARD_ADDON
from support.procs import PID_RECORDER, TINY_SIDECAR, alive, free_port, q, recorded, survivors
from support.servers import HangingServer, OpenAIUpstream

pytestmark = pytest.mark.skipif(os.name != "posix", reason="supervision tests are POSIX")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ADDON = REPO / "examples" / "add_auth_header.py"
ROUTED_NAME = "api.kai-e2e.invalid"
HEADER = "X-Corp-Auth"
TOKEN = "e2e-token-1b7f"

# Processes the tests start must not survive them (support/procs.py).
sidecar_pid_dir = procs.sidecar_pid_dir
no_leftover_sidecar = procs.no_leftover_sidecar


TinyProfile = Callable[..., Path]


@pytest.fixture
def tiny_profile(tmp_path: Path, write_profiles, sidecar_pid_dir: Path) -> TinyProfile:
    """Write a profile `tiny` whose sidecar is TINY_SIDECAR in MODE on a free port."""
    script = tmp_path / "tiny_sidecar.py"
    script.write_text(TINY_SIDECAR)

    def make(
        mode: str = "serve",
        *,
        port: int | None = None,
        command: list[str] | None = None,
        ready_timeout: float = 10,
        grace: float = 2,
        env: dict[str, str] | None = None,
    ) -> Path:
        port = port or free_port()
        argv = command or [sys.executable, str(script), "127.0.0.1", str(port), mode]
        variables = {"TINY_PID_DIR": str(sidecar_pid_dir), **(env or {})}
        return write_profiles(
            f"""
            [profiles.tiny]
            http_proxy = "http://127.0.0.1:{port}"
            https_proxy = "http://127.0.0.1:{port}"

            [profiles.tiny.sidecar]
            command = [{", ".join(q(a) for a in argv)}]
            ready = "127.0.0.1:{port}"
            ready_timeout = {ready_timeout}
            grace_period = {grace}
            env = {{ {", ".join(f"{k} = {q(v)}" for k, v in variables.items())} }}
            """
        )

    return make


def kai_run_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "kai_launch", "-c", str(config), "-p", "tiny", *args]


def python_child(code: str) -> list[str]:
    return ["--", sys.executable, "-c", textwrap.dedent(code)]


# --- the real thing: mitmdump, the openai SDK, requests ------------------------------------------

ROUTE_ADDON = (
    PID_RECORDER
    + '''
"""Test addon: send ROUTED_NAME to the upstream on 127.0.0.1; record this mitmdump's pid."""
import os
from mitmproxy import http

NAME = os.environ["KAI_E2E_ROUTED_NAME"]
_record_pid(os.environ["KAI_E2E_PID_DIR"])


class RouteToLoopback:
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == NAME:
            flow.request.host = "127.0.0.1"  # the tunnel's server address

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == NAME:  # plain http:// requests through the proxy
            flow.request.host = "127.0.0.1"

    def server_connect(self, data) -> None:
        # The upstream's certificate names localhost, 127.0.0.1 and ::1: verify it as localhost.
        if data.server.address and data.server.address[0] == "127.0.0.1":
            data.server.sni = "localhost"


addons = [RouteToLoopback()]
'''
)


@pytest.fixture
def mitm_profile(
    tmp_path: Path,
    write_profiles,
    mitm_binary: Path,
    upstream: OpenAIUpstream,
    sidecar_pid_dir: Path,
) -> Callable[..., Path]:
    """A profile `corp-mitm` whose sidecar is a real mitmdump with the example addon."""
    route = tmp_path / "route_to_loopback.py"
    route.write_text(ROUTE_ADDON)
    confdir = tmp_path / "mitm-conf"  # empty: mitmdump writes its CA there on first start
    port = free_port()
    ca = confdir / "mitmproxy-ca-cert.pem"

    def make(*, trust_upstream: bool = False) -> Path:
        # trust_upstream: also trust the upstream's own CA, for requests that go direct.
        bundle = [ca, upstream.ca_pem_path] if trust_upstream else [ca]
        command = [
            mitm_binary,
            "--listen-host", "127.0.0.1",
            "-p", port,
            "--set", f"confdir={confdir}",
            "--set", f"ssl_verify_upstream_trusted_ca={upstream.ca_pem_path}",
            "--set", "onboarding=false",
            "-s", route,
            "-s", LOOPBACK_GUARD_ADDON,
            "-s", EXAMPLE_ADDON,
            "--set", "corp_auth_hosts=kai-e2e.invalid",
        ]  # fmt: skip
        return write_profiles(
            f"""
            [profiles.corp-mitm]
            description = "mitmdump adding {HEADER}"
            http_proxy = "http://127.0.0.1:{port}"
            https_proxy = "http://127.0.0.1:{port}"
            ca_bundle = [{", ".join(q(p) for p in bundle)}]

            [profiles.corp-mitm.sidecar]
            command = [{", ".join(q(a) for a in command)}]
            ready = "127.0.0.1:{port}"
            ready_file = {q(ca)}
            ready_timeout = 60
            env = {{ CORP_AUTH_TOKEN = {{ env = "KAI_E2E_TOKEN" }}, KAI_E2E_ROUTED_NAME = {q(ROUTED_NAME)}, KAI_E2E_PID_DIR = {q(sidecar_pid_dir)} }}
            """
        )

    return make


def run_mitm(kai_run, config: Path, code: str, *args: str):
    return kai_run(
        "-c",
        str(config),
        "-p",
        "corp-mitm",
        "--verbose",
        "--",
        sys.executable,
        "-c",
        textwrap.dedent(code),
        *args,
        env={"KAI_E2E_TOKEN": TOKEN},
        timeout=120,
    )


def test_openai_sdk_through_the_mitmdump_sidecar(kai_run, mitm_profile, upstream) -> None:
    config = mitm_profile()
    run = run_mitm(
        kai_run,
        config,
        """
        import sys
        from openai import OpenAI
        client = OpenAI(base_url=sys.argv[1], api_key="x", max_retries=0, timeout=20)
        out = client.chat.completions.create(
            model="kai-test-model", messages=[{"role": "user", "content": "ping"}]
        )
        print(out.choices[0].message.content)
        """,
        f"https://{ROUTED_NAME}:{upstream.port}/v1",
    )
    assert run.returncode == 0, run
    assert run.stdout.strip() == "pong"
    (seen,) = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert seen.header(HEADER) == TOKEN
    assert seen.header("Authorization") == "Bearer x"
    # --verbose names the sidecar's log; it is still there after the run.
    log = next(line.split("log: ", 1)[1] for line in run.stderr.splitlines() if "log: " in line)
    assert "listening at 127.0.0.1" in Path(log).read_text()


def test_requests_through_the_mitmdump_sidecar(kai_run, mitm_profile, upstream) -> None:
    config = mitm_profile()
    run = run_mitm(
        kai_run,
        config,
        """
        import os, sys, requests
        r = requests.get(sys.argv[1], timeout=20)  # verify=True: REQUESTS_CA_BUNDLE from kai-run
        r.raise_for_status()
        print(r.json()["data"][0]["id"], os.environ["REQUESTS_CA_BUNDLE"])
        """,
        f"https://{ROUTED_NAME}:{upstream.port}/v1/models",
    )
    assert run.returncode == 0, run
    model, bundle = run.stdout.split()
    assert model == upstream.model
    assert bundle.startswith(os.environ["XDG_CACHE_HOME"])  # kai-run's merged bundle
    assert upstream.requests[-1].header(HEADER) == TOKEN


def test_no_proxy_loopback_goes_direct_without_the_header(kai_run, mitm_profile, upstream) -> None:
    config = mitm_profile(trust_upstream=True)
    run = run_mitm(
        kai_run,
        config,
        """
        import sys, requests
        for url in sys.argv[1:]:
            print(requests.get(url, timeout=20).status_code)
        """,
        f"https://localhost:{upstream.port}/v1/models",  # in NO_PROXY: direct
        f"https://{ROUTED_NAME}:{upstream.port}/v1/models",  # through the sidecar
    )
    assert run.returncode == 0, run
    assert run.stdout.split() == ["200", "200"]
    direct, proxied = upstream.requests
    assert direct.header(HEADER) is None
    assert direct.header("Host") == f"localhost:{upstream.port}"
    assert proxied.header(HEADER) == TOKEN


def test_sidecar_failing_at_start_shows_its_log(kai_run, mitm_profile) -> None:
    # With an empty token the example addon refuses to run: mitmdump exits right after it opened
    # its port, which kai-run must not take for "ready".
    config = mitm_profile()
    marker = config.parent / "ran"
    run = kai_run(
        "-c",
        str(config),
        "-p",
        "corp-mitm",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w')",
        env={"KAI_E2E_TOKEN": ""},
        timeout=120,
    )
    assert run.returncode == 2, run
    assert run.stderr.startswith(
        "kai-run: error: the sidecar exited with status 1 before it was ready"
    ), run
    assert "add_auth_header: CORP_AUTH_TOKEN is not set" in run.stderr  # from the log's tail
    assert not marker.exists()


# --- exit statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_status_is_the_childs(tiny_profile, code: int) -> None:
    config = tiny_profile()
    proc = subprocess.run(
        kai_run_argv(config, *python_child(f"import sys; print('child ran'); sys.exit({code})")),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "child ran\n"


def test_child_killed_by_sigterm_gives_143(tiny_profile) -> None:
    config = tiny_profile()
    proc = subprocess.run(
        kai_run_argv(config, *python_child("import os, signal; os.kill(os.getpid(), 15)")),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 143, proc.stderr


# --- signals ----------------------------------------------------------------------------------

SIGNAL_CHILD = """
import os, signal, sys
names = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"]
seen = []
def on(signum, frame):
    seen.append(signum)
    print(signal.Signals(signum).name, flush=True)
    if seen.count(signal.SIGTERM) == 2:
        sys.exit(42)
for name in names:
    signal.signal(getattr(signal, name), on)
print("ready", flush=True)
while True:
    signal.pause()
"""


def start_kai_run(argv: list[str], **kw) -> subprocess.Popen[str]:
    # A new session: no controlling terminal, so every signal below comes from kill() and must
    # be forwarded (with a terminal, kai-run leaves the keyboard's SIGINT to the terminal).
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    assert proc.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError(f"no output within {timeout} s; stderr: {proc.stderr.read()}")
    return proc.stdout.readline().strip()


def test_every_forwarded_signal_reaches_the_child_every_time(tiny_profile) -> None:
    config = tiny_profile()
    proc = start_kai_run(kai_run_argv(config, *python_child(SIGNAL_CHILD)))
    try:
        assert read_line(proc) == "ready"
        for name in ["SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"] * 2 + ["SIGTERM"] * 2:
            proc.send_signal(getattr(signal, name))
            assert read_line(proc) == name
        assert proc.wait(30) == 42
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_kai_run_ends_child_and_sidecar(tiny_profile, sidecar_pid_dir, sig) -> None:
    config = tiny_profile("grandchild")
    child = """
    import signal, time
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # die of it, like most programs
    print("ready", flush=True)
    time.sleep(60)
    """
    proc = start_kai_run(kai_run_argv(config, *python_child(child)))
    assert read_line(proc) == "ready"
    sidecars = [p for p, t in recorded(sidecar_pid_dir).items() if alive(p, t)]
    assert len(sidecars) >= 2  # the sidecar and the process it started
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert not survivors(sidecar_pid_dir)  # stopped before kai-run exited


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_the_sidecar_starts_stops_it(tiny_profile, sidecar_pid_dir, tmp_path, sig):
    config = tiny_profile("never-ready", ready_timeout=30)
    marker = tmp_path / "ran"
    before = set(recorded(sidecar_pid_dir))
    proc = start_kai_run(kai_run_argv(config, *python_child(f"open({str(marker)!r}, 'w')")))
    deadline = time.monotonic() + 20
    while set(recorded(sidecar_pid_dir)) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    # SIGUSR1 before the child exists is not fatal to kai-run (its default action would be).
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert not marker.exists()
    assert not survivors(sidecar_pid_dir)


def test_sigkill_to_kai_run_leaves_no_sidecar(tiny_profile, sidecar_pid_dir) -> None:
    config = tiny_profile("grandchild")
    before = set(recorded(sidecar_pid_dir))
    proc = start_kai_run(kai_run_argv(config, *python_child(SIGNAL_CHILD)))
    assert read_line(proc) == "ready"
    group = [p for p in recorded(sidecar_pid_dir) if p not in before]
    assert len(group) == 2 and all(alive(p) for p in group)
    proc.kill()
    proc.wait(10)
    t0 = time.monotonic()
    try:
        left = survivors(sidecar_pid_dir, wait=5.0)
        assert not left, "the sidecar outlived kai-run"
        assert time.monotonic() - t0 < 3.0
    finally:
        # The child is an orphan now, as with any killed parent; it is in kai-run's group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


TERMINAL_CHILD = """
import signal, sys
def on(signum, frame):
    with open(sys.argv[1], "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if signum == signal.SIGTERM:
        sys.exit(42)
for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
    signal.signal(sig, on)
print("ready", flush=True)
while True:
    signal.pause()
"""


def start_on_terminal(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """kai-run in a new session whose controlling terminal is a new pty, as its foreground
    process group (what a shell makes of a foreground job); returns it and the pty's master."""
    import fcntl
    import termios

    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,  # noqa: PLW1509 - nothing here runs threads meanwhile
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, master


def read_until(master: int, token: bytes, timeout: float = 30) -> bytes:
    import selectors

    output = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(master, selectors.EVENT_READ)
        while token not in output:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no {token!r} on the terminal within {timeout} s: {output!r}")
            try:
                output += os.read(master, 1024)
            except OSError:  # EIO: every process closed the terminal
                raise AssertionError(f"the terminal closed before {token!r}: {output!r}") from None
    return output


def wait_for_lines(path: Path, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            break
        time.sleep(0.02)
    return lines


def test_on_a_terminal_keyboard_signals_once_and_killed_ones_every_time(
    tiny_profile, tmp_path
) -> None:
    """Ctrl+C and Ctrl+\\ go to the whole foreground group, the child included: kai-run must
    not repeat them. SIGINT and SIGQUIT sent with kill() to kai-run alone reach the child."""
    config = tiny_profile()
    seen = tmp_path / "signals"
    argv = [*kai_run_argv(config, *python_child(TERMINAL_CHILD)), str(seen)]
    proc, master = start_on_terminal(argv)
    try:
        read_until(master, b"ready")
        expected: list[str] = []
        for how, sig in [
            (b"\x03", "SIGINT"),  # Ctrl+C typed on the terminal
            (b"\x1c", "SIGQUIT"),  # Ctrl+backslash
            (signal.SIGINT, "SIGINT"),
            (signal.SIGINT, "SIGINT"),
            (signal.SIGQUIT, "SIGQUIT"),
            (signal.SIGQUIT, "SIGQUIT"),
        ]:
            if isinstance(how, bytes):
                os.write(master, how)
            else:
                os.kill(proc.pid, how)
            expected.append(sig)
            assert wait_for_lines(seen, len(expected)) == expected, f"after {sig} ({how!r})"
            # A repeated keyboard signal would come right after the first one.
            time.sleep(0.3)
            assert wait_for_lines(seen, len(expected)) == expected, f"after {sig} ({how!r})"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 42
        assert seen.read_text().split() == [*expected, "SIGTERM"]
    finally:
        if proc.poll() is None:
            # kai-run leads the group its child is in: take both.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_the_child_starts_with_no_signal_blocked(tiny_profile) -> None:
    # kai-run blocks the forwarded signals while the child runs, and exec would keep that mask.
    code = """
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print(fields["SigBlk"].strip())
    """
    proc = subprocess.run(
        kai_run_argv(tiny_profile(), *python_child(code)),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout, 16) == 0


# --- failure paths: exit 2, one error line, the command never started, nothing left running ---


def assert_failed_cleanly(proc: subprocess.CompletedProcess[str], marker: Path, *parts: str):
    assert proc.returncode == 2, proc
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("kai-run: error: "), proc.stderr
    for part in parts:
        assert part in proc.stderr, proc.stderr
    assert not marker.exists(), "the command ran"


def run_marking(config: Path, marker: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return subprocess.run(
        kai_run_argv(config, *extra, *python_child(code)),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )


def test_missing_sidecar_program(tiny_profile, tmp_path) -> None:
    config = tiny_profile(command=[str(tmp_path / "no-such-proxy"), "-p", "1"])
    marker = tmp_path / "ran"
    assert_failed_cleanly(
        run_marking(config, marker), marker, f"sidecar program not found: {tmp_path}/no-such-proxy"
    )


def test_sidecar_exiting_before_ready_shows_its_log(tiny_profile, tmp_path) -> None:
    marker = tmp_path / "ran"
    proc = run_marking(tiny_profile("exit-early"), marker)
    assert_failed_cleanly(
        proc,
        marker,
        "the sidecar exited with status 3 before it was ready: fatal: the frobnicator is missing",
        "tiny sidecar pid=",  # an earlier line of its log, in the hint
    )


def test_sidecar_not_ready_in_time(tiny_profile, tmp_path) -> None:
    marker = tmp_path / "ran"
    t0 = time.monotonic()
    proc = run_marking(tiny_profile("never-ready", ready_timeout=1, grace=0.5), marker)
    assert_failed_cleanly(proc, marker, "the sidecar was not ready within 1 s")
    assert time.monotonic() - t0 < 10


def test_port_already_taken(tiny_profile, tmp_path, sidecar_pid_dir) -> None:
    marker = tmp_path / "ran"
    before = set(recorded(sidecar_pid_dir))
    with HangingServer() as stranger:
        proc = run_marking(tiny_profile(port=stranger.port), marker)
    assert_failed_cleanly(
        proc, marker, f"127.0.0.1:{stranger.port} is already in use by another program"
    )
    assert set(recorded(sidecar_pid_dir)) == before, "the sidecar was started anyway"


def test_command_not_found_127_and_not_executable_126(tiny_profile, tmp_path) -> None:
    config = tiny_profile()
    proc = subprocess.run(
        kai_run_argv(config, "--", "kai-no-such-command-xyz"),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 127, proc.stderr
    assert "kai-run: error: command not found: kai-no-such-command-xyz" in proc.stderr
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    proc = subprocess.run(
        kai_run_argv(config, "--", str(script)),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 126, proc.stderr
    # no_leftover_sidecar checks that both sidecars were stopped.


def test_sidecar_dying_while_the_child_runs(tiny_profile) -> None:
    config = tiny_profile(env={"TINY_LIFETIME": "0.5"})
    proc = subprocess.run(
        kai_run_argv(config, *python_child("import sys, time; time.sleep(2); sys.exit(3)")),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "sidecar" in line]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith(
        "kai-run: warning: the sidecar of profile 'tiny' exited with status 5 while the command"
    )


def test_verbose_names_the_sidecar_log(tiny_profile) -> None:
    config = tiny_profile()
    proc = subprocess.run(
        kai_run_argv(config, "--verbose", *python_child("pass")),
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "started (pid" in x]
    log = Path(line.split("log: ", 1)[1])
    assert log.name == "sidecar-tiny.log"
    assert "listening" in log.read_text()
