"""Entry point. The exec path (`kai-run [-p NAME] [...] -- cmd`) is handled here, before typer,
rich, requests, tomlkit or cryptography are imported: it is the hot path (bench/startup.py).
Anything else (a subcommand, --help, --version) goes to the typer app in cli.py.

This module and cli.py are the CLI layer: the only places that write to the terminal.
"""

from __future__ import annotations

import os
import sys

from kai_launch.errors import KaiRunError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from kai_launch.edit import EditResult
    from kai_launch.environ import EnvPlan

# Options accepted before `--` (and before a subcommand). Anything else hands over to typer.
_VALUE_OPTIONS = {
    "-p": "profile",
    "--profile": "profile",
    "-c": "config",
    "--config": "config",
    "--set": "set",
    "--unset": "unset",
}
_FLAGS = {
    "--clean-env": "clean_env",
    "--debug": "debug",
    "--verbose": "verbose",
    "-v": "verbose",
    "--refresh-pac": "refresh_pac",
}


class RunOptions:
    """What the command line asked for on the exec path."""

    __slots__ = (
        "changes",
        "clean_env",
        "command",
        "config",
        "debug",
        "profile",
        "refresh_pac",
        "set",
        "unset",
        "verbose",
    )

    def __init__(self) -> None:
        self.profile: str | None = None
        self.config: str | None = None
        self.set: list[str] = []
        self.unset: list[str] = []
        self.clean_env = False
        self.debug = False
        self.verbose = False
        self.refresh_pac = False
        self.command: list[str] = []
        self.changes: list[tuple[str, str]] = []  # ("set", "K=V") / ("unset", "K"), in order

    def env_changes(
        self, parse: Callable[[str], tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[str]]:
        """--set/--unset as (overrides, removals); for one name the last on the line wins."""
        final: dict[str, str | None] = {}
        for kind, text in self.changes or [("set", s) for s in self.set] + [
            ("unset", u) for u in self.unset
        ]:
            if kind == "set":
                name, value = parse(text)
                final.pop(name, None)
                final[name] = value
            else:
                final.pop(text, None)
                final[text] = None
        overrides = [(k, v) for k, v in final.items() if v is not None]
        return overrides, [k for k, v in final.items() if v is None]


def parse_run_argv(argv: Sequence[str]) -> RunOptions | None:
    """Parse `[OPTIONS] [-- COMMAND...]`; None when the line is for typer (a subcommand, --help...)."""
    if not argv:
        return None
    opts = RunOptions()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts.command = list(argv[i + 1 :])
            return opts
        name, value = arg, None
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
        elif arg[:2] in ("-p", "-c") and len(arg) > 2:
            name, value = arg[:2], arg[2:]
        if name in _VALUE_OPTIONS:
            if value is None:
                if i + 1 >= len(argv):
                    return None  # let typer say "option requires an argument"
                value = argv[i + 1]
                i += 1
            key = _VALUE_OPTIONS[name]
            if key in ("set", "unset"):
                getattr(opts, key).append(value)
                opts.changes.append((key, value))
            else:
                setattr(opts, key, value)
        elif arg in _FLAGS:
            setattr(opts, _FLAGS[arg], True)
        else:
            return None
        i += 1
    return opts


def report(error: KaiRunError, *, debug: bool = False) -> int:
    """The one place kai-run's own errors are shown: one line, then a hint."""
    if debug:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    hint = error.hint or "run again with --debug to see where it happened"
    lines = [f"kai-run: error: {error.message()}", f"  hint: {hint}"]
    sys.stderr.write("\n".join(lines) + "\n")
    return error.exit_code


def warn(messages: Sequence[str]) -> None:
    for message in messages:
        prefix = "" if message.startswith("note:") else "warning: "
        sys.stderr.write(f"kai-run: {prefix}{message}\n")


def run(opts: RunOptions) -> int:
    """Load the profile, build the environment, and run the command under it."""
    from kai_launch.config import load_config
    from kai_launch.environ import build_plan, parse_assignment
    from kai_launch.profiles import resolve_profile, select_profile_name

    environ = os.environ
    overrides, removals = opts.env_changes(parse_assignment)
    config = load_config(opts.config, environ)
    name, why = select_profile_name(config, opts.profile, environ)
    profile = resolve_profile(config, name, why)
    command = opts.command or profile.command
    if not command:
        raise KaiRunError(
            "no command to run",
            f"profile '{name}' ({profile.path})",
            'put it after --, or add command = ["kai-rpc-server"] to the profile',
        )
    pac = None
    if profile.pac_url is not None:
        from kai_launch.pac import for_profile

        pac = for_profile(profile, environ, refresh=opts.refresh_pac)
        if opts.verbose and pac is not None:
            from kai_launch.proxyurl import redact_url

            routes = "; ".join(f"{redact_url(r.url)} -> {r.shown()}" for r in pac.routes)
            sys.stderr.write(f"kai-run: PAC: {pac.describe_source()}: {routes}\n")

    def child_plan(*, resolve_secrets: bool = True, bundles: bool = True) -> EnvPlan:
        return build_plan(
            profile,
            environ,
            overrides=overrides,
            removals=removals,
            clean_env=opts.clean_env,
            resolve_secrets=resolve_secrets,
            bundles=bundles,
            pac=pac,
        )

    if opts.verbose:
        sys.stderr.write(f"kai-run: profile '{name}' ({why}); running: {' '.join(command)}\n")
    if profile.sidecar is not None:
        from kai_launch.supervise import run_with_sidecar

        # The sidecar's CA (ca_bundle) may be a file it writes on its first start: the bundle is
        # built once it is ready. Everything else is checked first, before anything starts.
        child_plan(resolve_secrets=False, bundles=False)

        def child_env() -> dict[str, str]:
            plan = child_plan()
            warn(plan.warnings)
            return plan.child_environ(environ)

        return run_with_sidecar(profile, command, child_env, environ, verbose=opts.verbose)
    plan = child_plan()
    warn(plan.warnings)
    env = plan.child_environ(environ)
    from kai_launch.launch import exec_command

    return exec_command(command, env)


def secret_reference(
    env: str | None, file: str | None, command: str | None
) -> tuple[str, str | list[str]] | None:
    """`--secret-env/--secret-file/--secret-command` as a ("env"|"file"|"command", arg) pair."""
    given = [(k, v) for k, v in (("env", env), ("file", file), ("command", command)) if v]
    if len(given) > 1:
        raise KaiRunError(
            "give one of --secret-env, --secret-file, --secret-command",
            "command line",
            "a key holds one secret reference",
        )
    if not given:
        return None
    kind, arg = given[0]
    assert arg is not None
    if kind != "command":
        return kind, arg
    import json
    import shlex

    try:
        argv = json.loads(arg) if arg.lstrip().startswith("[") else shlex.split(arg)
    except ValueError as e:
        raise KaiRunError(
            f"cannot read --secret-command: {e}",
            "command line",
            'e.g. --secret-command "gh auth token"',
        ) from None
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise KaiRunError(
            "--secret-command needs a command",
            "command line",
            'e.g. --secret-command "gh auth token"',
        )
    return kind, argv


def show_edit(result: EditResult) -> None:
    """What every editing command prints: warnings on stderr, one line on stdout."""
    warn(result.warnings)
    state = "" if result.changed else "unchanged: "
    sys.stdout.write(f"{state}{result.summary} ({result.path})\n")


_SET_OPTIONS = {"--secret-env", "--secret-file", "--secret-command", "-c", "--config"}


def profiles_set(args: Sequence[str]) -> int | None:
    """`[-c F] profiles set NAME KEY [VALUE] [options]` without typer (whose import alone costs
    more than the edit); None hands anything unusual (--help, a typo) to typer."""
    if "--help" in args or "-h" in args:
        return None
    values: dict[str, str] = {}
    positional: list[str] = []
    site = False
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if arg == "--site":
            site = True
        elif name in _SET_OPTIONS:
            if not eq and i + 1 >= len(args):
                return None  # typer says the option needs a value
            if not eq:
                i += 1
                inline = args[i]
            values["--config" if name == "-c" else name] = inline
        elif arg.startswith("-") and arg != "-" and not positional[2:]:
            return None
        else:
            positional.append(arg)
        i += 1
    if positional[:2] != ["profiles", "set"] or not 4 <= len(positional) <= 5:
        return None
    from kai_launch.edit import edit_target, set_value

    _, _, profile, key, *rest = positional
    try:
        secret = secret_reference(
            values.get("--secret-env"), values.get("--secret-file"), values.get("--secret-command")
        )
        if secret is not None and rest:
            raise KaiRunError(
                "give either a value or a secret reference, not both",
                "command line",
                f"kai-run profiles set {profile} {key} --secret-env VAR",
            )
        if secret is None and not rest:
            return None  # let typer say what is missing
        target = edit_target(values.get("--config"), os.environ, site=site)
        show_edit(
            set_value(
                target, profile, key, rest[0] if rest else None, secret=secret, cwd=os.getcwd()
            )
        )
    except KaiRunError as e:
        return report(e)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "profiles" in args[:3] and "set" in args[:4]:
        done = profiles_set(args)
        if done is not None:
            return done
    opts = parse_run_argv(args)
    if opts is None:
        from kai_launch.cli import run_cli

        return run_cli(args)
    try:
        return run(opts)
    except KaiRunError as e:
        return report(e, debug=opts.debug)
    except KeyboardInterrupt:
        return 130
