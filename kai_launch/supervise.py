"""Running a command next to its profile's sidecar: kai-run cannot exec, so it supervises.

Order: start the sidecar (or use the profile's background one), wait until it serves, build the
child's environment (its CA may be a file the sidecar writes on first start), run the command
with inherited stdio, forward signals to it, and stop the sidecar when it ends.

- Exit status: exactly the child's; killed by signal N gives 128+N.
- SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to kai-run reach the child every
  time. The child stays in kai-run's process group, so what the kernel sends to that whole group
  (the terminal's Ctrl+C and Ctrl+\\, the SIGHUP when the session's leader exits) reached the
  child already: kai-run does not send it again. A signal that kai-run inherited as ignored
  stays ignored, for both.
- Linux: while the child runs, kai-run blocks these signals (and SIGCHLD) and takes them with
  sigtimedwait(), whose siginfo tells who sent each one: si_code SI_KERNEL for the kernel (a
  terminal), SI_USER, SI_QUEUE or SI_TKILL for kill(), sigqueue() and tkill(). Only a kernel's
  signal is left alone, and only while the child is still in kai-run's process group (a child
  that moved to a group of its own did not get it). The exception is SIGHUP to kai-run as a
  session leader: a terminal's hang-up goes to the leader alone. The child starts with the
  signal mask kai-run had before (exec would keep the blocked one) and default dispositions.
- macOS and the other POSIX systems (Python has no sigtimedwait on macOS): plain signal handlers,
  which cannot see the sender. A SIGINT or SIGQUIT that comes while kai-run is the foreground
  process group of its terminal is taken for the keyboard's and not repeated, so one sent with
  kill() to kai-run's pid alone is lost then; send it to the process group (`kill -INT -PGID`)
  or use SIGTERM. Without a terminal every signal is forwarded.
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
# Linux's si_code for a signal the kernel generated (<asm-generic/siginfo.h>); kill() gives
# SI_USER (0), sigqueue() SI_QUEUE (-1), tkill() and tgkill() SI_TKILL (-6). Other systems
# number their codes differently: they keep the signal handlers (see the module docstring).
_SI_KERNEL = 0x80
_SIGWAIT = (
    sys.platform.startswith("linux")
    and hasattr(signal, "sigtimedwait")
    and hasattr(signal, "pthread_sigmask")
)
# No SIGCHLD tells of a background sidecar's end (it is not our child): look this often.
_BACKGROUND_LOOK = 0.5
# With our own sidecar, SIGCHLD wakes the wait up; the timeout is only a safety net.
_WAKE_UP = 5.0


def _say(message: str) -> None:
    sys.stderr.write(f"kai-run: {message}\n")
    sys.stderr.flush()


class _Aborted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Forwarder:
    """Passes signals on to the child (see the module docstring).

    Before the child exists, and on systems without sigtimedwait, signal handlers do the work.
    On Linux, block() holds the signals pending from just before the child is started; the wait
    loop takes them with their siginfo and calls forward().
    """

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.spawning = False  # between fork and `self.child = ...`: signals wait for the child
        self.aborting = False
        self.done = False
        self.pending: list[int] = []
        self.saved: dict[int, object] = {}
        self.blocked: frozenset[int] = frozenset()  # what block() blocked; empty: not blocked
        self._old_mask: set[int | signal.Signals] | None = None
        self._tty: int | None = None

    def install(self) -> None:
        if not _IS_POSIX:
            return
        if not _SIGWAIT:
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
        self.unblock()
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self.saved.clear()
        if self._tty is not None:
            os.close(self._tty)
            self._tty = None

    # --- Linux: blocked signals, taken with their siginfo -----------------------------------

    def block(self) -> None:
        """From now on the forwarded signals and SIGCHLD stay pending until the wait takes them."""
        if not _SIGWAIT:
            return
        blocked = frozenset({*self.saved, signal.SIGCHLD})
        self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        self.blocked = blocked

    def unblock(self) -> None:
        """What is still pending goes to the handlers, which ignore it once `done` is set."""
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            self._old_mask = None
            self.blocked = frozenset()

    def child_preexec(self) -> None:
        """In the child, before exec: kai-run's mask as it was, and default dispositions.

        exec keeps the signal mask, so without this the command would start with the
        forwarded signals blocked. A signal already pending (a Ctrl+C typed while it starts)
        then acts as it would on the command before it set up handlers, not on kai-run's.
        """
        for sig in self.saved:
            signal.signal(sig, signal.SIG_DFL)
        if self._old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)

    def forward(self, info: signal.struct_siginfo) -> None:
        """A signal taken by sigtimedwait() while the child runs."""
        child = self.child
        if child is None or self.done:
            return
        if info.si_code == _SI_KERNEL and self._group_got_it(info.si_signo, child):
            return
        self._send(child, info.si_signo)

    @staticmethod
    def _group_got_it(signum: int, child: subprocess.Popen[bytes]) -> bool:
        """Whether a signal from the kernel went to the child too: to our whole group."""
        if signum == signal.SIGHUP and os.getsid(0) == os.getpid():
            return False  # a terminal's hang-up goes to the session leader alone
        try:
            # Unreaped (the wait uses WNOWAIT): the pid is still the child's.
            return os.getpgid(child.pid) == os.getpgrp()
        except OSError:
            return False

    # --- signal handlers: before the child exists, and where there is no sigtimedwait -------

    def _terminal_sent_it(self) -> bool:
        """Whether a keyboard signal came from the terminal, and so reached the child already.

        A guess (macOS): kai-run is the terminal's foreground group. On Linux _tty stays None:
        a signal handled here came before the child existed, so it cannot have reached it.
        """
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
    command cannot run; the sidecar is stopped in every case. Call it from the main thread of
    a program that runs no other threads: on Linux the signals are blocked in this thread only.
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
    try:
        # Blocked before the fork: no signal meant for the child slips between. A handler may
        # still run for one that came just before; it aborts, or (spawning) waits for the pid.
        forwarder.block()
        forwarder.spawning = True
        try:
            child = subprocess.Popen(
                list(command),
                env=dict(env),
                # Only with blocked signals: preexec_fn costs the fast vfork() path.
                preexec_fn=forwarder.child_preexec if forwarder.blocked else None,  # noqa: PLW1509
            )
        except OSError as e:
            raise command_error(command[0], e) from None
        forwarder.child = child
        forwarder.flush_pending()
        if _IS_POSIX and hasattr(os, "waitid") and (forwarder.blocked or sidecar.proc is not None):
            _wait_posix(child, sidecar, forwarder)
        else:
            _wait_polling(child, sidecar)
        returncode = child.wait()
    finally:
        forwarder.done = True
        forwarder.unblock()
    return exit_status(returncode)


def _sidecar_died(sidecar: RunningSidecar, how: str) -> None:
    _say(
        f"warning: the sidecar of profile '{sidecar.spec.profile}' {how} while the command "
        f"was running; its log: {sidecar.log_path}"
    )


class _Exits:
    """Tells when the child has exited, hearing about the sidecar's end on the way.

    WNOWAIT leaves the exited process unreaped: the child for child.wait(), the sidecar so that
    its process group id stays reserved until stop() has killed what is left of the group.
    """

    def __init__(self, child: subprocess.Popen[bytes], sidecar: RunningSidecar) -> None:
        self.child = child
        self.sidecar = sidecar
        self.reported = False

    def child_exited(self, *, block: bool) -> bool:
        """Deal with every process that has exited; True once the child has. block: wait."""
        flags = os.WEXITED | os.WNOWAIT | (0 if block else os.WNOHANG)
        while True:
            if self.sidecar.proc is None and not self.reported:
                how = self.sidecar.gone()  # a background sidecar: not our child
                if how is not None:
                    _sidecar_died(self.sidecar, how)
                    self.reported = True
            try:
                info = os.waitid(os.P_ALL, 0, flags)
            except ChildProcessError:
                return True
            if info is None:
                return False  # WNOHANG: nobody else has exited
            if info.si_pid == self.child.pid:
                return True
            self._other_exited(info)

    def _other_exited(self, info: os.waitid_result) -> None:
        sidecar = self.sidecar
        pid = info.si_pid
        if sidecar.proc is not None and pid == sidecar.proc.pid:
            if not self.reported:
                status = info.si_status
                if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
                    status = -status
                _sidecar_died(sidecar, describe_status(status))
                self.reported = True
            sidecar.stop()  # kills what is left of its group, reaps it, releases the watchdog
            return
        watchdog = sidecar.watchdog
        if watchdog is not None and watchdog.proc is not None and pid == watchdog.proc.pid:
            watchdog.proc.wait()
            return
        # Not ours to know about (nothing else is started here); reap it so waitid moves on.
        os.waitpid(pid, 0)


def _wait_posix(
    child: subprocess.Popen[bytes], sidecar: RunningSidecar, forwarder: _Forwarder
) -> None:
    """Block until the child exits; no polling (but for a background sidecar's end).

    Linux: the signals are blocked; sigtimedwait() takes them (with their siginfo) and SIGCHLD
    says a process has exited. Elsewhere waitid() blocks and the signal handlers run meanwhile.
    """
    exits = _Exits(child, sidecar)
    if not forwarder.blocked:
        while not exits.child_exited(block=True):
            pass
        return
    timeout = _BACKGROUND_LOOK if sidecar.proc is None else _WAKE_UP
    while not exits.child_exited(block=False):
        info = signal.sigtimedwait(forwarder.blocked, timeout)
        if info is not None and info.si_signo != signal.SIGCHLD:
            forwarder.forward(info)


def _wait_polling(child: subprocess.Popen[bytes], sidecar: RunningSidecar) -> None:
    """Windows, and a background sidecar (not our child) without sigtimedwait: wait, and look
    at the sidecar now and then."""
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
