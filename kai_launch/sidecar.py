"""A profile's sidecar proxy: start it in its own process group, wait until it serves, stop it with
nothing of it left behind. Supervision of a command next to it is in supervise.py; the CLI's
`kai-run sidecar start|status|stop` (a sidecar in the background) calls the functions at the end.

The sidecar runs with kai-run's own environment (not the profile's variables: its proxy URLs
point at the sidecar itself) plus `sidecar.env`, in the directory of the profile file that
defines it, so that a relative path in its command is relative to that file like every other
path in a profile. Its stdout and stderr go to a log file under the user log dir.

If kai-run dies without stopping it (SIGKILL, a crash), the sidecar must not outlive it:
- Linux: the sidecar gets PR_SET_PDEATHSIG(SIGTERM), and a watchdog process (a tiny Python
  program reading a pipe from kai-run) sees the pipe close and kills the sidecar's whole process
  group, SIGTERM then SIGKILL after a second. PDEATHSIG alone would miss the processes the
  sidecar starts; the watchdog alone would miss the moment between starting the sidecar and
  telling the watchdog its process group.
- macOS and the BSDs: the watchdog only (no PDEATHSIG there).
- Windows (untested): start, readiness, stop (CTRL_BREAK_EVENT to its process group, then
  `taskkill /T /F` after the grace period) and exit codes, but no watchdog: a sidecar whose
  kai-run was killed hard keeps running until ended by hand (`taskkill /T /F /PID <pid>`).
A sidecar started with `kai-run sidecar start` is meant to outlive kai-run: no watchdog, no
PDEATHSIG; a state file in the user state dir remembers its pid. A supervised sidecar has a state
file too (sidecars/supervised/), only so that a second run of the profile can say who holds the
port; kai-run removes it when it stops the sidecar.

Logs and state files are created 0600 in 0700 directories: a sidecar's log holds what its addons
print, tokens included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from kai_launch.errors import ConfigError, SidecarError
from kai_launch.expand import expand_path, expand_vars
from kai_launch.paths import user_log_dir, user_state_dir
from kai_launch.schema import is_secret_ref
from kai_launch.secrets import SecretRef, resolve_secret

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from kai_launch.profiles import Profile

DEFAULT_READY_TIMEOUT = 15.0
DEFAULT_GRACE_PERIOD = 5.0
LOG_TAIL_LINES = 10
# After kai-run died, the watchdog waits this long between SIGTERM and SIGKILL: the issue allows
# the sidecar "a couple of seconds" beyond kai-run.
WATCHDOG_GRACE = 1.0
_POLL = 0.05
_SETTLE = 0.2
_CONNECT_TIMEOUT = 0.5
_IS_POSIX = os.name == "posix"
_IS_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_NEW_PROCESS_GROUP: int = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)  # Windows


def _stderr(message: str) -> None:
    sys.stderr.write(f"kai-run: {message}\n")
    sys.stderr.flush()


# --- what to run ---------------------------------------------------------------------------


class SidecarSpec:
    """A profile's `sidecar` table with everything expanded and resolved: ready to start."""

    __slots__ = (
        "argv",
        "cwd",
        "env",
        "grace_period",
        "host",
        "port",
        "profile",
        "ready_file",
        "ready_timeout",
        "where",
    )

    def __init__(
        self,
        profile: str,
        argv: list[str],
        host: str,
        port: int,
        *,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        ready_file: str | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        where: str = "",
    ) -> None:
        self.profile = profile
        self.argv = argv
        self.host = host
        self.port = port
        self.ready_timeout = ready_timeout
        self.ready_file = ready_file
        self.grace_period = grace_period
        self.env = dict(os.environ) if env is None else env
        self.cwd = cwd
        self.where = where or f"profile '{profile}'"  # origin: profile 'x' (/path/profiles.toml)

    @property
    def address(self) -> str:
        """`host:port` as people write it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_profile(cls, profile: Profile, environ: Mapping[str, str]) -> SidecarSpec:
        """Expand `~` and ${VAR} (from `environ`, the parent's environment) and resolve secrets."""
        raw = profile.sidecar
        origin = profile.origins.get("sidecar", f"profile '{profile.name}' ({profile.path})")
        if raw is None:
            raise SidecarError(
                f"profile '{profile.name}' has no sidecar",
                f"profile '{profile.name}' ({profile.path})",
                f"add a [profiles.{profile.name}.sidecar] table with command and ready",
            )

        def where(key: str) -> str:
            return f"{origin}, key 'sidecar.{key}'"

        command = raw.get("command")
        if not isinstance(command, list) or not command:
            raise SidecarError(
                "the sidecar has no command",
                where("command"),
                'add e.g. command = ["mitmdump", "--listen-host", "127.0.0.1", "-p", "8080"]',
            )
        argv = [_expand_arg(str(a), environ, where("command")) for a in command]
        ready = raw.get("ready")
        if isinstance(ready, str):
            host, port = parse_hostport(expand_vars(ready, environ, where("ready")), where("ready"))
        else:
            host, port = _ready_from_proxies(profile, environ, where("ready"))
        ready_file = raw.get("ready_file")
        base_dir = profile.sidecar_base_dir or os.getcwd()
        return cls(
            profile.name,
            argv,
            host,
            port,
            ready_timeout=_seconds(raw.get("ready_timeout"), DEFAULT_READY_TIMEOUT),
            ready_file=(
                expand_path(ready_file, base_dir, environ, where("ready_file"))
                if isinstance(ready_file, str)
                else None
            ),
            grace_period=_seconds(raw.get("grace_period"), DEFAULT_GRACE_PERIOD),
            env=_sidecar_env(raw.get("env"), base_dir, environ, where),
            cwd=profile.sidecar_base_dir or None,
            where=origin,
        )


def grace_period_of(profile: Profile | None) -> float:
    """The profile's `sidecar.grace_period`, else the default (5 s)."""
    raw = profile.sidecar if profile is not None else None
    return _seconds(raw.get("grace_period") if raw else None, DEFAULT_GRACE_PERIOD)


def _expand_arg(arg: str, environ: Mapping[str, str], where: str) -> str:
    value = expand_vars(arg, environ, where)
    return os.path.expanduser(value) if value.startswith("~") else value


def _seconds(value: object, default: float) -> float:
    # The schema already checked it is a positive number.
    return float(value) if isinstance(value, (int, float)) else default


def parse_hostport(text: str, where: str) -> tuple[str, int]:
    """`127.0.0.1:8080`, `localhost:8080`, `[::1]:8080` (or `::1:8080`)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(f"'{text}' is not host:port", where, 'write e.g. "127.0.0.1:8080"')
    return host, int(port)


def _ready_from_proxies(
    profile: Profile, environ: Mapping[str, str], where: str
) -> tuple[str, int]:
    """Without `ready`, the sidecar is the profile's own proxy: wait for that address."""
    from kai_launch.proxyurl import parse_proxy_url

    for field in ("https_proxy", "http_proxy", "all_proxy"):
        raw = getattr(profile, field)
        if raw:
            url, _ = parse_proxy_url(expand_vars(raw, environ, where), where)
            return url.host, url.effective_port
    raise SidecarError(
        "the sidecar has no `ready` address and the profile no proxy to take it from",
        where,
        'add ready = "127.0.0.1:8080" (the address the sidecar listens on)'
        + ("; it is not taken from the PAC file's answer" if profile.pac_url is not None else ""),
    )


def _sidecar_env(
    raw: object, base_dir: str, environ: Mapping[str, str], where: Callable[[str], str]
) -> dict[str, str]:
    env = dict(environ)
    # Python sidecars (mitmdump) then write their log as they go: `kai-run sidecar status` and
    # the "exited before ready" error show the real last lines. sidecar.env may override it.
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not isinstance(raw, dict):
        return env
    for name, item in raw.items():
        at = where(f"env.{name}")
        if is_secret_ref(item):
            assert isinstance(item, dict)
            env[name] = resolve_secret(SecretRef.from_toml(item, base_dir, at), environ)
        elif isinstance(item, bool):
            env[name] = "true" if item else "false"
        else:
            env[name] = expand_vars(str(item), environ, at)
    return env


# --- files: log and background state --------------------------------------------------------


def _slug(name: str) -> str:
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)
    if safe == name and not name.startswith("."):
        return name
    import hashlib

    return f"{safe.lstrip('.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def log_path_for(profile: str) -> str:
    """The sidecar's log, one per profile, rewritten at each start."""
    return os.path.join(user_log_dir(), f"sidecar-{_slug(profile)}.log")


def state_path_for(profile: str) -> str:
    """Where `kai-run sidecar start` remembers a background sidecar (JSON)."""
    return os.path.join(user_state_dir(), "sidecars", f"{_slug(profile)}.json")


def _supervised_dir() -> str:
    # A subfolder: _all_states() (background sidecars) only reads the *.json files next to it.
    return os.path.join(user_state_dir(), "sidecars", "supervised")


def _private_dir(path: str) -> None:
    """Create `path` readable by its owner alone, or take that back from an existing one.

    Only kai-run's own folders come here (the log folder, sidecars/), never a user's.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SidecarError(
            f"cannot create {path}: {e.strerror}",
            "kai-run's state/log dir",
            "check XDG_STATE_HOME and the permissions of that folder",
        ) from None
    if _IS_POSIX:
        with contextlib.suppress(OSError):
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o700)


def _open_private(path: str) -> int:
    """Open `path` for writing, emptied, mode 0600 even if it existed with a wider one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if _IS_POSIX:
        try:
            os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            raise
    return fd


def log_tail(log_path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


# --- processes -------------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...); Linux only."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode("ascii", "replace").split()


def pid_alive(pid: int) -> bool:
    """True when `pid` runs. A zombie is dead: where init does not reap (some containers),
    a killed sidecar stays one forever."""
    if _IS_LINUX:
        fields = _proc_stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # Windows: no such process
        return False
    return True


def group_alive(pgid: int) -> bool:
    """True while any process of group `pgid` runs (zombies do not count on Linux)."""
    if not _IS_POSIX:
        return pid_alive(pgid)
    if _IS_LINUX:
        try:
            names = os.listdir("/proc")
        except OSError:
            names = []
        for name in names:
            if name.isdecimal():
                fields = _proc_stat(int(name))
                if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                    return True
        if names:
            return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def exited(proc: subprocess.Popen[bytes]) -> int | None:
    """The sidecar's exit status if it has exited, without reaping it on POSIX.

    An unreaped leader keeps its process group id reserved, so a later killpg() cannot hit
    a new, unrelated group that happens to reuse the number.
    """
    if proc.returncode is not None:
        return proc.returncode
    if _IS_POSIX and hasattr(os, "waitid"):
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return proc.poll()
        if info is None:
            return None
        if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            return -info.si_status
        return info.si_status
    return proc.poll()


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """Linux: make the sidecar receive SIGTERM when kai-run's thread that started it dies."""
    if not _IS_LINUX:
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # kai-run died before prctl: nobody would send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def check_address_free(spec: SidecarSpec) -> None:
    """Refuse to start when something already accepts at the sidecar's address."""
    if not accepts(spec.host, spec.port):
        return
    holder = "another program"
    hint = (
        "stop what listens there (`kai-run sidecar status -p NAME` shows background sidecars), "
        "or move the sidecar to another port (sidecar.command, sidecar.ready, the proxy URLs)"
    )
    for state in _all_states():
        if state.address == spec.address and state.alive():
            holder = f"the background sidecar of profile '{state.profile}' (pid {state.pid})"
            break
    else:
        for state in _supervised_states():
            if state.address == spec.address:
                holder = (
                    f"the sidecar that another kai-run (pid {state.supervisor}) runs for "
                    f"profile '{state.profile}' (sidecar pid {state.pid})"
                )
                hint = (
                    f"each `kai-run -p {state.profile} -- cmd` starts a sidecar of its own, which "
                    "holds the port until that command ends; to share one sidecar between runs, "
                    "start it in the background once that run is over: "
                    f"kai-run sidecar start -p {state.profile}"
                )
                break
    raise SidecarError(
        f"{spec.address} is already in use by {holder}; the sidecar was not started",
        f"{spec.where}, key 'sidecar.ready'",
        hint,
    )


def accepts(host: str, port: int, timeout: float = _CONNECT_TIMEOUT) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start(spec: SidecarSpec, log_path: str, *, detach: bool = False) -> subprocess.Popen[bytes]:
    """Start the sidecar in its own process group, stdout and stderr to `log_path` (rewritten).

    detach=False (supervised): on Linux it also gets PR_SET_PDEATHSIG; see Watchdog for the rest.
    detach=True: it is meant to outlive kai-run (`kai-run sidecar start`).
    """
    _private_dir(os.path.dirname(log_path))
    with os.fdopen(_open_private(log_path), "wb") as log:
        log.write(f"kai-run: sidecar of profile '{spec.profile}': {_shown(spec.argv)}\n".encode())
        log.flush()
        try:
            if _IS_POSIX:
                return subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=spec.env,
                    cwd=spec.cwd,
                    start_new_session=True,  # its own session and group: no terminal signals
                    # kai-run is single-threaded where it starts sidecars (see running_sidecar).
                    preexec_fn=None if detach else _pdeathsig_preexec(),  # noqa: PLW1509
                )
            return subprocess.Popen(  # pragma: no cover - Windows
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=spec.env,
                cwd=spec.cwd,
                creationflags=_NEW_PROCESS_GROUP,
            )
        except OSError as e:
            raise _start_error(spec, e) from None


def _shown(argv: list[str]) -> str:
    """The command line for humans (log, errors): credentials in it are hidden."""
    import shlex

    from kai_launch.proxyurl import redact_arg

    return shlex.join(redact_arg(arg) for arg in argv)


def _start_error(spec: SidecarSpec, error: OSError) -> SidecarError:
    argv0 = spec.argv[0]
    where = f"{spec.where}, key 'sidecar.command'"
    if spec.cwd and error.filename == spec.cwd:
        return SidecarError(
            f"cannot start the sidecar in {spec.cwd}: {error.strerror}",
            where,
            "the sidecar runs in the directory of the profile file; check that it exists",
        )
    if isinstance(error, FileNotFoundError):
        return SidecarError(
            f"sidecar program not found: {argv0}",
            where,
            "install it (mitmdump: `pipx install mitmproxy`), or give its full path",
        )
    if isinstance(error, PermissionError):
        return SidecarError(
            f"sidecar program is not executable: {argv0}", where, f"chmod +x {argv0}"
        )
    return SidecarError(f"cannot start the sidecar {argv0}: {error.strerror}", where)


def wait_ready(spec: SidecarSpec, proc: subprocess.Popen[bytes], log_path: str) -> float:
    """Wait until `ready` accepts TCP and `ready_file` exists; return the seconds it took.

    Raises SidecarError when the sidecar exits first (with the end of its log) or is not ready
    within `ready_timeout`. The caller stops the sidecar.
    """
    t0 = time.monotonic()
    deadline = t0 + spec.ready_timeout
    while True:
        code = exited(proc)
        if code is not None:
            raise _exited_error(spec, code, log_path)
        file_ok = spec.ready_file is None or os.path.exists(spec.ready_file)
        if file_ok and accepts(spec.host, spec.port):
            # Some programs open their port and exit right after, on an error found at start-up
            # (mitmdump does when an addon fails to load); and a stranger may have taken the
            # port in between, so that our sidecar failed to bind. Look again a moment later.
            time.sleep(_SETTLE)
            code = exited(proc)
            if code is not None:
                raise _exited_error(spec, code, log_path)
            return time.monotonic() - t0
        if time.monotonic() >= deadline:
            raise _timeout_error(spec, log_path, file_ok=file_ok)
        time.sleep(_POLL)


def describe_status(code: int) -> str:
    """`exited with status 3`, `was killed by SIGKILL`."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail_hint(log_path: str) -> str:
    tail = log_tail(log_path)
    if not tail:
        return f"its log ({log_path}) is empty"
    return f"the end of its log ({log_path}):\n" + "\n".join(f"    {line}" for line in tail)


def _exited_error(spec: SidecarSpec, code: int, log_path: str) -> SidecarError:
    tail = log_tail(log_path, 1)
    last = f": {tail[-1].strip()}" if tail and not tail[-1].startswith("kai-run:") else ""
    return SidecarError(
        f"the sidecar {describe_status(code)} before it was ready{last}",
        spec.where,
        _tail_hint(log_path),
    )


def _timeout_error(spec: SidecarSpec, log_path: str, *, file_ok: bool) -> SidecarError:
    waiting = f"{spec.address} accepting connections"
    if not file_ok:
        waiting += f" and {spec.ready_file} to exist"
    return SidecarError(
        f"the sidecar was not ready within {spec.ready_timeout:g} s (waited for {waiting})",
        f"{spec.where}, key 'sidecar.ready_timeout'",
        "check sidecar.ready and sidecar.ready_file, or raise sidecar.ready_timeout; "
        + _tail_hint(log_path),
    )


def stop(proc: subprocess.Popen[bytes], grace: float = DEFAULT_GRACE_PERIOD) -> int:
    """SIGTERM to the sidecar's process group, SIGKILL after `grace` seconds; reap it.

    Once the leader has exited, whatever is left of its group is killed at once. Returns the
    leader's exit status (negative: killed by that signal).
    """
    if not _IS_POSIX:
        return _stop_windows(proc, grace)
    pgid = proc.pid  # a session leader: its pid is its group's id
    if proc.returncode is None:
        if exited(proc) is None:
            _killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            delay = 0.005
            while exited(proc) is None and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, _POLL)
        # The leader is still unreaped here, so pgid cannot belong to anybody else yet.
        _killpg(pgid, signal.SIGKILL)
        proc.wait()
    elif group_alive(pgid):  # reaped by someone else; its group may still have members
        _killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc.returncode


def _stop_windows(proc: subprocess.Popen[bytes], grace: float) -> int:  # pragma: no cover
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined,unused-ignore]
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    _taskkill(proc.pid)
    return proc.wait()


def _taskkill(pid: int) -> None:  # pragma: no cover - Windows
    subprocess.run(
        ["taskkill", "/T", "/F", "/PID", str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )


# --- the watchdog: no sidecar outlives a kai-run killed with SIGKILL ------------------------

# Reads "<pgid>\n" from kai-run, then waits for end of file. "done" before it: kai-run stopped
# the sidecar itself. Anything else: kai-run is gone, so kill the group. It runs as
# `python -I -S -c`, in its own session (Ctrl+C on the terminal must not take it down first).
_WATCHDOG = r"""
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
    signal.signal(s, signal.SIG_IGN)
data = b""
while True:
    try:
        chunk = os.read(0, 256)
    except InterruptedError:
        continue
    except OSError:
        break
    if not chunk:
        break
    data += chunk
words = data.split()
if not words or words[-1] == b"done" or not words[0].isdigit():
    sys.exit(0)
pgid, grace = int(words[0]), float(sys.argv[1])

def alive():
    if os.path.isdir("/proc/self"):
        for name in os.listdir("/proc"):
            if name.isdecimal():
                try:
                    with open("/proc/%s/stat" % name, "rb") as f:
                        rest = f.read().rsplit(b")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if rest[2] == str(pgid).encode() and rest[0] not in (b"Z", b"X"):
                    return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def killpg(sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass

killpg(signal.SIGTERM)
deadline = time.monotonic() + grace
while alive() and time.monotonic() < deadline:
    time.sleep(0.02)
killpg(signal.SIGKILL)
"""


class Watchdog:
    """A process that kills the sidecar's group if kai-run dies without stopping it.

    Started before the sidecar (so that it is already running when the sidecar is), told the
    group with arm(), and released with disarm() once kai-run has stopped the sidecar itself.
    """

    def __init__(self, proc: subprocess.Popen[bytes] | None, fd: int | None) -> None:
        self.proc = proc
        self._fd = fd

    @classmethod
    def launch(cls) -> Watchdog:
        """POSIX only (see the module docstring for Windows)."""
        if not sys.executable:
            return cls(None, None)  # embedded interpreter: PDEATHSIG (Linux) is all we have
        read_end, write_end = os.pipe()  # both close-on-exec: no other child inherits them
        argv = [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(WATCHDOG_GRACE)]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            os.close(write_end)
            return cls(None, None)
        finally:
            os.close(read_end)
        return cls(proc, write_end)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def arm(self, pgid: int) -> None:
        self._send(f"{pgid}\n")

    def disarm(self) -> None:
        """The sidecar is stopped: let the watchdog exit without killing anything, and reap it."""
        self._send("done\n")
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)

    def _send(self, text: str) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.write(self._fd, text.encode())


# --- a sidecar for the duration of something (supervise.py, doctor) ----------------------------


class RunningSidecar:
    """A sidecar that serves: the one kai-run started, or a background one it found running."""

    __slots__ = (
        "background",
        "log_path",
        "proc",
        "ready_seconds",
        "spec",
        "state_path",
        "watchdog",
    )

    def __init__(
        self,
        spec: SidecarSpec,
        log_path: str,
        proc: subprocess.Popen[bytes] | None,
        *,
        background: SidecarState | None = None,
        watchdog: Watchdog | None = None,
        ready_seconds: float = 0.0,
    ) -> None:
        self.spec = spec
        self.log_path = log_path
        self.proc = proc  # None when a background sidecar is used
        self.background = background
        self.watchdog = watchdog
        self.ready_seconds = ready_seconds
        self.state_path: str | None = None  # sidecars/supervised/*.json, removed by stop()

    @property
    def pid(self) -> int:
        if self.proc is not None:
            return self.proc.pid
        assert self.background is not None
        return self.background.pid

    def gone(self) -> str | None:
        """How the sidecar ended (`exited with status 1`) once it has, else None."""
        if self.proc is not None:
            code = exited(self.proc)
            return None if code is None else describe_status(code)
        assert self.background is not None
        return None if self.background.alive() else "is gone"

    def stop(self) -> int | None:
        """Stop the sidecar kai-run started (a background one is left alone); once."""
        if self.proc is None:
            return None
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            return stop(self.proc, self.spec.grace_period)
        finally:
            if self.watchdog is not None:
                self.watchdog.disarm()
            if self.state_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.state_path)
                self.state_path = None

    def record(self) -> None:
        """Leave a state file saying which kai-run runs this sidecar (see check_address_free)."""
        assert self.proc is not None
        state = SidecarState(
            self.spec.profile,
            self.proc.pid,
            self.spec.address,
            self.log_path,
            self.spec.argv,
            time.time(),
            _start_token(self.proc.pid),
            supervisor=os.getpid(),
        )
        path = os.path.join(_supervised_dir(), f"{_slug(self.spec.profile)}-{self.proc.pid}.json")
        _supervised_states()  # removes the files of supervisors killed with SIGKILL
        # Only a better error message for somebody else depends on it: never fail the run.
        with contextlib.suppress(OSError):
            self.state_path = _write_state(state, path)


def start_supervised(
    spec: SidecarSpec, *, notify: Callable[[str], None] | None = None
) -> RunningSidecar:
    """Use the profile's background sidecar if one runs, else start one and wait until it serves.

    The caller stops it with RunningSidecar.stop(). notify (if given) hears what happens.
    """
    log_path = log_path_for(spec.profile)
    state = read_state(spec.profile)
    if state is not None:
        if not accepts(spec.host, spec.port):
            raise SidecarError(
                f"the background sidecar of profile '{spec.profile}' (pid {state.pid}) does "
                f"not accept connections at {spec.address}",
                spec.where,
                f"restart it: kai-run sidecar stop -p {spec.profile} && "
                f"kai-run sidecar start -p {spec.profile}",
            )
        if notify:
            notify(
                f"using the background sidecar of profile '{spec.profile}' (pid {state.pid}) "
                f"at {spec.address}; log: {state.log_path}"
            )
        return RunningSidecar(spec, state.log_path, None, background=state)
    check_address_free(spec)
    watchdog = Watchdog.launch() if _IS_POSIX else None
    try:
        proc = start(spec, log_path)
    except BaseException:
        if watchdog is not None:
            watchdog.disarm()
        raise
    running = RunningSidecar(spec, log_path, proc, watchdog=watchdog)
    try:
        if watchdog is not None:
            watchdog.arm(proc.pid)
        running.record()
        if notify:
            notify(f"sidecar of profile '{spec.profile}' started (pid {proc.pid}); log: {log_path}")
        running.ready_seconds = wait_ready(spec, proc, log_path)
    except BaseException:
        running.stop()
        raise
    if notify:
        notify(f"sidecar ready at {spec.address} after {running.ready_seconds:.1f} s")
    return running


@contextlib.contextmanager
def running_sidecar(
    profile: Profile,
    environ: Mapping[str, str],
    *,
    verbose: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Iterator[RunningSidecar]:
    """Run the profile's sidecar for the duration of a `with` block, e.g. doctor's checks.

    A background sidecar of the profile (`kai-run sidecar start`) is used and left running.
    Otherwise one is started, waited for, and stopped at the end, even on errors. With verbose,
    what happens (the log path included) goes to `notify`, by default stderr. Call it from the
    main thread: on Linux, PR_SET_PDEATHSIG follows the thread that started the sidecar.
    """
    spec = SidecarSpec.from_profile(profile, environ)
    say = (notify or _stderr) if verbose else None
    running = start_supervised(spec, notify=say)
    try:
        yield running
    finally:
        running.stop()


# --- in the background: kai-run sidecar start|status|stop ------------------------------------


class SidecarState:
    """What the state file of a background (or supervised) sidecar records."""

    __slots__ = (
        "address",
        "argv",
        "log_path",
        "path",
        "pid",
        "profile",
        "started",
        "supervisor",
        "token",
    )

    def __init__(
        self,
        profile: str,
        pid: int,
        address: str,
        log_path: str,
        argv: list[str],
        started: float,
        token: str | None,
        path: str = "",
        supervisor: int | None = None,
    ) -> None:
        self.profile = profile
        self.pid = pid
        self.address = address
        self.log_path = log_path
        self.argv = argv
        self.started = started
        self.token = token  # the process's start time (Linux), to tell a reused pid apart
        self.path = path
        self.supervisor = supervisor  # the kai-run that supervises it; None: in the background

    def alive(self) -> bool:
        """The recorded process still runs, and is the one kai-run started."""
        if not pid_alive(self.pid):
            return False
        if self.token is not None and _start_token(self.pid) not in (None, self.token):
            return False
        if _IS_POSIX:
            try:
                return os.getpgid(self.pid) == self.pid
            except OSError:
                return False
        return True

    def to_json(self) -> str:
        import json

        return json.dumps(
            {
                "profile": self.profile,
                "pid": self.pid,
                "address": self.address,
                "log": self.log_path,
                "argv": self.argv,
                "started": self.started,
                "token": self.token,
                "supervisor": self.supervisor,
            },
            indent=2,
        )


def _start_token(pid: int) -> str | None:
    if not _IS_LINUX:
        return None
    fields = _proc_stat(pid)
    # Field 22 of /proc/PID/stat, the start time; fields[0] here is field 3.
    return fields[19] if fields and len(fields) > 19 else None


def _load_state(path: str) -> SidecarState | None:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return SidecarState(
            str(data["profile"]),
            int(data["pid"]),
            str(data["address"]),
            str(data["log"]),
            [str(a) for a in data["argv"]],
            float(data["started"]),
            None if data.get("token") is None else str(data["token"]),
            path,
            None if data.get("supervisor") is None else int(data["supervisor"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _all_states() -> list[SidecarState]:
    folder = os.path.dirname(state_path_for("x"))
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = (_load_state(os.path.join(folder, n)) for n in names if n.endswith(".json"))
    return [s for s in found if s is not None]


def _supervised_states() -> list[SidecarState]:
    """The sidecars other kai-runs supervise now; files left by a killed kai-run are removed."""
    folder = _supervised_dir()
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    states = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        state = _load_state(path)
        if state is not None and state.alive():
            states.append(state)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return states


def read_state(profile: str) -> SidecarState | None:
    """The profile's background sidecar if it runs; a stale state file is removed."""
    path = state_path_for(profile)
    if not os.path.exists(path):
        return None
    state = _load_state(path)
    if state is not None and state.alive():
        return state
    with contextlib.suppress(OSError):
        os.unlink(path)
    return None


class SidecarStatus:
    """What `kai-run sidecar start|status|stop` report."""

    __slots__ = ("action", "address", "log_path", "pid", "profile", "ready_seconds", "running")

    def __init__(
        self,
        profile: str,
        *,
        running: bool,
        action: str,
        pid: int | None = None,
        address: str = "",
        log_path: str = "",
        ready_seconds: float = 0.0,
    ) -> None:
        self.profile = profile
        self.running = running
        # started, already-running, running, not-running, stale, stopped
        self.action = action
        self.pid = pid
        self.address = address
        self.log_path = log_path
        self.ready_seconds = ready_seconds


def _write_state(state: SidecarState, path: str | None = None) -> str:
    path = path or state_path_for(state.profile)
    folder = os.path.dirname(path)
    if state.supervisor is not None:  # makedirs would create sidecars/ with the umask's mode
        _private_dir(os.path.dirname(folder))
    _private_dir(folder)
    tmp = f"{path}.{os.getpid()}.tmp"
    with os.fdopen(_open_private(tmp), "w", encoding="utf-8") as f:
        f.write(state.to_json())
    os.replace(tmp, path)
    return path


def start_background(profile: Profile, environ: Mapping[str, str]) -> SidecarStatus:
    """Start the profile's sidecar detached from kai-run, wait until it serves, record its pid."""
    spec = SidecarSpec.from_profile(profile, environ)
    state = read_state(spec.profile)
    if state is not None:
        return SidecarStatus(
            spec.profile,
            running=True,
            action="already-running",
            pid=state.pid,
            address=state.address,
            log_path=state.log_path,
        )
    check_address_free(spec)
    log_path = log_path_for(spec.profile)
    proc = start(spec, log_path, detach=True)
    try:
        seconds = wait_ready(spec, proc, log_path)
        _write_state(
            SidecarState(
                spec.profile,
                proc.pid,
                spec.address,
                log_path,
                spec.argv,
                time.time(),
                _start_token(proc.pid),
            )
        )
    except BaseException:
        stop(proc, spec.grace_period)
        raise
    return SidecarStatus(
        spec.profile,
        running=True,
        action="started",
        pid=proc.pid,
        address=spec.address,
        log_path=log_path,
        ready_seconds=seconds,
    )


def background_status(profile: str) -> SidecarStatus:
    stale = os.path.exists(state_path_for(profile))
    state = read_state(profile)
    if state is None:
        return SidecarStatus(
            profile,
            running=False,
            action="stale" if stale else "not-running",
            log_path=log_path_for(profile),
        )
    return SidecarStatus(
        profile,
        running=True,
        action="running",
        pid=state.pid,
        address=state.address,
        log_path=state.log_path,
    )


def stop_background(profile: str, grace: float = DEFAULT_GRACE_PERIOD) -> SidecarStatus:
    """SIGTERM the background sidecar's group, SIGKILL after `grace`; forget it."""
    status = background_status(profile)
    if not status.running:
        return status
    assert status.pid is not None
    pgid = status.pid
    if _IS_POSIX:
        # Not our child (its kai-run has exited): it cannot be waited for, only watched.
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pgid) and time.monotonic() < deadline:
            time.sleep(_POLL)
        _killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
    else:  # pragma: no cover - Windows
        _taskkill(pgid)
    with contextlib.suppress(OSError):
        os.unlink(state_path_for(profile))
    status.running = False
    status.action = "stopped"
    return status
