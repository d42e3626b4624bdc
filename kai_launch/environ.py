"""From a profile to the child's environment. Every rule about one variable is in the tables below.

Order: the parent's environment (or, with --clean-env, a few basics from it), minus the profile's
`unset` list and the proxy variables the profile does not name; then the profile's variables (they
win); then `--set KEY=VALUE` and `--unset KEY` from the command line, in that order.
"""

from __future__ import annotations

import os

from kai_launch.errors import ConfigError, KaiRunError
from kai_launch.expand import expand_path, expand_vars
from kai_launch.noproxy import is_ipv6_cidr, normalise_no_proxy
from kai_launch.profiles import PROFILE_ENV
from kai_launch.proxyurl import parse_proxy_url, redact_url
from kai_launch.schema import valid_var_name
from kai_launch.secrets import SecretRef, resolve_secret

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from kai_launch.oauth2 import Token
    from kai_launch.pac import PacResult
    from kai_launch.profiles import Profile

# Profile setting -> the variables it sets. Both spellings always get the same value (or are both
# removed), so no client can read a stale upper- or lower-case variable left in the parent.
PROXY_VARIABLES: tuple[tuple[str, tuple[str, str]], ...] = (
    ("http_proxy", ("HTTP_PROXY", "http_proxy")),
    ("https_proxy", ("HTTPS_PROXY", "https_proxy")),
    ("all_proxy", ("ALL_PROXY", "all_proxy")),
)
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
# Each of these replaces its client's whole trust store: they get the merged bundle.
CA_BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",  # Python's ssl, httpx, OpenSSL-based tools, Go on Linux
    "REQUESTS_CA_BUNDLE",  # requests
    "CURL_CA_BUNDLE",  # curl (and requests, as a fallback)
    "AWS_CA_BUNDLE",  # boto3 / botocore, the AWS CLI
    "GIT_SSL_CAINFO",  # git over https
    "PIP_CERT",  # pip
)
# Node adds these to its built-in roots: the profile's own CAs only.
OWN_CA_VARIABLES = ("NODE_EXTRA_CA_CERTS",)
INSECURE_VARIABLES = (
    ("PYTHONHTTPSVERIFY", "0"),  # only the stdlib's urllib/http.client, and only on some builds
    ("NODE_TLS_REJECT_UNAUTHORIZED", "0"),
    ("GIT_SSL_NO_VERIFY", "1"),
)
OPENAI_PROXY = "OPENAI_PROXY"  # langchain's ChatOpenAI: bypasses NO_PROXY, trusts certifi only
CLEAN_ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "TZ", "TMPDIR")
# Without these, many Windows programs cannot even start.
CLEAN_ENV_KEEP_WINDOWS = (
    "SYSTEMROOT",
    "WINDIR",
    "PATHEXT",
    "COMSPEC",
    "USERPROFILE",
    "TEMP",
    "TMP",
)
CLEAN_ENV_PREFIXES = ("LC_",)

_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "KEY")
# -D options with proxy passwords: shown as -Dhttp.proxyPassword=*** (jvm.mask_options).
_JVM_VARIABLES = ("JAVA_TOOL_OPTIONS", "MAVEN_OPTS")


def looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS)


class Assignment:
    """One variable the child gets: its value, where it came from, and whether to hide it."""

    __slots__ = ("name", "origin", "secret", "value")

    def __init__(self, name: str, value: str, origin: str, *, secret: bool = False) -> None:
        self.name = name
        self.value = value
        self.origin = origin
        self.secret = secret or looks_secret(name)

    def shown(self, *, reveal: bool = False) -> str:
        """The value as humans may see it: secrets as ***, proxy passwords as user:***@."""
        if reveal:
            return self.value
        if self.secret:
            return "***"
        if self.name in _JVM_VARIABLES:
            from kai_launch.jvm import mask_options

            return mask_options(self.name, self.value)
        if "://" in self.value and "@" in self.value:
            return redact_url(self.value)
        return self.value


class EnvPlan:
    """What the child's environment will be, relative to the parent's."""

    __slots__ = (
        "assign",
        "child_only",
        "clean_env",
        "pac",
        "profile",
        "removals",
        "token_errors",
        "tokens",
        "warnings",
    )

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.pac: PacResult | None = None  # the evaluated PAC file the proxies came from
        self.assign: dict[str, Assignment] = {}
        self.removals: dict[str, str] = {}  # name -> why
        # Removed from a launched child only, not from a shell that evals `kai-run env`: an OAuth2
        # client secret the shell holds must stay there for the next run.
        self.child_only: set[str] = set()
        self.warnings: list[str] = []
        self.clean_env = False
        # env.NAME -> its oauth2 token / why it could not be had (collect_token_errors=True)
        self.tokens: dict[str, Token] = {}
        self.token_errors: dict[str, KaiRunError] = {}

    def set(self, name: str, value: str, origin: str, *, secret: bool = False) -> None:
        if "\x00" in value:
            # No environment can hold a NUL: exec would fail with a bare ValueError.
            raise ConfigError(
                f"the value for {name} contains a NUL character",
                origin,
                "remove it from the value, the secret file or the secret command's output",
            )
        self.removals.pop(name, None)
        self.child_only.discard(name)
        self.assign[name] = Assignment(name, value, origin, secret=secret)

    def remove(self, name: str, why: str, *, child_only: bool = False) -> None:
        self.assign.pop(name, None)
        self.removals[name] = why
        if child_only:
            self.child_only.add(name)
        else:
            self.child_only.discard(name)

    def child_environ(self, parent: Mapping[str, str]) -> dict[str, str]:
        if self.clean_env:
            keep = CLEAN_ENV_KEEP + (CLEAN_ENV_KEEP_WINDOWS if os.name == "nt" else ())
            env = {k: v for k, v in parent.items() if k in keep or k.startswith(CLEAN_ENV_PREFIXES)}
        else:
            env = dict(parent)
        for name in self.removals:
            env.pop(name, None)
        env.update((a.name, a.value) for a in self.assign.values())
        return env

    def exported(self) -> tuple[list[tuple[str, str]], list[str]]:
        """(assignments, removals) for `kai-run env`."""
        assign = [(a.name, a.value) for a in self.assign.values()]
        return assign, [n for n in self.removals if n not in self.child_only]


def parse_assignment(text: str) -> tuple[str, str]:
    """`--set KEY=VALUE`."""
    name, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(
            f"--set needs KEY=VALUE, got '{text}'", "command line", f"write --set {text}=VALUE"
        )
    check_name(name, "--set")
    return name, value


def check_name(name: str, where: str) -> None:
    if not valid_var_name(name):
        raise ConfigError(
            f"invalid variable name '{name}'",
            where,
            "names are letters, digits and _, and do not start with a digit",
        )


def build_plan(
    profile: Profile,
    environ: Mapping[str, str],
    *,
    overrides: Iterable[tuple[str, str]] = (),
    removals: Iterable[str] = (),
    resolve_secrets: bool = True,
    clean_env: bool = False,
    bundles: bool = True,
    collect_token_errors: bool = False,
    token_timeout: float | None = None,
    pac: PacResult | None = None,
    network_only: bool = False,
    fetch_tokens: bool = True,
) -> EnvPlan:
    """Translate `profile` into an EnvPlan. `environ` is the parent's, for ${VAR} and secrets.

    resolve_secrets=False (for `show` without --reveal) leaves secret values as `***` and runs
    no secret command. bundles=False skips writing CA bundles (the plan then names no CA file).
    collect_token_errors=True (doctor): an oauth2 token that cannot be had goes to
    plan.token_errors, its variable left out, instead of failing the whole plan.
    token_timeout: seconds for each step of a token request (default: oauth2's own timeouts).
    network_only=True (`env --format maven-settings`): proxies, NO_PROXY and CA only; the
    profile's `env` (its secrets, OAuth2 tokens) and the JVM options are left out.
    fetch_tokens=False (`route`): OAuth2 variables are left out; nothing is sent anywhere.
    pac: the profile's PAC evaluated (kai_launch.pac.for_profile); its proxy fills the
    http_proxy/https_proxy the profile does not write, its DIRECT hosts join NO_PROXY.
    """
    plan = EnvPlan(profile.name)
    plan.clean_env = clean_env

    def secret(value: str | SecretRef) -> str:
        # A literal user name or password is used as written: `$` is common in passwords.
        if isinstance(value, str):
            return value
        return resolve_secret(value, environ) if resolve_secrets else "***"

    for name in profile.unset:
        origin = profile.origins.get(f"unset[{name}]") or profile.origins.get("unset", profile.path)
        plan.remove(name, f"unset in {origin}")

    if pac is not None:
        plan.pac = pac
        plan.warnings.extend(pac.warnings)
    _proxies(profile, environ, plan, secret, pac)
    _trust(profile, environ, plan, bundles=bundles)

    overrides = list(overrides)
    removals = list(removals)
    # A variable the command line replaces or removes is not resolved: `--set TOKEN=manual`
    # must work while the token endpoint (or a secret command) is down.
    replaced = {n for n, _ in overrides} | set(removals)
    for name, value in () if network_only else profile.env.items():
        origin = profile.origins.get(f"env.{name}", profile.path)
        if isinstance(value, SecretRef) and value.kind == "oauth2":
            _hide_client_secret(name, value, profile, plan)
            if not fetch_tokens:
                continue
        if isinstance(value, SecretRef) and name in replaced:
            continue
        if isinstance(value, SecretRef) and value.kind == "oauth2" and resolve_secrets:
            # After _proxies and _trust: the token is fetched the way the child would fetch it.
            token = _oauth2_token(
                name, value, environ, plan, collect=collect_token_errors, timeout=token_timeout
            )
            if token is not None:
                plan.set(name, token, f"secret {value.describe()}, {origin}", secret=True)
        elif isinstance(value, SecretRef):
            plan.set(
                name,
                secret(value),
                f"secret {value.describe()}, {origin}",
                secret=True,
            )
        else:
            plan.set(name, expand_vars(value, environ, f"{origin}, key 'env.{name}'"), origin)
    if profile.jvm and not network_only:
        from kai_launch.jvm import apply_jvm  # reads the plan's proxies, NO_PROXY and CA bundle

        apply_jvm(profile, environ, plan)

    nested = environ.get(PROFILE_ENV)
    plan.set(PROFILE_ENV, profile.name, "kai-run")
    for name, value in overrides:
        check_name(name, "--set")
        plan.set(name, value, "--set")
    for name in removals:
        check_name(name, "--unset")
        plan.remove(name, "--unset")
    if nested and nested != profile.name:
        plan.warnings.append(
            f"note: {PROFILE_ENV}={nested} in the parent environment; this command runs under "
            f"profile '{profile.name}' instead"
        )
    return plan


def _hide_client_secret(name: str, ref: SecretRef, profile: Profile, plan: EnvPlan) -> None:
    """The child gets the token, never the client secret: a parent variable the reference
    reads it from is removed (unless the profile sets that variable itself)."""
    secret = getattr(ref.arg, "client_secret", None)
    if isinstance(secret, SecretRef) and secret.kind == "env":
        var = secret.arg
        if isinstance(var, str) and var not in profile.env and var not in plan.assign:
            why = f"client secret of env.{name}'s oauth2 reference: only the token is passed on"
            plan.remove(var, why, child_only=True)


def _oauth2_token(
    name: str,
    ref: SecretRef,
    environ: Mapping[str, str],
    plan: EnvPlan,
    *,
    collect: bool,
    timeout: float | None = None,
) -> str | None:
    from kai_launch.oauth2 import fetch_token

    try:
        token = fetch_token(ref, environ, plan.child_environ(environ), timeout=timeout)
    except KaiRunError as e:
        if not collect:
            raise
        plan.token_errors[name] = e
        return None
    plan.tokens[name] = token
    return token.value


def _proxies(
    profile: Profile,
    environ: Mapping[str, str],
    plan: EnvPlan,
    secret: Callable[[str | SecretRef], str],
    pac: PacResult | None = None,
) -> None:
    auth_user = profile.proxy_auth.get("username")
    auth_pass = profile.proxy_auth.get("password")
    user = pw = None
    if auth_user is not None:
        user = secret(auth_user)
    if auth_pass is not None:
        pw = secret(auth_pass)
    resolved: dict[str, str] = {}
    for field, names in PROXY_VARIABLES:
        raw = getattr(profile, field)
        origin = profile.origins.get(field, profile.path)
        # Written proxies (all_proxy included: it covers every scheme) win over the PAC's.
        pac_field = field != "all_proxy" and profile.all_proxy is None
        if raw is None and pac is not None and pac.proxy and pac_field:
            raw, origin = pac.proxy, f"PAC file {pac.source.shown}"
        if raw is None:
            # Set, but empty: every client reads an empty proxy variable as "no proxy", and
            # a stale value in either spelling from the parent can no longer leak through.
            for name in names:
                plan.set(name, "", f"no {field} in profile '{profile.name}'")
            continue
        url = _proxy(raw, environ, f"{origin}, key '{field}'", plan, user, pw)
        resolved[field] = url
        # A password inside the URL is displayed redacted (user:***@) by Assignment.shown().
        via = f"{origin} + proxy_auth" if user is not None else origin
        for name in names:
            plan.set(name, url, via)

    value, cidrs = normalise_no_proxy(
        [
            expand_vars(
                e, environ, f"{profile.origins.get('no_proxy', profile.path)}, key 'no_proxy'"
            )
            for e in profile.no_proxy
        ]
        + (pac.direct_hosts if pac is not None else [])
    )
    no_proxy_origin = profile.origins.get("no_proxy", "kai-run defaults")
    if pac is not None and pac.direct_hosts:
        no_proxy_origin += f" + DIRECT in PAC file {pac.source.shown}"
    for name in NO_PROXY_VARIABLES:
        plan.set(name, value, no_proxy_origin)
    for cidr in cidrs:
        if is_ipv6_cidr(cidr):
            plan.warnings.append(
                f"NO_PROXY entry {cidr} is an IPv6 CIDR range: httpx 0.28 (langchain, openai SDK "
                "1.x/2.x) then fails to create any client (InvalidURL), and curl ignores it; "
                "list the addresses instead"
            )
            continue
        plan.warnings.append(
            f"NO_PROXY entry {cidr} is a CIDR range: curl, Go, requests and httpx2 honour it, but "
            "httpx (langchain, openai SDK 1.x/2.x) and urllib ignore it and use the proxy"
        )

    openai = profile.openai_proxy
    if openai is False:
        plan.remove(OPENAI_PROXY, "openai_proxy is not set in the profile")
    else:
        origin = profile.origins.get("openai_proxy", profile.path)
        if openai is True:
            found = resolved.get("https_proxy") or resolved.get("all_proxy")
            if found is None:
                raise ConfigError(
                    "openai_proxy = true but the profile has no https_proxy",
                    f"{origin}, key 'openai_proxy'",
                    "set https_proxy, or give openai_proxy a URL",
                )
            url = found
        else:
            assert isinstance(openai, str)
            url = _proxy(openai, environ, f"{origin}, key 'openai_proxy'", plan, user, pw)
        plan.set(OPENAI_PROXY, url, origin)


def _proxy(
    raw: str,
    environ: Mapping[str, str],
    where: str,
    plan: EnvPlan,
    user: str | None,
    pw: str | None,
) -> str:
    parsed, warnings = parse_proxy_url(expand_vars(raw, environ, where), where)
    plan.warnings.extend(warnings)
    if user is not None:
        parsed = parsed.with_credentials(user, pw)
    return parsed.unparse()


def _trust(profile: Profile, environ: Mapping[str, str], plan: EnvPlan, *, bundles: bool) -> None:
    if profile.insecure:
        origin = profile.origins.get("insecure", profile.path)
        for name, value in INSECURE_VARIABLES:
            plan.set(name, value, f"insecure = true, {origin}")
        plan.warnings.append(
            f"profile '{profile.name}' has insecure = true: TLS verification is off for Node, git and "
            "some stdlib builds, but requests and httpx ignore these variables and still verify; "
            "add the proxy's CA to ca_bundle instead"
        )
    system = profile.ca_mode == "system"
    if not profile.ca_bundle and not system:
        return
    files = [
        (
            expand_path(e.raw, e.base_dir, environ, f"{e.origin}, key 'ca_bundle'"),
            f"{e.origin}, key 'ca_bundle'",
        )
        for e in profile.ca_bundle
    ]
    if not bundles:
        return
    from kai_launch.trust import build_bundles

    _check_sidecar_ca(profile, files, environ)
    mode_origin = profile.origins.get("ca_mode", profile.path)
    made = build_bundles(files, profile.ca_mode, where=f"{mode_origin}, key 'ca_mode'")
    origin = f"ca_bundle ({profile.ca_mode}) of {profile.origins.get('ca_bundle', profile.path)}"
    if system:
        what = "OS store + ca_bundle" if files else "OS store"
        origin = f"ca_mode = system ({what}) of {mode_origin}"
    for name in CA_BUNDLE_VARIABLES:
        plan.set(name, made.merged, origin)
    for name in OWN_CA_VARIABLES:
        # Node adds NODE_EXTRA_CA_CERTS to its compiled-in Mozilla roots and never reads the OS
        # store (unless started with --use-system-ca / --use-openssl-ca, which kai-run cannot
        # add for every node). A corporate root installed in the OS store would reach every
        # client but Node, so in system mode Node gets the OS roots + own CAs: duplicates of
        # its own roots are harmless, and loading ~150 more costs it a few milliseconds.
        if system or made.own:
            plan.set(name, made.merged if system else made.own, origin)
        else:
            # Every ca_bundle certificate is already a public root: Node has them all.
            plan.remove(name, f"{origin}: every CA is already among the public roots")


def _check_sidecar_ca(
    profile: Profile, files: list[tuple[str, str]], environ: Mapping[str, str]
) -> None:
    """A CA the profile's sidecar writes on its first start (its ready_file) may not exist yet:
    say so, rather than "fix the path"."""
    ready = (profile.sidecar or {}).get("ready_file")
    if not isinstance(ready, str):
        return
    ready_path = expand_path(ready, profile.sidecar_base_dir, environ, "sidecar.ready_file")
    for path, where in files:
        if path == ready_path and not os.path.exists(path):
            from kai_launch.errors import TrustError

            raise TrustError(
                f"CA file {path} does not exist yet: the sidecar writes it on its first start",
                where,
                f"start it once (kai-run sidecar start -p {profile.name}), or run the command "
                f"with kai-run -p {profile.name} -- ..., which starts it first",
            )
