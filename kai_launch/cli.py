"""The typer application: every subcommand, each a thin handler over a core function.

The exec path (`kai-run -p NAME -- cmd`) never comes here: main.py handles it before typer is
imported. Output is rendered by render.py; kai-run's own errors by main.report().
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from kai_launch import __version__
from kai_launch.errors import KaiRunError
from kai_launch.main import report

EPILOG_MAIN = """\
Examples:

  kai-run --profile corp -- kai-rpc-server --log-level info

  kai-run -p corp                      # runs the profile's `command`

  eval "$(kai-run env --profile corp)"

  kai-run doctor --profile corp --url https://api.openai.com/v1/models
"""


class Globals:
    """Options given before the subcommand; the subcommand's own -p/-c win over these."""

    def __init__(self) -> None:
        self.profile: str | None = None
        self.config: str | None = None
        self.set: list[str] = []
        self.unset: list[str] = []
        self.clean_env = False
        self.debug = False
        self.verbose = False


class KaiRunGroup(TyperGroup):
    """Turns KaiRunError into the one-line error and its exit code, for every subcommand."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KaiRunError as e:
            debug = isinstance(ctx.obj, Globals) and ctx.obj.debug
            raise typer.Exit(report(e, debug=debug)) from None


app = typer.Typer(
    name="kai-run",
    cls=KaiRunGroup,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EPILOG_MAIN,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Run Kai (or any command) under a named network profile: proxies, CA bundles, secrets.",
)
profiles_app = typer.Typer(
    cls=TyperGroup,
    no_args_is_help=True,
    help="List, show and edit profiles.",
    rich_markup_mode=None,
)
config_app = typer.Typer(
    cls=TyperGroup,
    no_args_is_help=True,
    help="Where profiles are read from; check them.",
    rich_markup_mode=None,
)
sidecar_app = typer.Typer(
    cls=TyperGroup,
    no_args_is_help=True,
    help="Manage a profile's sidecar proxy in the background.",
    rich_markup_mode=None,
)
app.add_typer(profiles_app, name="profiles")
app.add_typer(config_app, name="config")
app.add_typer(sidecar_app, name="sidecar")

ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", "-p", help="Profile name (else KAI_RUN_PROFILE, else default_profile)."
    ),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="Read only this profile file (else KAI_RUN_CONFIG, else site + user files).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="KEY=VALUE added to the child's environment (repeatable)."),
]
UnsetOpt = Annotated[
    list[str] | None,
    typer.Option("--unset", help="KEY removed from the child's environment (repeatable)."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kai-run {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    unset: UnsetOpt = None,
    clean_env: Annotated[
        bool,
        typer.Option("--clean-env", help="Start from PATH, HOME, USER, LANG, LC_*, TERM... only."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for kai-run's own errors.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Say what kai-run does.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Run a command under a network profile, or manage profiles.

    Everything after the first `--` is the command, verbatim. With no command, the profile's
    `command` runs. On POSIX kai-run replaces itself with the command (same PID).
    """
    g = Globals()
    g.profile, g.config, g.set, g.unset = profile, config, set_ or [], unset or []
    g.clean_env, g.debug, g.verbose = clean_env, debug, verbose
    ctx.obj = g
    if ctx.invoked_subcommand is None:
        # Reached only with options main.py did not recognise as the exec path; run it anyway.
        from kai_launch.main import RunOptions, run

        opts = RunOptions()
        opts.profile, opts.config, opts.set, opts.unset = g.profile, g.config, g.set, g.unset
        opts.clean_env, opts.debug, opts.verbose = clean_env, debug, verbose
        raise typer.Exit(run(opts))


def _globals(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Globals) else Globals()


def _pick(
    ctx: typer.Context, profile: str | None, config: str | None
) -> tuple[str | None, str | None]:
    g = _globals(ctx)
    return profile or g.profile, config or g.config


# --- env --------------------------------------------------------------------------------------


@app.command("env")
def env_command(
    ctx: typer.Context,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="sh, fish, powershell, dotenv, json or github.")
    ] = "sh",
    set_: SetOpt = None,
    unset: UnsetOpt = None,
) -> None:
    """Print the variables the profile sets and unsets, for eval or CI.

    Only what the profile changes is printed, not the whole environment.

    Examples:

      eval "$(kai-run env -p corp)"

      kai-run env -p corp --format fish | source

      kai-run env -p corp --format github >> "$GITHUB_ENV"
    """
    from kai_launch.exports import render_exports

    profile, config = _pick(ctx, profile, config)
    g = _globals(ctx)
    plan, _ = _plan(profile, config, [*g.set, *(set_ or [])], [*g.unset, *(unset or [])])
    _warn(plan.warnings)
    assign, removals = plan.exported()
    sys.stdout.write(render_exports(assign, removals, fmt))


def _plan(
    profile: str | None,
    config: str | None,
    sets: list[str],
    unsets: list[str],
    *,
    resolve_secrets: bool = True,
) -> tuple[Any, Any]:
    from kai_launch.config import load_config
    from kai_launch.environ import build_plan, parse_assignment
    from kai_launch.profiles import resolve_profile, select_profile_name

    overrides = [parse_assignment(s) for s in sets]
    cfg = load_config(config, os.environ)
    name, _ = select_profile_name(cfg, profile, os.environ)
    prof = resolve_profile(cfg, name)
    plan = build_plan(
        prof, os.environ, overrides=overrides, removals=unsets, resolve_secrets=resolve_secrets
    )
    return plan, prof


def _warn(messages: list[str]) -> None:
    from kai_launch.main import warn

    warn(messages)


# --- profiles ---------------------------------------------------------------------------------


@profiles_app.command("list")
def profiles_list(
    ctx: typer.Context,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List profiles: name, description, proxies (credentials redacted), file.

    Example:

      kai-run profiles list
    """
    from kai_launch import render
    from kai_launch.config import load_config
    from kai_launch.overview import list_profiles

    _, config = _pick(ctx, None, config)
    rows = list_profiles(load_config(config, os.environ))
    render.profiles_table(rows, as_json=as_json)


@profiles_app.command("show")
def profiles_show(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Profile (default: the selected one).")] = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    reveal: Annotated[bool, typer.Option("--reveal", help="Show secret values.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    set_: SetOpt = None,
    unset: UnsetOpt = None,
) -> None:
    """Show a profile's effective settings and the variables it gives, each with its origin.

    Secrets (references, proxy passwords, names with SECRET, TOKEN, PASSWORD or KEY) are shown
    as *** unless --reveal is given.

    Examples:

      kai-run profiles show corp

      kai-run profiles show corp --json --reveal
    """
    from kai_launch import render
    from kai_launch.overview import describe_profile

    profile, config = _pick(ctx, name or profile, config)
    g = _globals(ctx)
    plan, prof = _plan(
        profile, config, [*g.set, *(set_ or [])], [*g.unset, *(unset or [])], resolve_secrets=reveal
    )
    _warn(plan.warnings)
    render.profile_details(describe_profile(prof, plan, reveal=reveal), as_json=as_json)


# --- doctor and route ------------------------------------------------------------------


# --- sidecar ----------------------------------------------------------------------------------


# --- init, profile editing, config -----------------------------------------------------------


# --- entry ------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """Run the typer app on argv and return the exit status."""
    command = typer.main.get_command(app)
    try:
        # standalone mode: click prints usage errors and maps Abort/Ctrl+C to its exit codes.
        command.main(args=argv, prog_name="kai-run", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
