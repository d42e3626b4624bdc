"""Secret references: `{ env = "NAME" }`, `{ file = "PATH" }`, `{ command = [argv...] }`, and in
a profile's env `{ oauth2 = { token_url = ..., client_id = ..., client_secret = ... } }`.

They are resolved only when a profile is used, and never shown to humans unless `--reveal` is
given. Only oauth2 tokens are cached (kai_launch/oauth2.py): the others are read every time.
"""

from __future__ import annotations

import os

from kai_launch.errors import SecretError
from kai_launch.expand import expand_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping

    from kai_launch.oauth2 import OAuth2Spec

COMMAND_TIMEOUT = 10.0


class SecretRef:
    """A reference to a secret, with what is needed to resolve it and to say where it came from."""

    __slots__ = ("arg", "base_dir", "kind", "where")

    def __init__(
        self, kind: str, arg: str | list[str] | OAuth2Spec, base_dir: str, where: str
    ) -> None:
        self.kind = kind  # "env", "file", "command" or "oauth2"
        self.arg = arg
        self.base_dir = base_dir
        self.where = where  # "profile 'corp', key 'env.X' (/path/profiles.toml)"

    @classmethod
    def from_toml(cls, value: dict[str, object], base_dir: str, where: str) -> SecretRef:
        kind, arg = next(iter(value.items()))
        if kind == "oauth2":
            from kai_launch.oauth2 import OAuth2Spec

            assert isinstance(arg, dict)
            return cls(kind, OAuth2Spec.from_toml(arg, base_dir, where), base_dir, where)
        assert isinstance(arg, (str, list))
        return cls(kind, [str(a) for a in arg] if isinstance(arg, list) else arg, base_dir, where)

    def describe(self) -> str:
        """How show/doctor name the reference without revealing the value."""
        if self.kind == "command":
            assert isinstance(self.arg, list)
            return "command: " + " ".join(self.arg)
        if self.kind == "oauth2":
            assert not isinstance(self.arg, (str, list))
            return f"oauth2: {self.arg.describe()}"
        return f"{self.kind}: {self.arg}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretRef) and (self.kind, self.arg, self.base_dir) == (
            other.kind,
            other.arg,
            other.base_dir,
        )

    def __hash__(self) -> int:
        arg = tuple(self.arg) if isinstance(self.arg, list) else self.arg
        return hash((self.kind, arg, self.base_dir))

    def __repr__(self) -> str:
        return f"SecretRef({self.kind}={self.arg!r})"


def resolve_secret(ref: SecretRef, environ: Mapping[str, str]) -> str:
    if ref.kind == "oauth2":
        # schema.py allows oauth2 only in a profile's env, which environ.build_plan resolves
        # with the plan's proxies and CA bundle (kai_launch.oauth2.fetch_token).
        raise SecretError(
            "an oauth2 reference can only be used in the profile's env table",
            ref.where,
            "the token is fetched through the profile's proxy and CA bundle: use env.NAME",
        )
    if ref.kind == "env":
        assert isinstance(ref.arg, str)
        value = environ.get(ref.arg)
        if value is None:
            raise SecretError(
                f"secret variable {ref.arg} is not set",
                ref.where,
                f"export {ref.arg} before running kai-run",
            )
        return value
    if ref.kind == "file":
        assert isinstance(ref.arg, str)
        path = expand_path(ref.arg, ref.base_dir, environ, ref.where)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise SecretError(
                f"secret file {path} does not exist", ref.where, "create it or fix the path"
            ) from None
        except IsADirectoryError:
            raise SecretError(
                f"secret file {path} is a directory",
                ref.where,
                "name the file that holds the secret",
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise SecretError(
                f"cannot read secret file {path}: {reason}",
                ref.where,
                "check its permissions; a secret file holds UTF-8 text",
            ) from None
        # Editors and `echo x > file` add a newline that is never part of the secret.
        return text.rstrip("\r\n")
    return _run_command(ref, environ)


def _run_command(ref: SecretRef, environ: Mapping[str, str]) -> str:
    import subprocess

    assert isinstance(ref.arg, list)
    argv = ref.arg
    shown = " ".join(argv)
    try:
        # Its own session, so that a timeout ends everything it started, not just its leader.
        proc = subprocess.Popen(
            argv,
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=os.name == "posix",
        )
    except FileNotFoundError:
        raise SecretError(
            f"secret command not found: {argv[0]}", ref.where, "install it or fix the command"
        ) from None
    except PermissionError:
        raise SecretError(
            f"secret command is not executable: {argv[0]}",
            ref.where,
            f"chmod +x {argv[0]}, or run it through its interpreter",
        ) from None
    try:
        out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        raise SecretError(
            f"secret command `{shown}` did not finish within {COMMAND_TIMEOUT:g} s",
            ref.where,
            "run it by hand to see why it hangs (a login prompt?)",
        ) from None
    if proc.returncode != 0:
        # Neither its stdout nor its stderr is shown: either may hold the secret or a token.
        raise SecretError(
            f"secret command `{shown}` failed with exit status {proc.returncode}",
            ref.where,
            f"run `{shown}` by hand to see its error",
        )
    try:
        value = out.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(
            f"secret command `{shown}` printed bytes that are not UTF-8 text",
            ref.where,
            "an environment variable holds text: encode the secret (base64, hex) or fix the command",
        ) from None
    if not value:
        raise SecretError(
            f"secret command `{shown}` printed nothing",
            ref.where,
            f"run `{shown}` by hand: an empty secret is almost always a failed login",
        )
    return value


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    if os.name == "posix":
        import contextlib
        import signal

        with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    proc.communicate()
