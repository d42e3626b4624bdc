"""Starting the command: exec on POSIX (same PID, so signals and exit status are the child's own),
a waited-for subprocess on Windows. Supervision with a sidecar lives in supervise.py."""

from __future__ import annotations

import os
import sys

from kai_launch.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, LaunchError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def command_error(argv0: str, error: OSError, path: str | None = None) -> LaunchError:
    """The shell's answer to a command that cannot run: 127 not found, 126 not executable."""
    if isinstance(error, FileNotFoundError) and _found_on_path(argv0, path):
        return LaunchError(
            f"cannot run {argv0}: its interpreter (#! line) was not found",
            "command",
            "fix the script's first line, or install the interpreter it names",
            exit_code=EXIT_NOT_EXECUTABLE,
        )
    if isinstance(error, FileNotFoundError):
        where = "not a file" if os.sep in argv0 else "searched the child's PATH"
        hint = "check the path" if os.sep in argv0 else "install it, or give its full path"
        return LaunchError(f"command not found: {argv0}", where, hint, exit_code=EXIT_NOT_FOUND)
    reason = "permission denied" if isinstance(error, PermissionError) else error.strerror
    return LaunchError(
        f"cannot run {argv0}: {reason}",
        "command",
        f"make it executable (chmod +x {argv0}) or run it through its interpreter",
        exit_code=EXIT_NOT_EXECUTABLE,
    )


def _found_on_path(argv0: str, path: str | None) -> bool:
    """True when the file exists (so ENOENT came from its #! interpreter)."""
    if os.sep in argv0:
        return os.path.isfile(argv0)
    import shutil

    return shutil.which(argv0, path=path) is not None


def exec_command(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Replace kai-run with the command (POSIX) or run it and return its exit status (Windows)."""
    if not argv[0]:
        raise LaunchError(
            "command not found: '' (an empty command name)",
            "command",
            "give the program to run after --",
            exit_code=EXIT_NOT_FOUND,
        )
    if os.name != "posix":
        return _run_windows(argv, env)
    sys.stdout.flush()
    sys.stderr.flush()
    _restore_default_signals()
    try:
        os.execvpe(argv[0], list(argv), dict(env))
    except OSError as e:
        raise command_error(argv[0], e, env.get("PATH")) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _restore_default_signals() -> None:
    """Undo what the interpreter did at start-up: it ignores SIGPIPE and SIGXFSZ, and an ignored
    signal stays ignored across exec, so `kai-run -- yes | head -1` would see EPIPE instead of
    dying quietly. subprocess does the same for its children (restore_signals=True)."""
    import _signal  # type: ignore[import-not-found]  # `signal` would pull in enum: slower

    for name in ("SIGPIPE", "SIGXFSZ"):
        number = getattr(_signal, name, None)
        if number is not None:
            _signal.signal(number, _signal.SIG_DFL)


def _run_windows(argv: Sequence[str], env: Mapping[str, str]) -> int:
    import shutil
    import subprocess

    # CreateProcess neither searches the child's PATH nor finds .cmd/.bat files (npm, code).
    program = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    try:
        proc = subprocess.Popen([program, *argv[1:]], env=dict(env))
    except OSError as e:
        raise command_error(argv[0], e) from None
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # The console delivered Ctrl+C to the child as well; wait for it to decide.
            continue
