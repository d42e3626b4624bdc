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
from kai_launch.main import report, secret_reference, show_edit

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
        self.refresh_pac = False


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
    epilog="Examples:\n\n  kai-run profiles list\n\n  kai-run profiles show corp --reveal\n\n"
    "  kai-run profiles set corp https_proxy http://proxy.corp.example:3128",
)
config_app = typer.Typer(
    cls=TyperGroup,
    no_args_is_help=True,
    help="Where profiles are read from; check them.",
    rich_markup_mode=None,
    epilog="Examples:\n\n  kai-run config path\n\n  kai-run config check --json",
)
sidecar_app = typer.Typer(
    cls=TyperGroup,
    no_args_is_help=True,
    help="Manage a profile's sidecar proxy in the background.",
    rich_markup_mode=None,
    epilog="Examples:\n\n  kai-run sidecar start -p local-mitm\n\n"
    "  kai-run sidecar status -p local-mitm\n\n  kai-run sidecar stop -p local-mitm",
)
app.add_typer(profiles_app, name="profiles")
app.add_typer(config_app, name="config")
app.add_typer(sidecar_app, name="sidecar")

ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        metavar="NAME",
        help="Profile name (else KAI_RUN_PROFILE, else default_profile).",
    ),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Read only this profile file (else KAI_RUN_CONFIG, else site + user files).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", help="Added to the child's environment (repeatable)."
    ),
]
RefreshPacOpt = Annotated[
    bool,
    typer.Option(
        "--refresh-pac",
        help="Fetch the profile's PAC file again (and re-evaluate it) instead of using the cache.",
    ),
]
UnsetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--unset", metavar="KEY", help="Removed from the child's environment (repeatable)."
    ),
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
    refresh_pac: RefreshPacOpt = False,
) -> None:
    """Run a command under a network profile, or manage profiles.

    Everything after the first `--` is the command, verbatim. With no command, the profile's
    `command` runs. On POSIX kai-run replaces itself with the command (same PID).
    """
    g = Globals()
    g.profile, g.config, g.set, g.unset = profile, config, set_ or [], unset or []
    g.clean_env, g.debug, g.verbose = clean_env, debug, verbose
    g.refresh_pac = refresh_pac
    ctx.obj = g
    if ctx.invoked_subcommand is None:
        # Reached only with options main.py did not recognise as the exec path; run it anyway.
        from kai_launch.main import RunOptions, run

        opts = RunOptions()
        opts.profile, opts.config, opts.set, opts.unset = g.profile, g.config, g.set, g.unset
        opts.clean_env, opts.debug, opts.verbose = clean_env, debug, verbose
        opts.refresh_pac = refresh_pac
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
        str,
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            help="sh, fish, powershell, dotenv, json, github, or maven-settings (a <proxies> "
            "block for ~/.m2/settings.xml).",
        ),
    ] = "sh",
    set_: SetOpt = None,
    unset: UnsetOpt = None,
    refresh_pac: RefreshPacOpt = False,
) -> None:
    """Print the variables the profile sets and unsets, for eval or CI.

    Only what the profile changes is printed, not the whole environment.

    Examples:

      eval "$(kai-run env -p corp)"

      kai-run env -p corp --format fish | source

      kai-run env -p corp --format github >> "$GITHUB_ENV"

      kai-run env -p corp --format maven-settings
    """
    from kai_launch.exports import render_exports

    profile, config = _pick(ctx, profile, config)
    g = _globals(ctx)
    plan, prof = _plan(
        profile,
        config,
        [*g.set, *(set_ or [])],
        [*g.unset, *(unset or [])],
        refresh_pac=refresh_pac or g.refresh_pac,
        # Maven's <proxies> need no token or secret of `env`: don't fetch or resolve them.
        network_only=fmt == "maven-settings",
    )
    notes = list(plan.warnings)
    if prof.sidecar is not None:
        # These variables point at the sidecar: without it running, every request fails.
        notes.append(
            f"note: profile '{prof.name}' has a sidecar; these variables need it running: "
            f"kai-run sidecar start -p {prof.name}"
        )
    _warn(notes)
    assign, removals = plan.exported()
    sys.stdout.write(render_exports(assign, removals, fmt))


def _plan(
    profile: str | None,
    config: str | None,
    sets: list[str],
    unsets: list[str],
    *,
    resolve_secrets: bool = True,
    refresh_pac: bool = False,
    urls: list[str] | None = None,
    network_only: bool = False,
    fetch_tokens: bool = True,
) -> tuple[Any, Any]:
    from kai_launch.config import load_config
    from kai_launch.environ import build_plan, parse_assignment
    from kai_launch.profiles import resolve_profile, select_profile_name

    overrides = [parse_assignment(s) for s in sets]
    cfg = load_config(config, os.environ)
    name, why = select_profile_name(cfg, profile, os.environ)
    prof = resolve_profile(cfg, name, why)
    pac = None
    if prof.pac_url is not None:
        from kai_launch.pac import for_profile

        pac = for_profile(prof, os.environ, urls or [], refresh=refresh_pac)
    plan = build_plan(
        prof,
        os.environ,
        overrides=overrides,
        removals=unsets,
        resolve_secrets=resolve_secrets,
        pac=pac,
        network_only=network_only,
        fetch_tokens=fetch_tokens,
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
    refresh_pac: RefreshPacOpt = False,
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
        profile,
        config,
        [*g.set, *(set_ or [])],
        [*g.unset, *(unset or [])],
        resolve_secrets=reveal,
        refresh_pac=refresh_pac or g.refresh_pac,
    )
    _warn(plan.warnings)
    render.profile_details(describe_profile(prof, plan, reveal=reveal), as_json=as_json)


# --- doctor and route ------------------------------------------------------------------


@app.command("doctor")
def doctor_command(
    ctx: typer.Context,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    all_profiles: Annotated[
        bool, typer.Option("--all", help="Check every profile (not with --profile).")
    ] = False,
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url",
            metavar="URL",
            help="URL to test (repeatable); default: the profile's check_urls.",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.01, metavar="SECONDS", help="Seconds allowed for each network step."
        ),
    ] = 5.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only a JSON list of the checks.")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    refresh_pac: RefreshPacOpt = False,
) -> None:
    """Find what is wrong with a profile's network path, and say how to fix it.

    Checks the profile (file, secrets), the environment, each CA file and certificate, each
    proxy (DNS, TCP, HTTP or SOCKS, authentication) and each target URL through the route the
    profile gives it (tunnel, TLS verified with the CA bundle the child gets, one HTTP request).
    Every network step has its own --timeout and all of them run at once. A target behind a
    proxy is never resolved locally: the proxy resolves it.

    Exit status: 0 nothing failed, 1 something failed (with --strict: or warned), 2 kai-run's
    own errors (unknown profile, missing --config file, bad --url).

    Examples:

      kai-run doctor -p corp

      kai-run doctor -p corp --url https://api.openai.com/v1/models --timeout 3

      kai-run doctor --all --json | jq '.[] | select(.status == "fail")'
    """
    from kai_launch import render
    from kai_launch.checks import Doctor, exit_status, prepare

    profile, config = _pick(ctx, profile, config)
    if all_profiles and profile:
        raise KaiRunError(
            "--all and --profile exclude each other", hint="give one profile, or --all"
        )
    jobs = prepare(
        config,
        profile,
        all_profiles=all_profiles,
        urls=url or [],
        environ=os.environ,
        pac_refresh=refresh_pac or _globals(ctx).refresh_pac,
        pac_timeout=timeout,
    )
    doctor = Doctor(jobs, timeout, verbose=_globals(ctx).verbose)
    checks = render.doctor_report(doctor, total=doctor.total, as_json=as_json)
    raise typer.Exit(exit_status(checks, strict=strict))


@app.command("route")
def route_command(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The URL a client would request.")],
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    refresh_pac: RefreshPacOpt = False,
) -> None:
    """Show where each HTTP client would send a request for URL under the profile.

    One row per client (requests, urllib, httpx, httpx2, aiohttp, curl, Go, Node): the proxy
    it would use or "direct", the CA file it would trust, and why; then every disagreement
    between clients on one line. Python clients are asked through their own functions when
    installed (else their rules are applied and the answer says "predicted"). Nothing is sent
    to URL, and no OAuth2 token is fetched; a pac_url profile's PAC file is fetched unless
    cached. Proxy credentials are always redacted.

    Examples:

      kai-run route https://api.openai.com/v1/models -p corp

      kai-run route http://internal-llm.corp.example:8000/v1 -p corp --json
    """
    from kai_launch import render
    from kai_launch.route import route

    profile, config = _pick(ctx, profile, config)
    g = _globals(ctx)
    plan, prof = _plan(
        profile,
        config,
        g.set,
        g.unset,
        refresh_pac=refresh_pac or g.refresh_pac,
        urls=[url],
        fetch_tokens=False,  # where a request would go does not depend on a token
    )
    _warn(plan.warnings)
    report = route(url, plan.child_environ(os.environ))
    if prof.pac_url is not None:
        from kai_launch.route import with_pac

        report = with_pac(report, url, plan.pac)
    render.route_report(report, as_json=as_json)


# --- sidecar ----------------------------------------------------------------------------------


SIDECAR_EPILOG = """\
Examples:

  kai-run sidecar start -p local-mitm

  kai-run sidecar status -p local-mitm

  kai-run sidecar stop -p local-mitm
"""


def _sidecar_target(
    ctx: typer.Context, profile: str | None, config: str | None, *, need_profile: bool
) -> tuple[str, Any]:
    """The profile name, and the resolved profile (None when not needed and not found)."""
    from kai_launch.config import load_config
    from kai_launch.profiles import resolve_profile, select_profile_name

    profile, config = _pick(ctx, profile, config)
    try:
        cfg = load_config(config, os.environ)
        name, _ = select_profile_name(cfg, profile, os.environ)
        return name, resolve_profile(cfg, name)
    except KaiRunError:
        # status and stop still work for a profile that was renamed or deleted since `start`.
        if need_profile or not profile:
            raise
        return profile, None


def _sidecar_report(status: Any) -> None:
    name = f"sidecar of profile '{status.profile}'"
    if status.action == "started":
        typer.echo(
            f"{name} started: pid {status.pid}, {status.address} "
            f"(ready after {status.ready_seconds:.1f} s)"
        )
    elif status.action in ("running", "already-running"):
        lead = "is already running" if status.action == "already-running" else "is running"
        typer.echo(f"{name} {lead}: pid {status.pid}, {status.address}")
    elif status.action == "stopped":
        typer.echo(f"{name} stopped (pid {status.pid})")
    elif status.action == "stale":
        typer.echo(f"{name} is not running (its process is gone; removed the stale pid file)")
    else:
        typer.echo(f"{name} is not running")
    typer.echo(f"  log: {status.log_path}")


@sidecar_app.command("start", epilog=SIDECAR_EPILOG)
def sidecar_start(ctx: typer.Context, profile: ProfileOpt = None, config: ConfigOpt = None) -> None:
    """Start the profile's sidecar in the background.

    kai-run waits until it serves (sidecar.ready, sidecar.ready_file), then returns.

    It keeps running after kai-run exits, until `kai-run sidecar stop`. Meanwhile
    `kai-run -p NAME -- cmd` and `kai-run doctor -p NAME` use it instead of starting their own.
    Its pid is kept in the user state dir, its output goes to a log in the user log dir.
    Starting a sidecar that already runs only says so.
    """
    from kai_launch.sidecar import start_background

    _, prof = _sidecar_target(ctx, profile, config, need_profile=True)
    _sidecar_report(start_background(prof, os.environ))


@sidecar_app.command("status", epilog=SIDECAR_EPILOG)
def sidecar_status(
    ctx: typer.Context, profile: ProfileOpt = None, config: ConfigOpt = None
) -> None:
    """Show whether the profile's background sidecar runs.

    Prints its pid, address and log file.

    Exit status 0 when it runs, 3 when it does not (like `systemctl status`).
    """
    from kai_launch.sidecar import background_status

    name, _ = _sidecar_target(ctx, profile, config, need_profile=False)
    status = background_status(name)
    _sidecar_report(status)
    if not status.running:
        raise typer.Exit(3)


@sidecar_app.command("stop", epilog=SIDECAR_EPILOG)
def sidecar_stop(
    ctx: typer.Context,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace",
            metavar="SECONDS",
            help="Seconds between SIGTERM and SIGKILL (default: the profile's, or 5).",
        ),
    ] = None,
) -> None:
    """Stop the profile's background sidecar.

    SIGTERM to its whole process group, SIGKILL after the grace period; the pid file is
    removed. Stopping a sidecar that does not run only says so.
    """
    from kai_launch.sidecar import grace_period_of, stop_background

    name, prof = _sidecar_target(ctx, profile, config, need_profile=False)
    _sidecar_report(stop_background(name, grace_period_of(prof) if grace is None else grace))


# --- init, profile editing, config -----------------------------------------------------------

EditConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Edit this file (else KAI_RUN_CONFIG, else your user file).",
    ),
]
SiteOpt = Annotated[
    bool,
    typer.Option("--site", help="Edit the site file (shared by everyone on this machine)."),
]
EDIT_EPILOG = """\
The file edited is --config/-c, else KAI_RUN_CONFIG, else your user file (created on first
edit); --site edits the site file. Comments and layout are kept; an edit that would make the
file invalid is refused and the file is left untouched.
"""


def _edit_target(ctx: typer.Context, config: str | None, site: bool) -> Any:
    from kai_launch.edit import edit_target

    _, config = _pick(ctx, None, config)
    return edit_target(config, os.environ, site=site)


def _edited(result: Any) -> None:
    show_edit(result)


@app.command("init")
def init_command(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Write a commented starter profile file and print its path.

    The content is the same as profiles.example.toml. An existing file is kept unless --force.

    Examples:

      kai-run init

      sudo kai-run init --site

      kai-run init -c ./profiles.toml --force
    """
    from kai_launch.edit import init_file

    result = init_file(_edit_target(ctx, config, site), force=force)
    _warn(result.warnings)
    typer.echo(result.path)


@profiles_app.command("add", epilog=EDIT_EPILOG)
def profiles_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the new profile.")],
    extends: Annotated[
        str | None, typer.Option("--extends", metavar="PROFILE", help="Parent profile.")
    ] = None,
    http_proxy: Annotated[
        str | None, typer.Option("--http-proxy", metavar="URL", help="Proxy for http:// URLs.")
    ] = None,
    https_proxy: Annotated[
        str | None, typer.Option("--https-proxy", metavar="URL", help="Proxy for https:// URLs.")
    ] = None,
    proxy: Annotated[
        str | None,
        typer.Option("--proxy", metavar="URL", help="Proxy for both http:// and https:// URLs."),
    ] = None,
    no_proxy: Annotated[
        list[str] | None,
        typer.Option("--no-proxy", metavar="HOST", help="Host reached directly (repeatable)."),
    ] = None,
    ca_bundle: Annotated[
        list[str] | None,
        typer.Option("--ca-bundle", metavar="FILE", help="PEM file of a CA to trust (repeatable)."),
    ] = None,
    description: Annotated[
        str | None,
        typer.Option("--description", metavar="TEXT", help="One line shown by `profiles list`."),
    ] = None,
    from_env: Annotated[
        bool,
        typer.Option(
            "--from-env",
            help="Fill the profile from this shell's HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE... "
            "(options given explicitly win).",
        ),
    ] = False,
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Add a profile.

    Examples:

      kai-run profiles add corp --proxy http://proxy.corp.example:3128

      kai-run profiles add mine --from-env     # from a shell that works

      kai-run profiles add tls --extends corp --ca-bundle ~/certs/root.pem
    """
    from kai_launch.edit import add_profile

    result = add_profile(
        _edit_target(ctx, config, site),
        name,
        extends=extends,
        description=description,
        http_proxy=http_proxy,
        https_proxy=https_proxy,
        proxy=proxy,
        no_proxy=no_proxy or [],
        ca_bundle=ca_bundle or [],
        from_env=os.environ if from_env else None,
        cwd=os.getcwd(),
    )
    _edited(result)


@profiles_app.command("set", epilog=EDIT_EPILOG)
def profiles_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile to change.")],
    key: Annotated[
        str, typer.Argument(help="Key: https_proxy, no_proxy, env.NAME, proxy_auth.password...")
    ],
    value: Annotated[str | None, typer.Argument(help="New value (typed from the schema).")] = None,
    secret_env: Annotated[
        str | None,
        typer.Option(
            "--secret-env",
            metavar="VAR",
            help="Store { env = VAR }: read VAR when the profile runs.",
        ),
    ] = None,
    secret_file: Annotated[
        str | None,
        typer.Option(
            "--secret-file", metavar="FILE", help="Store { file = PATH }: read PATH when it runs."
        ),
    ] = None,
    secret_command: Annotated[
        str | None,
        typer.Option(
            "--secret-command",
            metavar="COMMAND",
            help='Store { command = [...] }: run it when the profile runs ("gh auth token").',
        ),
    ] = None,
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Set one key of a profile.

    Values are typed from the schema: true/false, numbers, lists as ["a", "b"] or a,b, the
    command split like a shell would. Secrets are stored as references, never as values.

    Examples:

      kai-run profiles set corp https_proxy http://proxy.example:8080

      kai-run profiles set corp no_proxy '["localhost", ".corp.example"]'

      kai-run profiles set corp sidecar.ready 127.0.0.1:8080

      kai-run profiles set corp proxy_auth.password --secret-env PROXY_PW

      kai-run profiles set corp env.GH_TOKEN --secret-command "gh auth token"
    """
    from kai_launch.edit import set_value

    secret = secret_reference(secret_env, secret_file, secret_command)
    if secret is not None and value is not None:
        raise KaiRunError(
            "give either a value or a secret reference, not both",
            "command line",
            f"kai-run profiles set {name} {key} --secret-env VAR",
        )
    result = set_value(
        _edit_target(ctx, config, site), name, key, value, secret=secret, cwd=os.getcwd()
    )
    _edited(result)


@profiles_app.command("unset", epilog=EDIT_EPILOG)
def profiles_unset(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile to change.")],
    key: Annotated[str, typer.Argument(help="Key to remove, e.g. env.LOG_DIR.")],
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Remove one key from a profile (the parent's value, if any, applies again).

    Example:

      kai-run profiles unset corp env.LOG_DIR
    """
    from kai_launch.edit import unset_value

    _edited(unset_value(_edit_target(ctx, config, site), name, key))


@profiles_app.command("remove", epilog=EDIT_EPILOG)
def profiles_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile to remove.")],
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Remove a profile; refused while other profiles extend it or it is the default.

    Example:

      kai-run profiles remove old-vpn
    """
    from kai_launch.edit import remove_profile

    _edited(remove_profile(_edit_target(ctx, config, site), name))


@profiles_app.command("rename", epilog=EDIT_EPILOG)
def profiles_rename(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(help="Current name.")],
    new: Annotated[str, typer.Argument(help="New name.")],
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Rename a profile, and every `extends` and `default_profile` of the file that names it.

    Example:

      kai-run profiles rename corp corp-eu
    """
    from kai_launch.edit import rename_profile

    _edited(rename_profile(_edit_target(ctx, config, site), old, new))


@profiles_app.command("copy", epilog=EDIT_EPILOG)
def profiles_copy(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="Profile to copy (from any file that is read).")],
    dst: Annotated[str, typer.Argument(help="Name of the copy.")],
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Copy a profile's own settings to a new profile (its parent stays its parent).

    Example:

      kai-run profiles copy corp corp-debug
    """
    from kai_launch.edit import copy_profile

    _edited(copy_profile(_edit_target(ctx, config, site), src, dst))


@profiles_app.command("default", epilog=EDIT_EPILOG)
def profiles_default(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile used when none is named.")],
    site: SiteOpt = False,
    config: EditConfigOpt = None,
) -> None:
    """Set default_profile: the profile used without -p or KAI_RUN_PROFILE.

    Example:

      kai-run profiles default corp
    """
    from kai_launch.edit import set_default

    _edited(set_default(_edit_target(ctx, config, site), name))


@config_app.command("path")
def config_path(
    ctx: typer.Context,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the profile files kai-run reads, lowest precedence first, and which exist.

    Example:

      kai-run config path
    """
    import json

    from kai_launch.edit import config_paths

    _, config = _pick(ctx, None, config)
    infos = config_paths(config, os.environ)
    if as_json:
        typer.echo(json.dumps([i.__dict__ for i in infos], indent=2))
        return
    for info in infos:
        state = "exists" if info.exists else "missing"
        typer.echo(f"{info.why:<16} {state:<8} {info.path}")


@config_app.command("check")
def config_check(
    ctx: typer.Context,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Validate every profile of every file; exit 1 on a problem (for CI).

    Checks the schema, `extends`, proxy URLs, that CA files exist and hold PEM certificates,
    that a `file:` pac_url exists (a PAC URL is not fetched), and the shape of secret
    references (secret commands are not run). Warns about plaintext secrets in a file that
    group or others can read.

    Examples:

      kai-run config check

      kai-run config check -c profiles.toml --json
    """
    import json

    from kai_launch.edit import check_config

    _, config = _pick(ctx, None, config)
    result = check_config(config, os.environ)
    if as_json:
        data = {
            "ok": result.ok,
            "files": [f.__dict__ for f in result.files],
            "problems": [p.__dict__ for p in result.problems],
            "warnings": [w.__dict__ for w in result.warnings],
        }
        typer.echo(json.dumps(data, indent=2))
    else:
        for f in result.files:
            if not f.exists:
                state = "missing"
            elif not f.valid:
                state = "invalid"
            else:
                state = f"{f.profiles} profile{'s' * (f.profiles != 1)}"
            typer.echo(f"{f.scope:<5} {f.path} ({state})")
        for label, findings in (("error", result.problems), ("warning", result.warnings)):
            for finding in findings:
                typer.echo(f"{label}: {finding.message}")
                if finding.hint:
                    typer.echo(f"  hint: {finding.hint}")
        problems, warnings = len(result.problems), len(result.warnings)
        typer.echo(
            f"{problems} problem{'s' * (problems != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        )
    if not result.ok:
        raise typer.Exit(1)


# --- entry ------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    """Run the typer app on argv and return the exit status."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="kai-run", standalone_mode=False)
    except NoArgsIsHelpError as e:
        e.show()  # `kai-run profiles` alone: the group's help, as click prints it
        return 2
    except UsageError as e:
        # The same one-line form as kai-run's own errors, with the command's help as the hint.
        where = e.ctx.command_path if e.ctx is not None else "kai-run"
        return report(KaiRunError(e.format_message(), where, f"see `{where} --help`"))
    except ClickException as e:
        return report(KaiRunError(e.format_message(), hint="see `kai-run --help`"))
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("\nkai-run: interrupted\n")
        return 130
    except typer.Exit as e:
        return int(e.exit_code or 0)
    return result if isinstance(result, int) else 0
