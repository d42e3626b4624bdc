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
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mitm import LOOPBACK_GUARD_ADDON
from support.servers import HangingServer, OpenAIUpstream

pytestmark = pytest.mark.skipif(os.name != "posix", reason="supervision tests are POSIX")

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ADDON = REPO / "examples" / "add_auth_header.py"
ROUTED_NAME = "api.kai-e2e.invalid"
HEADER = "X-Corp-Auth"
TOKEN = "e2e-token-1b7f"

# --- processes the tests start must not survive them -----------------------------------------
# Every sidecar (tiny server, its grandchild, mitmdump through the route addon) writes a file
# named after its pid, holding its start time (Linux) so that a reused pid is not mistaken.

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
def e2e_pid_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Fails the run if any sidecar process of this module is still alive at the end."""
    pid_dir = tmp_path_factory.mktemp("e2e-sidecar-pids")
    yield pid_dir
    left = survivors(pid_dir, wait=3.0)
    kill_all(left)
    if left:
        pytest.fail(f"sidecar processes survived the e2e tests: {left}", pytrace=False)


@pytest.fixture(autouse=True)
def no_leftover_sidecar(e2e_pid_dir: Path) -> Iterator[None]:
    """Names the test that left a sidecar behind (the session fixture is the last resort)."""
    before = set(recorded(e2e_pid_dir))
    yield
    left = [p for p in survivors(e2e_pid_dir, wait=3.0) if p not in before]
    kill_all(left)
    assert not left, f"sidecar processes left running: {left}"


# --- the tiny sidecar --------------------------------------------------------------------------

TINY_SIDECAR = (
    PID_RECORDER
    + '''
"""A TCP server standing in for a sidecar proxy. argv: HOST PORT MODE."""
import os, signal, socket, subprocess, sys, time

host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
_record_pid(os.environ["TINY_PID_DIR"])
print(f"tiny sidecar pid={os.getpid()} mode={mode}", flush=True)
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
if mode == "grandchild":
    subprocess.Popen([sys.executable, __file__, host, "0", "orphan"])
lifetime = float(os.environ.get("TINY_LIFETIME", "60"))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen(16)
server.settimeout(0.1)
print("listening", flush=True)
deadline = time.monotonic() + lifetime
while time.monotonic() < deadline:
    try:
        conn, _ = server.accept()
        conn.close()
    except socket.timeout:
        pass
print("lifetime over", flush=True)
sys.exit(5)
'''
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def q(value: object) -> str:
    """A TOML string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


TinyProfile = Callable[..., Path]


@pytest.fixture
def tiny_profile(tmp_path: Path, write_profiles, e2e_pid_dir: Path) -> TinyProfile:
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
        variables = {"TINY_PID_DIR": str(e2e_pid_dir), **(env or {})}
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
    tmp_path: Path, write_profiles, mitm_binary: Path, upstream: OpenAIUpstream, e2e_pid_dir: Path
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
            env = {{ CORP_AUTH_TOKEN = {{ env = "KAI_E2E_TOKEN" }}, KAI_E2E_ROUTED_NAME = {q(ROUTED_NAME)}, KAI_E2E_PID_DIR = {q(e2e_pid_dir)} }}
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
def test_signal_to_kai_run_ends_child_and_sidecar(tiny_profile, e2e_pid_dir, sig) -> None:
    config = tiny_profile("grandchild")
    child = """
    import signal, time
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # die of it, like most programs
    print("ready", flush=True)
    time.sleep(60)
    """
    proc = start_kai_run(kai_run_argv(config, *python_child(child)))
    assert read_line(proc) == "ready"
    sidecars = [p for p, t in recorded(e2e_pid_dir).items() if alive(p, t)]
    assert len(sidecars) >= 2  # the sidecar and the process it started
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert not survivors(e2e_pid_dir)  # stopped before kai-run exited


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_the_sidecar_starts_stops_it(tiny_profile, e2e_pid_dir, tmp_path, sig):
    config = tiny_profile("never-ready", ready_timeout=30)
    marker = tmp_path / "ran"
    before = set(recorded(e2e_pid_dir))
    proc = start_kai_run(kai_run_argv(config, *python_child(f"open({str(marker)!r}, 'w')")))
    deadline = time.monotonic() + 20
    while set(recorded(e2e_pid_dir)) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    # SIGUSR1 before the child exists is not fatal to kai-run (its default action would be).
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert not marker.exists()
    assert not survivors(e2e_pid_dir)


def test_sigkill_to_kai_run_leaves_no_sidecar(tiny_profile, e2e_pid_dir) -> None:
    config = tiny_profile("grandchild")
    before = set(recorded(e2e_pid_dir))
    proc = start_kai_run(kai_run_argv(config, *python_child(SIGNAL_CHILD)))
    assert read_line(proc) == "ready"
    group = [p for p in recorded(e2e_pid_dir) if p not in before]
    assert len(group) == 2 and all(alive(p) for p in group)
    proc.kill()
    proc.wait(10)
    t0 = time.monotonic()
    try:
        left = survivors(e2e_pid_dir, wait=5.0)
        assert not left, "the sidecar outlived kai-run"
        assert time.monotonic() - t0 < 3.0
    finally:
        # The child is an orphan now, as with any killed parent; it is in kai-run's group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def test_terminal_ctrl_c_reaches_the_child_once(tiny_profile, tmp_path) -> None:
    """On a terminal, Ctrl+C goes to the whole foreground group: kai-run must not repeat it."""
    import fcntl
    import termios

    config = tiny_profile()
    counter = tmp_path / "sigints"
    child = f"""
    import signal, sys, time
    count = 0
    def on(signum, frame):
        global count
        count += 1
        open({str(counter)!r}, "a").write("INT\\n")
    signal.signal(signal.SIGINT, on)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # time for a second, forwarded SIGINT to arrive
    sys.exit(count)
    """
    master, slave = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        kai_run_argv(config, *python_child(child)),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=take_terminal,  # noqa: PLW1509 - nothing here runs threads meanwhile
    )
    os.close(slave)
    try:
        output = b""
        deadline = time.monotonic() + 30
        while b"ready" not in output and time.monotonic() < deadline:
            output += os.read(master, 1024)
        assert b"ready" in output, output
        os.write(master, b"\x03")
        assert proc.wait(30) == 1, output
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert counter.read_text() == "INT\n"


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


def test_port_already_taken(tiny_profile, tmp_path, e2e_pid_dir) -> None:
    marker = tmp_path / "ran"
    before = set(recorded(e2e_pid_dir))
    with HangingServer() as stranger:
        proc = run_marking(tiny_profile(port=stranger.port), marker)
    assert_failed_cleanly(
        proc, marker, f"127.0.0.1:{stranger.port} is already in use by another program"
    )
    assert set(recorded(e2e_pid_dir)) == before, "the sidecar was started anyway"


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
