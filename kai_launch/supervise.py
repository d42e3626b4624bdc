"""Running a command next to its profile's sidecar: kai-run cannot exec, so it supervises.

Order: start the sidecar (or use the profile's background one), wait until it serves, build the
child's environment (its CA may be a file the sidecar writes on first start), run the command
with inherited stdio, forward signals to it, and stop the sidecar when it ends.

- Exit status: exactly the child's; killed by signal N gives 128+N.
- SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 reach the child every time. The child
  stays in kai-run's process group, so when that group is the foreground of kai-run's terminal,
  a Ctrl+C (SIGINT) or Ctrl+\\ (SIGQUIT) from the keyboard already reached the child: kai-run does
  not send it again. A signal that kai-run inherited as ignored stays ignored, for both.
- Before the child runs, SIGINT, SIGTERM, SIGHUP and SIGQUIT abort: the sidecar is stopped and
  kai-run exits with 128+N. SIGUSR1 and SIGUSR2 are ignored then: there is nobody to tell yet,
  and delivering them later would kill a child that has not yet installed its handlers.
- The sidecar dying while the child runs is said on stderr (one line); the child goes on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from kai_launch.launch import command_error
from kai_launch.sidecar import RunningSidecar, SidecarSpec, describe_status, start_supervised

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import FrameType

    from kai_launch.profiles import Profile

_IS_POSIX = os.name == "posix"
FORWARDED: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)
# Signals a terminal sends to its whole foreground process group, the child included.
_KEYBOARD = frozenset(getattr(signal, n) for n in ("SIGINT", "SIGQUIT") if hasattr(signal, n))
# Before the child exists these mean "give up" (SIGUSR1 and SIGUSR2 are ignored then).
_ABORT = frozenset(
    getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n)
)


def _say(message: str) -> None:
    sys.stderr.write(f"kai-run: {message}\n")
    sys.stderr.flush()


class _Aborted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Forwarder:
    """Signal handlers that pass signals on to the child (see the module docstring)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.spawning = False  # between fork and `self.child = ...`: signals wait for the child
        self.aborting = False
        self.done = False
        self.pending: list[int] = []
        self.saved: dict[int, object] = {}
        self._tty: int | None = None

    def install(self) -> None:
        if not _IS_POSIX:
            return
        try:
            # O_NOCTTY: only look at the terminal kai-run already has, never acquire one.
            self._tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            self._tty = None  # no controlling terminal: every signal came from kill()
        for sig in FORWARDED:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN:
                continue  # ignored by whoever started kai-run: the child inherits that
            self.saved[sig] = previous
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self.saved.clear()
        if self._tty is not None:
            os.close(self._tty)
            self._tty = None

    def _terminal_sent_it(self) -> bool:
        """Whether a keyboard signal came from the terminal, and so reached the child already."""
        if self._tty is None:
            return False
        try:
            return os.tcgetpgrp(self._tty) == os.getpgrp()
        except OSError:
            return False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.done or self.aborting:
            return  # the child has been reaped (its pid may be somebody else's), or we give up
        child = self.child
        if child is None:
            if self.spawning:  # the child may exist already: tell it as soon as we know its pid
                self.pending.append(signum)
            elif signum in _ABORT:
                self.aborting = True
                raise _Aborted(signum)
            return
        if signum in _KEYBOARD and self._terminal_sent_it():
            return
        self._send(child, signum)

    def flush_pending(self) -> None:
        assert self.child is not None
        while self.pending:
            signum = self.pending.pop(0)
            if not (signum in _KEYBOARD and self._terminal_sent_it()):
                self._send(self.child, signum)

    @staticmethod
    def _send(child: subprocess.Popen[bytes], signum: int) -> None:
        # Not reaped yet (done is still False): the pid is still the child's.
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def exit_status(returncode: int) -> int:
    """The child's exit status as a shell reports it: 128+N when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def run_with_sidecar(
    profile: Profile,
    command: Sequence[str],
    env: Mapping[str, str] | Callable[[], Mapping[str, str]],
    environ: Mapping[str, str],
    *,
    verbose: bool = False,
) -> int:
    """Start the profile's sidecar, run `command` next to it, stop the sidecar; the child's status.

    env is the child's environment, or a function that builds it: called once the sidecar is
    ready, so that a CA file the sidecar writes on its first start can go into the bundle.
    Raises SidecarError (exit 2) for sidecar failures and LaunchError (126, 127) when the
    command cannot run; the sidecar is stopped in every case.
    """
    spec = SidecarSpec.from_profile(profile, environ)
    forwarder = _Forwarder()
    forwarder.install()
    try:
        sidecar = start_supervised(spec, notify=_say if verbose else None)
        try:
            child_env = env() if callable(env) else env
            return _run_child(command, child_env, sidecar, forwarder)
        finally:
            forwarder.done = True
            sidecar.stop()
    except _Aborted as e:
        return 128 + e.signum
    finally:
        forwarder.restore()


def _run_child(
    command: Sequence[str],
    env: Mapping[str, str],
    sidecar: RunningSidecar,
    forwarder: _Forwarder,
) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    forwarder.spawning = True
    try:
        child = subprocess.Popen(list(command), env=dict(env))
    except OSError as e:
        raise command_error(command[0], e) from None
    forwarder.child = child
    forwarder.flush_pending()
    if _IS_POSIX and hasattr(os, "waitid") and sidecar.proc is not None:
        _wait_posix(child, sidecar)
    else:
        _wait_polling(child, sidecar)
    returncode = child.wait()
    forwarder.done = True
    return exit_status(returncode)


def _sidecar_died(sidecar: RunningSidecar, how: str) -> None:
    _say(
        f"warning: the sidecar of profile '{sidecar.spec.profile}' {how} while the command "
        f"was running; its log: {sidecar.log_path}"
    )


def _wait_posix(child: subprocess.Popen[bytes], sidecar: RunningSidecar) -> None:
    """Block until the child exits, hearing about the sidecar's death on the way; no polling.

    WNOWAIT leaves the exited process unreaped: the child for child.wait(), the sidecar so that
    its process group id stays reserved until stop() has killed what is left of the group.
    """
    assert sidecar.proc is not None
    watchdog = sidecar.watchdog.pid if sidecar.watchdog is not None else None
    sidecar_reported = False
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:  # pragma: no cover - only with WNOHANG
            continue
        pid = info.si_pid
        if pid == child.pid:
            return
        if pid == sidecar.proc.pid:
            if not sidecar_reported:
                status = info.si_status
                if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
                    status = -status
                _sidecar_died(sidecar, describe_status(status))
                sidecar_reported = True
            sidecar.stop()  # kills what is left of its group, reaps it, releases the watchdog
            continue
        if pid == watchdog and sidecar.watchdog is not None and sidecar.watchdog.proc is not None:
            sidecar.watchdog.proc.wait()
            continue
        # Not ours to know about (nothing else is started here); reap it so waitid moves on.
        os.waitpid(pid, 0)


def _wait_polling(child: subprocess.Popen[bytes], sidecar: RunningSidecar) -> None:
    """Windows, and a background sidecar (not our child): wait with a periodic look at it."""
    reported = False
    while True:
        try:
            child.wait(0.5)
            return
        except subprocess.TimeoutExpired:
            pass
        except KeyboardInterrupt:  # pragma: no cover - Windows: the console told the child too
            continue
        if not reported:
            how = sidecar.gone()
            if how is not None:
                _sidecar_died(sidecar, how)
                reported = True
