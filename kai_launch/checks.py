"""`kai-run doctor`: every check as a `Check` record, and the runner that schedules them.

How a run goes:
1. Offline, in the calling thread (`prepare`): `config` (the file parses, the profile resolves,
   every secret resolves), `env.*` (the parent environment and the profile's own choices),
   `ca.*` (each CA file and certificate), and for each target the route to probe
   (`probe_route`: requests' rules, no library imported, nothing resolved).
2. Threads, all started at once (`Doctor`): one chain per distinct proxy URL (`proxy.dns`,
   `proxy.tcp`, `proxy.http` + `proxy.auth`, or `proxy.socks`), one per (profile, target)
   (`target.tunnel`, `target.tls`, `target.http`), and one thread that asks `kai_launch.route`
   about every target (`target.route`: importing its libraries takes about a second, spent
   while the probes wait). Every network step has its own `timeout`, so ten profiles behind ten
   hanging proxies take about one timeout, not ten. A step that cannot run because an earlier
   one failed is reported as `skip`, so a chain always yields the same rows.
3. Profiles with a sidecar last, one at a time (`sidecar`): the sidecar is started, the profile
   is completed (its CA file is often written by the sidecar), checked, and the sidecar stopped.

A target reached through a proxy is never resolved here: the tunnel (CONNECT, socks5h) names
it and the proxy resolves it. Only `socks5://` resolves locally, because that is what clients
configured with it do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from kai_launch import probe
from kai_launch.errors import ConfigError, KaiRunError, ProfileError, TrustError
from kai_launch.proxyurl import redact_url

if TYPE_CHECKING:
    from kai_launch.certinfo import CertInfo
    from kai_launch.config import Config
    from kai_launch.environ import EnvPlan
    from kai_launch.profiles import Profile
    from kai_launch.route import RouteReport

OK: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "fail"
SKIP: Final = "skip"
STATUSES: Final = (OK, WARN, FAIL, SKIP)

DEFAULT_TIMEOUT: Final = 5.0
EXPIRY_WARN_DAYS: Final = 30
# One thread per chain keeps the "about one timeout" bound; past this many chains a second
# round starts. Far above any real profile file.
MAX_THREADS: Final = 256
ALL_PROFILES: Final = "*"  # the profile name on a `config` row when no file could be read

# Where a row sorts: by profile, then by this group, then by position inside the group.
# `pac` shares the sidecar's group, after it (its row has position 1).
_GROUPS: Final = {
    "config": 0,
    "sidecar": 1,
    "pac": 1,
    "env": 2,
    "ca": 3,
    "proxy": 4,
    "target": 5,
    "jvm": 6,
}

PROXY_VARS: Final = {
    "HTTP_PROXY": "http_proxy",
    "http_proxy": "http_proxy",
    "HTTPS_PROXY": "https_proxy",
    "https_proxy": "https_proxy",
    "ALL_PROXY": "all_proxy",
    "all_proxy": "all_proxy",
}
CASE_PAIRS: Final = (
    ("HTTP_PROXY", "http_proxy"),
    ("HTTPS_PROXY", "https_proxy"),
    ("ALL_PROXY", "all_proxy"),
    ("NO_PROXY", "no_proxy"),
)
# Variables whose parent value the profile may replace; CA ones replace a client's trust store.
OVERRIDABLE: Final = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "OPENAI_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "AWS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
)
INSECURE_VARS: Final = {
    "PYTHONHTTPSVERIFY": "0",
    "NODE_TLS_REJECT_UNAUTHORIZED": "0",
    "GIT_SSL_NO_VERIFY": None,  # any non-empty value turns git's verification off
}
# The clients whose answer picks the route doctor probes: the Python ones, which read the
# environment by default and are what Kai and its SDKs use. Go, curl, Node and aiohttp quirks
# (e.g. Go never proxying loopback) are `kai-run route`'s business.
ROUTE_CLIENTS: Final = ("requests", "urllib", "httpx", "httpx2")
MITMPROXY_CA: Final = "~/.mitmproxy/mitmproxy-ca-cert.pem"
# Suffixes of names that are never public: RFC 2606/6761/6762 and common internal zones.
_PRIVATE_SUFFIXES: Final = (
    ".localhost",
    ".local",
    ".internal",
    ".intranet",
    ".corp",
    ".lan",
    ".home.arpa",
    ".test",
    ".example",
    ".invalid",
)


@dataclass(frozen=True)
class Check:
    """One row of doctor's report. `hint` says what to change (for warn and fail)."""

    profile: str
    check: str  # stable id: "proxy.tcp", "target.tls", ...
    target: str | None  # the URL, proxy (redacted), file or variable checked
    status: str  # ok, warn, fail, skip
    message: str
    hint: str | None = None
    duration_ms: float = 0.0
    order: tuple[int, ...] = field(default=(), compare=False, repr=False)
    data: dict[str, object] | None = field(default=None, compare=False)  # numbers for --json

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "profile": self.profile,
            "check": self.check,
            "target": self.target,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "duration_ms": round(self.duration_ms, 1),
        }
        if self.data is not None:
            out["data"] = self.data
        return out


def exit_status(checks: list[Check], *, strict: bool = False) -> int:
    """0 when nothing failed, 1 when something did (with `strict`, a warning too)."""
    bad = {FAIL, WARN} if strict else {FAIL}
    return 1 if any(c.status in bad for c in checks) else 0


def sort_checks(checks: list[Check]) -> list[Check]:
    return sorted(checks, key=lambda c: c.order)


# --------------------------------------------------------------------------------------------
# Small helpers


def _ms_since(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 1)


def _show_url(url: str) -> str:
    return redact_url(url)


def _host_of(url: str) -> tuple[str, int, str, str]:
    """(host, port, scheme, path+query) of an http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port, scheme, path


def validate_url(url: str) -> None:
    """Raise KaiRunError (exit 2) for a --url doctor cannot test."""
    parts = urlsplit(url)
    hint = "give a full URL, e.g. https://api.openai.com/v1/models"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise KaiRunError(f"--url '{url}' is not an http:// or https:// URL", hint=hint)
    try:
        _ = parts.port
    except ValueError:
        raise KaiRunError(f"--url '{url}' has a bad port", hint=hint) from None


def is_public_host(host: str, no_proxy: str = "") -> bool:
    """Whether `host` is on the public internet, judged without any DNS lookup.

    IP literals by their range; names are public unless local by convention (a single label,
    `.local`, `.internal`...) or listed in NO_PROXY (which is how a profile names internal hosts).
    """
    host = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        pass
    if host == "localhost" or "." not in host or host.endswith(_PRIVATE_SUFFIXES):
        return False
    for raw in no_proxy.split(","):
        entry = raw.strip().lstrip("*").lstrip(".").lower()
        if entry and not entry[0].isdecimal() and (host == entry or host.endswith("." + entry)):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Offline checks: pure functions of the profile and the parent's and child's environments


def check_environment(
    profile: Profile, parent: Mapping[str, str], child: Mapping[str, str]
) -> list[Check]:
    """`env.*`: conflicts in the parent environment and risky choices in the profile."""
    name = profile.name
    out: list[Check] = []

    pairs = [
        (upper, lower)
        for upper, lower in CASE_PAIRS
        if parent.get(upper) and parent.get(lower) and parent[upper] != parent[lower]
    ]
    if pairs:
        conflicts = [
            f"{upper}={_show_value(parent[upper])} but {lower}={_show_value(parent[lower])}"
            for upper, lower in pairs
        ]
        out.append(
            Check(
                name,
                "env.proxy-case-conflict",
                ", ".join(v for pair in pairs for v in pair),
                WARN,
                "the parent environment disagrees with itself: " + "; ".join(conflicts),
                "kai-run gives the child both spellings with one value, but other programs in "
                "this shell see the conflict (curl reads only lower case, Go prefers upper "
                "case): unset one spelling in your shell profile",
            )
        )
    else:
        out.append(
            Check(
                name,
                "env.proxy-case-conflict",
                None,
                OK,
                "no upper/lower-case proxy variable pair disagrees in the parent environment",
            )
        )

    replaced = [var for var in OVERRIDABLE if var in parent and child.get(var) != parent[var]]
    if profile.ca_mode == "system":
        # A parent CA variable naming the OS bundle is kept in substance: the merged bundle
        # holds that file's roots.
        from kai_launch.systemca import BUNDLE_FILES

        os_file = next((os.path.realpath(p) for p in BUNDLE_FILES if os.path.isfile(p)), None)
        replaced = [v for v in replaced if os.path.realpath(parent[v]) != os_file]
    if replaced:
        out.append(
            Check(
                name,
                "env.parent-override",
                ", ".join(replaced),
                WARN,
                f"the profile replaces or removes {', '.join(replaced)} set in the parent "
                "environment",
                "expected when the profile is meant to win; if the parent's value was right "
                "(e.g. a CA bundle you need), put it into the profile (ca_bundle, https_proxy, "
                "no_proxy), or unset it in your shell",
            )
        )
    else:
        out.append(
            Check(
                name,
                "env.parent-override",
                None,
                OK,
                "no proxy or CA variable from the parent environment is replaced",
            )
        )

    insecure = [
        f"{var}={child[var]}"
        for var, bad in INSECURE_VARS.items()
        if child.get(var) and (bad is None or child[var] == bad)
    ]
    if profile.insecure or insecure:
        source = (
            f"insecure = true in profile '{name}'" if profile.insecure else "the parent environment"
        )
        out.append(
            Check(
                name,
                "env.insecure",
                ", ".join(v.split("=")[0] for v in insecure) or "insecure",
                WARN,
                f"TLS verification is turned off for some clients ({', '.join(insecure)}, from "
                f"{source}); requests and httpx ignore these and still verify",
                "remove insecure = true (or unset these variables) and add the proxy's CA to "
                f"ca_bundle in profile '{name}' ({profile.path}) instead",
            )
        )
    else:
        out.append(Check(name, "env.insecure", None, OK, "TLS verification is on"))

    # ca_mode = system without ca_bundle trusts a private CA too: the one in the OS store.
    if child.get("OPENAI_PROXY") and (profile.ca_bundle or profile.ca_mode == "system"):
        out.append(
            Check(
                name,
                "env.openai-proxy-private-ca",
                "OPENAI_PROXY",
                WARN,
                "OPENAI_PROXY is set and the profile trusts a private CA: langchain's "
                "ChatOpenAI then bypasses NO_PROXY and trusts certifi only, so TLS through an "
                "intercepting proxy fails there",
                f"set openai_proxy = false in profile '{name}' ({profile.path}): HTTPS_PROXY "
                "already reaches the openai SDK, with the merged CA bundle",
            )
        )
    else:
        out.append(
            Check(
                name,
                "env.openai-proxy-private-ca",
                None,
                OK,
                "OPENAI_PROXY is not combined with a private CA",
            )
        )

    out.append(_check_no_proxy_cidr(profile, child))
    return out


def _check_no_proxy_cidr(profile: Profile, child: Mapping[str, str]) -> Check:
    """`env.no-proxy-cidr`. Who honours a CIDR entry, as `kai-run route` finds it (asking
    requests, urllib, httpx and httpx2 themselves): IPv4 ranges: curl, Go, requests and httpx2,
    not httpx 0.28 nor urllib. IPv6 ranges: only Go and httpx2; requests, urllib and curl ignore
    them, and httpx 0.28 cannot even build a client (InvalidURL), so every request of langchain
    and the openai SDK 1.x/2.x fails: a fail, not a warning."""
    from kai_launch.noproxy import is_cidr, is_ipv6_cidr

    name, where = profile.name, f"no_proxy of profile '{profile.name}' ({profile.path})"
    no_proxy = child.get("NO_PROXY") or child.get("no_proxy") or ""
    cidrs = [e for e in no_proxy.split(",") if e and is_cidr(e)]
    if not cidrs:
        return Check(name, "env.no-proxy-cidr", None, OK, "NO_PROXY has no CIDR entries")
    v6 = [e for e in cidrs if is_ipv6_cidr(e)]
    v4 = [e for e in cidrs if e not in v6]
    parts = []
    if v6:
        entries, it = ("entries", "them") if len(v6) > 1 else ("entry", "it")
        parts.append(
            f"IPv6 CIDR {entries} {', '.join(v6)}: httpx (langchain, openai SDK 1.x/2.x) cannot "
            f"create any client with {it} (InvalidURL), so all their requests fail; requests, "
            f"urllib and curl ignore {it}; only Go and httpx2 honour {it}"
        )
    if v4:
        entries, it = ("entries", "them") if len(v4) > 1 else ("entry", "it")
        parts.append(
            f"CIDR {entries} {', '.join(v4)}: curl, Go, requests and httpx2 honour {it}, but "
            f"httpx (langchain, openai SDK 1.x/2.x) and urllib ignore {it} and send those hosts "
            "to the proxy"
        )
    message = "NO_PROXY has " + "; and ".join(parts)
    if v6:
        hint = (
            f"remove {', '.join(v6)} from {where}, and list the IPv6 addresses that must go "
            "direct one by one instead (e.g. 2001:db8::5)"
        )
        return Check(name, "env.no-proxy-cidr", "NO_PROXY", FAIL, message, hint)
    hint = (
        f"list the hosts by name or IP in {where} as well, e.g. internal-llm.corp.example or "
        "10.1.2.3"
    )
    return Check(name, "env.no-proxy-cidr", "NO_PROXY", WARN, message, hint)


def _show_value(value: str) -> str:
    return redact_url(value) if "://" in value else value


def check_ca_files(
    profile: Profile, environ: Mapping[str, str], targets: list[str], no_proxy: str
) -> list[Check]:
    """`ca.sources`, `ca.file` per ca_bundle entry, `ca.cert` per certificate,
    `ca.replace-public`."""
    from kai_launch.certinfo import read_pem_file
    from kai_launch.expand import expand_path

    name = profile.name
    out: list[Check] = []
    if profile.ca_bundle or profile.ca_mode == "system":
        out.append(check_ca_sources(profile, environ))
    for entry in profile.ca_bundle:
        where = f"{entry.origin}, key 'ca_bundle'"
        start = time.monotonic()
        try:
            path = expand_path(entry.raw, entry.base_dir, environ, where)
        except ConfigError as e:
            out.append(Check(name, "ca.file", entry.raw, FAIL, e.message(), e.hint))
            continue
        try:
            certs = read_pem_file(path)
        except TrustError as e:
            hint = e.hint or (
                f"fix the path in ca_bundle ({where}), or export the CA certificate to {path} "
                "in PEM form"
            )
            out.append(
                Check(name, "ca.file", path, FAIL, f"{e.what}: {path}", hint, _ms_since(start))
            )
            continue
        count = f"{len(certs)} certificate{'s' if len(certs) != 1 else ''}"
        out.append(Check(name, "ca.file", path, OK, f"{count} in {path}", None, _ms_since(start)))
        for cert in certs:
            out.append(_cert_check(name, path, cert))

    if profile.ca_mode == "replace" and profile.ca_bundle:
        public = [t for t in targets if is_public_host(_host_of(t)[0], no_proxy)]
        if public:
            out.append(
                Check(
                    name,
                    "ca.replace-public",
                    public[0],
                    WARN,
                    f"ca_mode = replace trusts only the profile's CAs, but {public[0]} is a "
                    "public host: reached without the intercepting proxy, its certificate fails",
                    f"use ca_mode = append in profile '{name}' ({profile.path}) unless every "
                    "public host is reached through the intercepting proxy",
                )
            )
        else:
            out.append(
                Check(
                    name,
                    "ca.replace-public",
                    None,
                    OK,
                    "ca_mode = replace, and no target is a public host",
                )
            )
    return out


def check_ca_sources(profile: Profile, environ: Mapping[str, str]) -> Check:
    """`ca.sources`: the mode, and how many certificates each source put into the merged bundle
    (certifi for append, the OS store for system, each ca_bundle file). Counting PEM blocks is
    enough here: ca.file and ca.cert look at the profile's certificates one by one."""
    from kai_launch.expand import expand_path
    from kai_launch.trust import build_bundles

    name, mode = profile.name, profile.ca_mode
    start = time.monotonic()
    mode_where = f"{profile.origins.get('ca_mode', profile.path)}, key 'ca_mode'"
    roots = None
    try:
        files = [
            (
                expand_path(e.raw, e.base_dir, environ, f"{e.origin}, key 'ca_bundle'"),
                f"{e.origin}, key 'ca_bundle'",
            )
            for e in profile.ca_bundle
        ]
        if mode == "system":
            from kai_launch.systemca import system_roots

            roots = system_roots(mode_where)
    except KaiRunError as e:
        return Check(
            name, "ca.sources", f"ca_mode {mode}", FAIL, e.message(), e.hint, _ms_since(start)
        )
    try:
        made = build_bundles(files, mode, where=mode_where, roots=roots)
    except TrustError:
        why = f"ca_mode {mode}: skipped, the CA bundle cannot be built (see ca.file)"
        return Check(name, "ca.sources", f"ca_mode {mode}", SKIP, why)
    label = {"certifi": "public roots (certifi)", "os": "OS store", "file": "ca_bundle"}
    parts = []
    for i, (kind, source, n) in enumerate(made.counts):
        unit = ("root" if kind != "file" else "certificate") + ("s" if n != 1 else "")
        text = f"{n} {unit} from {source}" if i == 0 else f"{n} from {source}"
        parts.append(text + (f" ({label[kind]})" if kind != "file" else ""))
    total = sum(n for _, _, n in made.counts)
    message = f"ca_mode {mode}: " + " + ".join(parts) + f" = {total}"
    data: dict[str, object] = {
        "ca_mode": mode,
        "bundle": made.merged,
        "total": total,
        "sources": [
            {"kind": kind, "source": source, "certificates": n} for kind, source, n in made.counts
        ],
    }
    return Check(name, "ca.sources", made.merged, OK, message, None, _ms_since(start), data=data)


def _cert_check(name: str, path: str, cert: CertInfo) -> Check:
    days = cert.days_left()
    until = cert.not_after.date().isoformat()
    kind = "CA" if cert.is_ca else "not a CA"
    label = f"{cert.subject_short} ({kind}, issued by {cert.issuer_short})"
    replace_hint = (
        f"get the current certificate from whoever runs that CA and replace {path} (for "
        "mitmproxy: it writes a new CA into its confdir when the old one is deleted)"
    )
    if cert.not_yet_valid():
        since = cert.not_before.date().isoformat()
        return Check(
            name,
            "ca.cert",
            path,
            FAIL,
            f"{label} is not valid before {since}",
            "check the system clock, or use the right certificate",
        )
    if days < 0:
        return Check(name, "ca.cert", path, FAIL, f"{label} expired on {until}", replace_hint)
    if days < EXPIRY_WARN_DAYS:
        return Check(
            name,
            "ca.cert",
            path,
            WARN,
            f"{label} expires in {days:.0f} days ({until})",
            replace_hint.replace("get the current", "before then, get the renewed"),
        )
    if not cert.is_ca:
        return Check(
            name,
            "ca.cert",
            path,
            WARN,
            f"{label} is not a CA certificate: it can only vouch for itself",
            f"put the certificate of the CA that issued it ({cert.issuer_short}) into {path}",
        )
    return Check(name, "ca.cert", path, OK, f"{label}, valid until {until} ({days:.0f} days)")


# --------------------------------------------------------------------------------------------
# target.route: which route the profile gives a target


def probe_route(url: str, child: Mapping[str, str]) -> str | None:
    """The proxy (with its credentials) that doctor probes `url` through, or None for direct.

    requests' rules (the first of ROUTE_CLIENTS, and what the majority answers whenever the
    Python clients disagree only on CIDR entries), applied to `child` without reading or
    changing `os.environ` and without importing any HTTP library: so the network chains start
    at once, and `target.route` checks this answer against the libraries' own later on.
    """
    host, port, scheme, _ = _host_of(url)
    proxy = next(
        (
            child[var].strip()
            for var in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY", "all_proxy", "ALL_PROXY")
            if child.get(var, "").strip()
        ),
        None,
    )
    if proxy is None:
        return None
    no_proxy = child.get("no_proxy") or child.get("NO_PROXY") or ""
    if no_proxy_matches(host, port, no_proxy):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    """requests' reading of NO_PROXY: `*`; a name matches itself and its subdomains (a leading
    dot or `*.` is ignored); `name:port` only on that port; IPs exactly; CIDR ranges for IPv4
    hosts only (requests checks ranges with `is_ipv4_address`: an IPv6 range never matches)."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in no_proxy.replace(" ", "").lower().split(","):
        entry = raw.removeprefix("*.").lstrip(".")
        if raw == "*":
            return True
        if not entry:
            continue
        if ip is not None:
            with contextlib.suppress(ValueError):
                if "/" in entry:
                    network = ipaddress.ip_network(entry.strip("[]"), strict=False)
                    if ip.version == 4 and ip in network:
                        return True
                    continue
                if ipaddress.ip_address(entry.strip("[]")) == ip:
                    return True
            continue
        name, colon, entry_port = entry.rpartition(":")
        if not colon or not entry_port.isdecimal():
            name, entry_port = entry, ""
        if entry_port and int(entry_port) != port:
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


def requests_ca_file(child: Mapping[str, str]) -> str | None:
    """The CA file requests would trust under `child`: the merged bundle when the profile has
    ca_bundle (REQUESTS_CA_BUNDLE points at it), else the parent's choice, else certifi's."""
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if child.get(var):
            return child[var]
    from kai_launch.trust import certifi_bundle

    try:
        return certifi_bundle()
    except ImportError:
        return None  # no certifi: OpenSSL's default store


def _line_clients(line: str) -> set[str]:
    """The clients a disagreement line is about: its leading "a, b, c" list."""
    names = set()
    for word in line.split(" "):
        names.add(word.rstrip(","))
        if not word.endswith(","):
            break
    return names


def judge_route(
    name: str, url: str, probed: str | None, report: RouteReport, profile_path: str
) -> Check:
    """The `target.route` row: the route doctor probed, checked against what requests,
    urllib, httpx and httpx2 answer themselves (`report`, redacted). ok when they all agree,
    warn (naming the disagreement) when they do not, fail when one of them cannot send the
    request at all (httpx cannot create a client under this environment)."""
    shown = _show_url(url)
    probed_shown = _show_url(probed) if probed else None
    answers = [(c, report.clients[c]) for c in ROUTE_CLIENTS if c in report.clients]
    failing = [(c, r) for c, r in answers if r.error]
    working = [(c, r) for c, r in answers if not r.error]
    agree = [(c, r) for c, r in working if r.proxy == probed_shown]
    others = [(c, r) for c, r in working if r.proxy != probed_shown]
    if agree:
        why = agree[0][1].note.split("; CA:")[0].removeprefix("direct: ").removeprefix("via ")
    else:
        why = "by requests' rules"
    if probed_shown:
        message = f"{shown} goes through proxy {probed_shown} ({why})"
    else:
        message = f"{shown} goes direct ({why})"
    if not others and not failing:
        return Check(name, "target.route", shown, OK, message)
    if others:
        names = ", ".join(c for c, _ in others)
        verb = "go" if len(others) > 1 else "goes"
        theirs = f"through {others[0][1].proxy}" if others[0][1].proxy else "direct"
        message += f"; but {names} {verb} {theirs}"
    for client, answer in failing:
        message += f"; {client} fails: {answer.error}"
    bad = {c for c, _ in others + failing}
    lines = [d for d in report.disagreements if _line_clients(d) & bad]
    see = f"see `kai-run route {shown} -p {name}`"
    if failing:
        # A client that cannot be created fails every request, whatever the URL: with kai-run's
        # normalised no_proxy, because of an IPv6 CIDR entry (env.no-proxy-cidr names it), or
        # because of a proxy scheme it cannot use (socks4://).
        clients = ", ".join(c for c, _ in failing)
        if any(r.entry for _, r in failing):
            fix = (
                f"remove the NO_PROXY entry named above from no_proxy ({profile_path}) and list "
                "the addresses themselves"
            )
        else:
            fix = (
                f"change what the error names in profile '{name}' ({profile_path}), e.g. use "
                "an http:// or socks5h:// proxy URL"
            )
        hint = f"{clients} cannot send any request under this profile: {fix}; {see}"
        return Check(name, "target.route", shown, FAIL, message, hint)
    hint = ("clients disagree: " + "; ".join(lines) + "; " if lines else "clients disagree; ") + (
        f"{see}, and name the host itself in no_proxy ({profile_path})"
    )
    return Check(name, "target.route", shown, WARN, message, hint)


# --------------------------------------------------------------------------------------------
# Network chains. A chain reports `_Row`s; hints may depend on the profile (which key names the
# proxy, which file to edit), so they are functions of a `_Ctx`, filled in per profile.


@dataclass(frozen=True)
class _Ctx:
    profile: Profile
    keys: tuple[str, ...] = ()  # the profile keys that name the proxy being checked

    @property
    def where(self) -> str:
        keys = " / ".join(self.keys) or "the proxy URL"
        if self.profile.pac_url and not any(getattr(self.profile, k, None) for k in self.keys):
            keys = f"the PAC file's answer (pac_url {redact_url(self.profile.pac_url)})"
        return f"{keys} of profile '{self.profile.name}' ({self.profile.path})"

    @property
    def auth_table(self) -> str:
        return f"[profiles.{self.profile.name}.proxy_auth]"


Hint = Callable[[_Ctx], str] | None


@dataclass(frozen=True)
class _Row:
    check: str
    target: str | None
    status: str
    message: str
    hint: Hint = None
    duration_ms: float = 0.0


Emit = Callable[[_Row], None]


class _Steps:
    """Reports a chain's steps in order; `skip_rest` fills in the ones that cannot run."""

    def __init__(self, steps: tuple[str, ...], target: str | None, emit: Emit) -> None:
        self.steps = steps
        self.target = target
        self.emit = emit
        self.done: set[str] = set()

    def put(
        self, check: str, status: str, message: str, hint: Hint = None, ms: float = 0.0
    ) -> None:
        self.done.add(check)
        self.emit(_Row(check, self.target, status, message, hint, ms))

    def result(self, check: str, r: probe.ProbeResult, hint: Hint = None) -> bool:
        kind = r.detail.get("kind")
        status = OK if r.ok else (SKIP if kind == probe.KIND_UNSUPPORTED else FAIL)
        self.put(check, status, r.message, hint if status == FAIL else None, r.duration_ms)
        return r.ok

    def skip_rest(self, why: str) -> None:
        for step in self.steps:
            if step not in self.done:
                self.put(step, SKIP, why)


def proxy_steps(proxy_url: str) -> tuple[str, ...]:
    scheme = proxy_url.split("://", 1)[0].lower() if "://" in proxy_url else "http"
    if scheme.startswith("socks"):
        return ("proxy.dns", "proxy.tcp", "proxy.socks")
    return ("proxy.dns", "proxy.tcp", "proxy.http", "proxy.auth")


TARGET_STEPS: Final = ("target.tunnel", "target.tls", "target.http")


def _network_hint(kind: str | None, timeout: float, what: str) -> Hint:
    def hint(ctx: _Ctx) -> str:
        if kind == probe.KIND_TIMEOUT:
            return (
                f"{what} accepted nothing or answered nothing within {timeout:g} s: check that it "
                f"is up and is the right kind of proxy, check {ctx.where}, or raise --timeout"
            )
        if kind == probe.KIND_REFUSED:
            return f"nothing listens there: start the proxy, or fix the port in {ctx.where}"
        if kind == probe.KIND_DNS:
            return f"the name does not resolve: fix the host in {ctx.where}, or check DNS/VPN"
        if kind == probe.KIND_NOT_HTTP:
            return f"something else listens there: fix the scheme or port in {ctx.where}"
        if kind == probe.KIND_NOT_SOCKS:
            return f"it is not a SOCKS5 proxy: fix the scheme or port in {ctx.where}"
        if kind == probe.KIND_CLOSED:
            return f"{what} hung up: check that {ctx.where} names the proxy and its port"
        return f"check {ctx.where} and that the proxy is reachable from this machine"

    return hint


def _auth_hint(*, auth_sent: bool) -> Hint:
    def hint(ctx: _Ctx) -> str:
        if not auth_sent:
            return (
                f'the proxy wants credentials: add {ctx.auth_table} with username = "..." and '
                f'password = {{ env = "PROXY_PASSWORD" }} to {ctx.profile.path}'
            )
        origin = ctx.profile.origins.get("proxy_auth.password") or ctx.profile.path
        return (
            "the proxy rejected the user name or password: check proxy_auth.username and "
            f"proxy_auth.password ({origin}); a password from {{ env = ... }} must be exported"
        )

    return hint


def run_proxy_chain(proxy_url: str, timeout: float, emit: Emit) -> None:
    """`proxy.dns`, `proxy.tcp`, then `proxy.http` + `proxy.auth` or `proxy.socks`."""
    from kai_launch.proxyurl import parse_proxy_url

    steps = _Steps(proxy_steps(proxy_url), _show_url(proxy_url), emit)
    try:
        # kai-run's own parser: it knows every scheme a profile may use (socks4 included).
        parsed, _ = parse_proxy_url(proxy_url, "proxy")
    except ConfigError as e:
        steps.put("proxy.dns", FAIL, e.what, lambda c: f"fix {c.where}")
        steps.skip_rest("skipped: bad proxy URL")
        return
    host, port = parsed.host, parsed.effective_port
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if probe.is_ip(host):
        steps.put("proxy.dns", OK, f"{host} is an IP address: nothing to resolve")
    else:
        r = probe.resolve(host, port, timeout)
        if not steps.result(
            "proxy.dns", r, _network_hint(r.detail.get("kind"), timeout, "the DNS server")
        ):
            steps.skip_rest("skipped: the proxy's name does not resolve")
            return
    r = probe.tcp_connect(host, port, timeout)
    if not steps.result(
        "proxy.tcp", r, _network_hint(r.detail.get("kind"), timeout, f"proxy {address}")
    ):
        steps.skip_rest("skipped: no TCP connection to the proxy")
        return
    if parsed.scheme not in ("http", "socks5", "socks5h"):
        steps.skip_rest(f"skipped: {parsed.scheme}:// proxies are not probed beyond TCP")
        return
    proxy = probe.parse_proxy_url(proxy_url)
    if proxy.scheme.startswith("socks"):
        steps.result("proxy.socks", *_socks_greeting(proxy, timeout))
        return
    r = probe.proxy_speaks_http(proxy_url, timeout)
    if not steps.result(
        "proxy.http", r, _network_hint(r.detail.get("kind"), timeout, f"proxy {proxy.address}")
    ):
        steps.skip_rest("skipped: the proxy does not answer HTTP")
        return
    if r.detail.get("status") != 407:
        message = f"proxy {proxy.address} did not ask for credentials"
        if proxy.has_credentials:
            message += " on a plain request (the tunnel check sends them too)"
        steps.put("proxy.auth", OK, message)
        return
    if not proxy.has_credentials:
        steps.put(
            "proxy.auth",
            FAIL,
            f"proxy {proxy.address} requires authentication (407); the profile has no proxy_auth",
            _auth_hint(auth_sent=False),
        )
        return
    # Credentials are checked with a request whose only destination is the proxy itself.
    r = probe.http_via_proxy(proxy_url, f"http://{proxy.address}/", timeout)
    if r.ok:
        steps.put(
            "proxy.auth", OK, f"proxy {proxy.address} accepts the credentials", ms=r.duration_ms
        )
    elif r.detail.get("kind") == probe.KIND_PROXY_AUTH:
        steps.put("proxy.auth", FAIL, r.message, _auth_hint(auth_sent=True), r.duration_ms)
    else:
        steps.result(
            "proxy.auth", r, _network_hint(r.detail.get("kind"), timeout, f"proxy {proxy.address}")
        )


def _socks_greeting(proxy: probe.ProxyURL, timeout: float) -> tuple[probe.ProbeResult, Hint]:
    """The SOCKS5 greeting (RFC 1928) and, with credentials, RFC 1929 authentication; no
    CONNECT, so nothing but the proxy is contacted. The per-target tunnel does the CONNECT."""
    start = time.monotonic()
    end = start + timeout
    who = f"SOCKS proxy {proxy.address}"

    def result(ok: bool, message: str, kind: str | None = None) -> probe.ProbeResult:
        return probe.ProbeResult(ok, message, _ms_since(start), {"kind": kind} if kind else {})

    def recv(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            sock.settimeout(max(end - time.monotonic(), 0.001))
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError
            buf += chunk
        return buf

    try:
        with socket.create_connection((proxy.host, proxy.port), timeout=timeout) as sock:
            methods = b"\x00\x02" if proxy.has_credentials else b"\x00"
            sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
            version, method = recv(sock, 2)
            if version != 5:
                return result(False, f"{who} did not answer with SOCKS5", probe.KIND_NOT_SOCKS), (
                    _network_hint(probe.KIND_NOT_SOCKS, timeout, who)
                )
            if method == 0xFF:
                message = (
                    f"{who} accepts none of the offered authentication methods"
                    if proxy.has_credentials
                    else f"{who} requires authentication; the profile has no proxy_auth"
                )
                return result(False, message, probe.KIND_PROXY_AUTH), _auth_hint(
                    auth_sent=proxy.has_credentials
                )
            if method == 0x02 and proxy.has_credentials:
                user = (proxy.username or "").encode()
                password = (proxy.password or "").encode()
                sock.sendall(
                    b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password
                )
                if recv(sock, 2)[1] != 0:
                    return result(
                        False, f"{who} rejected the credentials", probe.KIND_PROXY_AUTH
                    ), _auth_hint(auth_sent=True)
                return result(True, f"{who} speaks SOCKS5 and accepts the credentials"), None
            if method != 0x00:
                return result(
                    False, f"{who} chose an unexpected method {method}", probe.KIND_NOT_SOCKS
                ), _network_hint(probe.KIND_NOT_SOCKS, timeout, who)
            return result(True, f"{who} speaks SOCKS5 (no authentication)"), None
    except TimeoutError:
        kind = probe.KIND_TIMEOUT
        message = f"{who}: no SOCKS5 answer within {timeout:g} s"
    except ConnectionRefusedError:
        kind, message = probe.KIND_REFUSED, f"{who}: connection refused"
    except OSError as e:
        kind, message = probe.KIND_CLOSED, f"{who}: {e.strerror or 'connection closed'}"
    return result(False, message, kind), _network_hint(kind, timeout, who)


def _tls_hint(r: probe.ProbeResult, host: str, ca_file: str | None) -> Hint:
    kind = r.detail.get("kind")
    issuer = str(r.detail.get("issuer_short") or "")

    def hint(ctx: _Ctx) -> str:
        profile = ctx.profile
        if kind in (probe.KIND_UNTRUSTED, probe.KIND_SELF_SIGNED):
            where = f"ca_bundle of profile '{profile.name}' ({profile.path})"
            if "mitmproxy" in issuer.lower():
                known = _mitmproxy_ca_file(profile)
                if known:
                    return f"add mitmproxy's CA, {known}, to {where}"
                return f"add mitmproxy's CA (by default {MITMPROXY_CA}) to {where}"
            what = issuer or "the issuing CA"
            # A root the OS store holds but certifi does not is the managed-laptop case.
            system = (
                "; the operating system's store does not hold it either"
                if profile.ca_mode == "system"
                else '; if this machine\'s browsers trust it, ca_mode = "system" may be enough'
            )
            return (
                f"add a PEM file with the CA certificate of '{what}' to {where} (ask whoever "
                f"runs the proxy for it, or export it from a browser that trusts it){system}"
            )
        if kind in (probe.KIND_EXPIRED, probe.KIND_NOT_YET_VALID):
            return (
                "a certificate in the chain is out of date: if it is the proxy's, its CA must be "
                "renewed; also check this machine's clock"
            )
        if kind == probe.KIND_HOSTNAME:
            return f"the certificate is for other names: check the host {host} in the URL"
        if kind == probe.KIND_CA_FILE:
            return f"fix ca_bundle of profile '{profile.name}' ({profile.path})"
        if kind == probe.KIND_TIMEOUT:
            return (
                "the TLS handshake stalled: a proxy or firewall may be holding it; raise "
                "--timeout to wait longer"
            )
        return f"TLS with {host} failed: the proxy may block this host, or it is not a TLS port" + (
            f" (verified with {ca_file})" if ca_file else ""
        )

    return hint


def _mitmproxy_ca_file(profile: Profile) -> str | None:
    """The CA file of the profile's mitmproxy sidecar: its `ready_file` when that is a .pem file
    (the usual way to wait for mitmproxy's CA), else `mitmproxy-ca-cert.pem` in the confdir its
    command sets (`--set confdir=DIR`); None when the profile says nothing (the CA is then in
    the confdir of whichever mitmproxy runs, ~/.mitmproxy by default)."""
    sidecar = profile.sidecar or {}
    ready_file = sidecar.get("ready_file")
    if isinstance(ready_file, str) and ready_file.endswith(".pem"):
        return _sidecar_path(profile, ready_file)
    command = sidecar.get("command")
    args = [str(a) for a in command] if isinstance(command, list) else []
    for i, arg in enumerate(args):
        option = arg.removeprefix("--set=") if arg.startswith("--set=") else None
        if arg == "--set" and i + 1 < len(args):
            option = args[i + 1]
        if option is not None and option.startswith("confdir="):
            confdir = _sidecar_path(profile, option.removeprefix("confdir="))
            return os.path.join(confdir, "mitmproxy-ca-cert.pem")
    return None


def _sidecar_path(profile: Profile, raw: str) -> str:
    """A path from the sidecar table, expanded as the sidecar gets it (best effort: a hint)."""
    from kai_launch.expand import expand_path

    try:
        return expand_path(raw, profile.sidecar_base_dir or os.getcwd(), os.environ, "sidecar")
    except ConfigError:
        return raw


# --------------------------------------------------------------------------------------------
# Plain http:// through an HTTP proxy: did the target answer, or the proxy in its name?

# Forward proxies that sign their own error pages with their name in `Server` (mitmproxy:
# "mitmproxy 11.0.2", squid: "squid/6.6"); an answer they pass on keeps the target's `Server`.
_PROXY_SERVERS: Final = ("mitmproxy", "squid", "tinyproxy", "privoxy")
_REASON_LIMIT: Final = 200
_UNREACHABLE: Final = "check the host and port in the URL, and that the service runs there"


def proxy_error(
    status: int, reason: str, headers: Mapping[str, list[str]], body: bytes
) -> str | None:
    """The proxy's own reason when an answer to a request sent through an HTTP proxy was written
    by the proxy (it could not, or would not, reach the target); None when the target answered,
    or when nothing tells (the caller then treats a 502/504 as doubtful, not as a failure).

    Conservative on purpose: a target may answer 403 or 502 itself (an API gateway whose backend
    is down), and then the route works. So only a 403/502/503/504 counts, and only with positive
    evidence of who wrote it (`headers` keys are lower case):
    - `Proxy-Status` (RFC 9209) with an `error` parameter: the standard way for a proxy to say
      that it failed (`error=destination_ip_refused; details="..."`);
    - `X-Squid-Error`: squid puts it on its own error pages only;
    - `Server` naming a forward proxy (`_PROXY_SERVERS`): mitmproxy's error pages say
      "Server: mitmproxy <version>" and "[Errno 111] Connect call failed (...)" in the body.
    Not `Via`: a proxy adds it to every answer it passes on as well, so it proves nothing.
    """
    if status not in probe.ERROR_PAGE_STATUSES:
        return None
    for value in reversed(headers.get("proxy-status", [])):
        for member in reversed(value.split(",")):
            params = _sf_params(member)
            if "error" in params:
                details = params.get("details")
                return f"{params['error']} ({details})" if details else params["error"]
    if squid := headers.get("x-squid-error"):
        code, _, errno = squid[0].partition(" ")
        if errno.isdecimal() and int(errno):
            return f"{code} ({os.strerror(int(errno))})"
        return code
    server = (headers.get("server") or [""])[0].lower()
    if any(server.startswith(name) for name in _PROXY_SERVERS):
        return _page_text(body, f"{status} {reason}") or f"{status} {reason}".strip()
    return None


def _sf_params(member: str) -> dict[str, str]:
    """`; key=value` parameters of one structured-field list member (RFC 8941), unquoted."""
    params: dict[str, str] = {}
    for part in member.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) > 1:
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[key.strip().lower()] = value
    return params


def _page_text(body: bytes, heading: str) -> str:
    """The readable text of an (HTML) error page, without its title and its status heading."""
    import html
    import re

    text = body.decode("utf-8", "replace")
    text = re.sub(r"(?is)<(head|style|script)\b.*?</\1\s*>", " ", text)
    text = html.unescape(re.sub(r"(?s)<[^>]*>", " ", text))
    text = " ".join(text.split())
    text = text.removeprefix(heading.strip()).strip(" :-")
    if len(text) > _REASON_LIMIT:
        text = text[: _REASON_LIMIT - 3].rstrip() + "..."
    return text


def http_through_proxy(proxy_url: str, url: str, timeout: float) -> probe.ProbeResult:
    """`probe.http_via_proxy`, plus `detail["proxy_error"]`: the proxy's reason when it wrote the
    answer itself (see `proxy_error`), else None."""
    r = probe.http_via_proxy(proxy_url, url, timeout)
    if r.ok:
        r.detail["proxy_error"] = proxy_error(
            r.detail["status"],
            r.detail["reason"],
            r.detail.get("headers", {}),
            r.detail.get("page", b""),
        )
    return r


def _judge_proxied_http(
    r: probe.ProbeResult, host: str, timeout: float, via: str
) -> tuple[str, str, Hint]:
    """Status, message and hint of `target.http` for plain http:// through an HTTP proxy."""
    if not r.ok:
        return FAIL, r.message, _target_hint(r, timeout, via, host, direct=False, bypass=False)
    code = r.detail.get("status")
    status_text = f"{code} {r.detail.get('reason') or ''}".strip()
    reason = r.detail.get("proxy_error")
    proxy = r.detail.get("proxy", via)
    target = r.detail.get("target", host)

    def no_proxy(ctx: _Ctx) -> str:
        return f"no_proxy of profile '{ctx.profile.name}' ({ctx.profile.path})"

    if reason is not None and code == 403:
        message = (
            f"proxy {proxy} refused to fetch {target}: {reason} ({status_text} from the proxy)"
        )
        return (
            FAIL,
            message,
            lambda ctx: (
                f"the proxy will not fetch {host}: ask whoever runs it to allow the host; if "
                f"{host} can be reached without the proxy, add it to {no_proxy(ctx)}"
            ),
        )
    if reason is not None:
        message = f"proxy {proxy} could not reach {target}: {reason} ({status_text} from the proxy)"
        return (
            FAIL,
            message,
            lambda ctx: (
                f"the proxy could not reach {host}: {_UNREACHABLE}; if only this "
                f"machine can reach {host}, add it to {no_proxy(ctx)}"
            ),
        )
    if code in (502, 504):
        message = (
            f"HTTP {status_text} for {target} through proxy {proxy}: either the proxy could not "
            "reach it, or the target's own gateway answered (nothing in the answer tells which)"
        )
        return (
            WARN,
            message,
            lambda ctx: (
                f"a proxy answers {code} when it cannot reach the target: check that {host} is up "
                f"and the URL's port is right, or ask whoever runs the proxy; if only this "
                f"machine can reach {host}, add it to {no_proxy(ctx)}"
            ),
        )
    return OK, r.message, None


def _target_hint(
    r: probe.ProbeResult, timeout: float, via: str, host: str, *, direct: bool, bypass: bool
) -> Hint:
    kind = r.detail.get("kind")
    if direct:
        return lambda ctx: _direct_hint(kind, timeout, via, host, ctx, bypass=bypass)
    if kind == probe.KIND_PROXY_AUTH:
        return _auth_hint(auth_sent=bool(r.detail.get("auth_sent")))
    if kind == probe.KIND_PROXY_STATUS and r.detail.get("status") in (502, 503, 504):
        return lambda ctx: (
            f"the proxy could not reach {host}: {_UNREACHABLE}; if only this "
            f"machine can reach {host}, add it to no_proxy of profile '{ctx.profile.name}' "
            f"({ctx.profile.path})"
        )
    if kind == probe.KIND_PROXY_STATUS:
        return lambda ctx: (
            f"the proxy would not connect to it: the proxy may block this host; if it must be "
            f"reached directly, add it to no_proxy of profile '{ctx.profile.name}' "
            f"({ctx.profile.path})"
        )
    if kind == probe.KIND_DNS and r.detail.get("stage") == "socks":
        # The proxy's own name resolved (stage "connect" would say otherwise): with socks5://
        # it is the target's name that the client looks up itself, and that failed.
        return lambda ctx: (
            f"this machine cannot resolve the target {host}, and socks5:// makes the client "
            f"resolve it: use socks5h:// in {ctx.where} so that the proxy resolves it, or check "
            "the host name in the URL"
        )
    return _network_hint(kind, timeout, via)


def _direct_hint(
    kind: str | None, timeout: float, target: str, host: str, ctx: _Ctx, *, bypass: bool
) -> str:
    """`bypass`: direct only because of a NO_PROXY entry the profile could drop (never so for
    loopback, which kai-run always sends direct); "take it out of no_proxy" is advice only then."""
    no_proxy = f"no_proxy of profile '{ctx.profile.name}' ({ctx.profile.path})"
    if kind == probe.KIND_TIMEOUT:
        if bypass:
            return (
                f"{target} did not answer within {timeout:g} s: check the URL, or whether this "
                f"host must go through the proxy (remove it from {no_proxy}); raise --timeout "
                "to wait longer"
            )
        if _is_loopback(host):
            return (
                f"nothing answered on {target} within {timeout:g} s: is the service running, "
                "listening on that port and not stuck? raise --timeout to wait longer"
            )
        return (
            f"{target} did not answer within {timeout:g} s: check the URL, that the host is up "
            "and that no firewall drops the connection; raise --timeout to wait longer"
        )
    if kind == probe.KIND_REFUSED:
        return f"nothing listens on {target}: check the URL's port, and that the server runs"
    if kind == probe.KIND_DNS:
        if bypass:
            return (
                f"this machine cannot resolve {host}: if only the proxy can, remove the host "
                f"from {no_proxy}"
            )
        return f"this machine cannot resolve {host}: check the host name in the URL, and DNS/VPN"
    return f"check that {target} is the right address and port, and that it is up"


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_target_chain(
    url: str,
    proxy_url: str | None,
    ca_file: str | None,
    timeout: float,
    emit: Emit,
    *,
    bypass: bool = False,
) -> None:
    """`target.tunnel`, `target.tls`, `target.http` for one URL over the chosen route.

    `bypass`: the URL goes direct only because of a NO_PROXY entry (see `Target.bypass`)."""
    host, port, scheme, path = _host_of(url)
    steps = _Steps(TARGET_STEPS, _show_url(url), emit)
    via = f"proxy {_show_url(proxy_url)}" if proxy_url else f"{host}:{port}"
    proxy_scheme = (proxy_url or "").split("://", 1)[0].lower()
    direct = proxy_url is None

    if scheme == "http" and proxy_url and proxy_scheme == "http":
        # Plain http:// goes to an HTTP proxy as an absolute-form request: no tunnel, no TLS.
        steps.put("target.tunnel", SKIP, "http:// URL through an HTTP proxy: no tunnel needed")
        steps.put("target.tls", SKIP, "http:// URL: no TLS")
        r = http_through_proxy(proxy_url, url, timeout)
        status, message, hint = _judge_proxied_http(r, host, timeout, via)
        steps.put("target.http", status, message, hint, r.duration_ms)
        return

    if proxy_url and proxy_scheme not in ("http", "https", "socks5", "socks5h"):
        steps.skip_rest(f"skipped: {proxy_scheme}:// proxies are not probed")
        return
    sock, r = probe.open_route(proxy_url, host, port, timeout)
    if direct and sock is not None:
        r = replace(r, message=f"{r.message} (direct)")
    if (
        not steps.result(
            "target.tunnel", r, _target_hint(r, timeout, via, host, direct=direct, bypass=bypass)
        )
        or sock is None
    ):
        steps.skip_rest("skipped: no connection to the target")
        return
    conn: socket.socket = sock
    try:
        if scheme == "https":
            ssock, r = probe.tls_handshake(
                sock,
                host,
                port,
                ca_file,
                timeout,
                reopen=lambda: probe.open_route(proxy_url, host, port, timeout)[0],
            )
            if ssock is None:
                if r.detail.get("kind") in (probe.KIND_UNTRUSTED, probe.KIND_SELF_SIGNED):
                    issuer = r.detail.get("issuer_short") or "an unknown issuer"
                    r = replace(
                        r,
                        message=f"certificate of {host} issued by {issuer}, not in your CA "
                        f"bundle ({ca_file or 'system trust store'})",
                    )
                steps.result("target.tls", r, _tls_hint(r, host, ca_file))
                steps.skip_rest("skipped: TLS failed")
                return
            conn = ssock
            steps.result("target.tls", r)
        else:
            steps.put("target.tls", SKIP, "http:// URL: no TLS")
        r = probe.http_request(conn, host, path, timeout, port=port)
        steps.result(
            "target.http", r, _target_hint(r, timeout, via, host, direct=direct, bypass=bypass)
        )
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# Preparing and running


@dataclass(frozen=True)
class Target:
    """One URL of one profile: the route doctor probes, and the CA file it verifies with."""

    url: str
    proxy: str | None  # with credentials; None: direct
    ca_file: str | None
    error: Check | None = None  # a target.route failure: nothing to probe
    # Direct only because a NO_PROXY entry says so: without NO_PROXY it would go through a
    # proxy. Never true for loopback, which kai-run always sends direct.
    bypass: bool = False


@dataclass
class ProfileJob:
    """One profile, as far as doctor got with it offline."""

    name: str
    index: int
    profile: Profile | None = None
    child: dict[str, str] = field(default_factory=dict)
    offline: list[Check] = field(default_factory=list)
    proxies: dict[str, tuple[str, ...]] = field(default_factory=dict)  # url -> profile keys
    targets: list[Target] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)  # --url, else the profile's check_urls
    # A profile with a sidecar is completed only once the sidecar runs: its CA file is often
    # written by the sidecar itself (mitmproxy's, on first start).
    deferred: bool = False
    pac_refresh: bool = False  # --refresh-pac
    # doctor's --timeout, also for the PAC fetch and OAuth2 token requests: a profile whose
    # token endpoint hangs must not hold `doctor --all` up longer than its network checks.
    pac_timeout: float = DEFAULT_TIMEOUT

    @property
    def sidecar(self) -> bool:
        return self.profile is not None and self.profile.sidecar is not None

    def live_targets(self) -> list[tuple[int, Target]]:
        """Targets with a route to probe."""
        return [(i, t) for i, t in enumerate(self.targets) if t.error is None]


def _stamp(check: Check, job: ProfileJob, *position: int) -> Check:
    group = _GROUPS[check.check.split(".")[0]]
    return replace(check, order=(job.index, group, *position))


def prepare(
    config_path: str | None,
    profile: str | None,
    *,
    all_profiles: bool,
    urls: list[str],
    environ: Mapping[str, str],
    pac_refresh: bool = False,
    pac_timeout: float = DEFAULT_TIMEOUT,
) -> list[ProfileJob]:
    """Everything that needs no network, for `profile` (else the selected one) or all.
    (The exception: a profile's PAC file is fetched here, unless cached; see the `pac` row.)

    Raises KaiRunError (exit 2) for kai-run's own errors: a bad --url, a named config file that
    does not exist, an unknown profile name, no profile selected. A broken profile becomes a
    failing `config` row instead, and so does a profile file that does not parse.
    """
    from kai_launch.config import candidate_files, load_config
    from kai_launch.profiles import resolve_profile, select_profile_name

    for url in urls:
        validate_url(url)
    try:
        config = load_config(config_path, environ)
    except ConfigError as e:
        for path, scope in candidate_files(config_path, environ):
            if scope == "file" and not os.path.exists(path):
                raise
        label = profile or ALL_PROFILES
        job = ProfileJob(label, 0)
        job.offline.append(_stamp(Check(label, "config", e.where, FAIL, e.what, e.hint), job))
        return [job]
    if all_profiles:
        names = config.profile_names()
        if not names:
            raise ProfileError(
                "no profiles are defined",
                ", ".join(f.path for f in config.files),
                "create some with `kai-run init`, or pass --config FILE",
            )
    else:
        names = [select_profile_name(config, profile, environ)[0]]
    jobs: list[ProfileJob] = []
    for index, name in enumerate(names):
        if config.lookup(name) is None:
            resolve_profile(config, name)  # raises the "unknown profile" error, with the list
        jobs.append(_prepare_one(config, name, index, urls, environ, pac_refresh, pac_timeout))
    return jobs


def _prepare_one(
    config: Config,
    name: str,
    index: int,
    urls: list[str],
    environ: Mapping[str, str],
    pac_refresh: bool = False,
    pac_timeout: float = DEFAULT_TIMEOUT,
) -> ProfileJob:
    from kai_launch.profiles import resolve_profile

    job = ProfileJob(name, index, pac_refresh=pac_refresh, pac_timeout=pac_timeout)
    start = time.monotonic()
    try:
        profile = resolve_profile(config, name)
    except KaiRunError as e:
        job.offline.append(_config_fail(job, e, name, start))
        return job
    job.urls = list(urls or profile.check_urls)
    if profile.sidecar is not None:
        job.profile, job.deferred = profile, True
        return job
    complete(job, profile, environ)
    return job


def complete(job: ProfileJob, profile: Profile, environ: Mapping[str, str]) -> None:
    """The offline checks of a resolved profile, and the targets' routes."""
    from kai_launch.environ import build_plan

    name = job.name
    job.deferred = False
    job.profile = None  # set again once the plan is built: a broken profile has nothing to run
    pac = None
    pac_failed = False
    if profile.pac_url is not None:
        from kai_launch.pac import doctor_check

        pac_row, pac = doctor_check(
            name, profile, environ, job.urls, job.pac_refresh, job.pac_timeout
        )
        job.offline.append(_stamp(pac_row, job, 1))
        pac_failed = pac is None
    start = time.monotonic()
    ca_broken = False
    see_ca = "ca.sources and ca.file" if profile.ca_mode == "system" else "ca.file"
    try:
        plan = build_plan(
            profile, environ, pac=pac, collect_token_errors=True, token_timeout=job.pac_timeout
        )
    except TrustError:
        # The ca.* rows say what is wrong with which file; the rest is checked without it.
        ca_broken = True
        try:
            plan = build_plan(
                profile,
                environ,
                bundles=False,
                pac=pac,
                collect_token_errors=True,
                token_timeout=job.pac_timeout,
            )
        except KaiRunError as e:
            job.offline.append(_config_fail(job, e, profile.path, start))
            return
    except KaiRunError as e:
        job.offline.append(_config_fail(job, e, profile.path, start))
        return
    job.profile = profile
    parents = [n for n, _ in profile.chain[1:]]
    extends = f" (extends {' -> '.join(parents)})" if parents else ""
    message = f"profile '{name}'{extends} resolves, and so does every secret reference"
    if ca_broken:
        message = f"profile '{name}' resolves, but its CA bundle cannot be built (see {see_ca})"
    elif plan.token_errors:
        message = f"profile '{name}'{extends} resolves, but an OAuth2 token cannot be had (see env.oauth2)"
    config_check = Check(name, "config", profile.path, OK, message, None, _ms_since(start))
    job.offline.append(_stamp(config_check, job))
    job.child = plan.child_environ(environ)
    env_checks = check_environment(profile, environ, job.child) + oauth2_checks(profile, plan)
    for i, check in enumerate(env_checks):
        job.offline.append(_stamp(check, job, i))
    target_urls = job.urls
    no_proxy = job.child.get("NO_PROXY", "")
    for i, check in enumerate(check_ca_files(profile, environ, target_urls, no_proxy)):
        job.offline.append(_stamp(check, job, i))
    if profile.jvm and not ca_broken:
        from kai_launch.jvmcheck import check_jvm

        for i, check in enumerate(check_jvm(profile, job.child)):
            job.offline.append(_stamp(check, job, i))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        value = job.child.get(var)
        if value:
            job.proxies[value] = (*job.proxies.get(value, ()), PROXY_VARS[var])
    if not target_urls:
        message = "no targets: the profile has no check_urls and no --url was given"
        job.offline.append(_stamp(Check(name, "target.route", None, SKIP, message), job, 0, 0))
    ca_file = requests_ca_file(job.child)
    for i, url in enumerate(target_urls):
        error = None
        if ca_broken:
            why = f"skipped: the CA bundle cannot be built (see {see_ca})"
            error = Check(name, "target.route", _show_url(url), SKIP, why)
        elif pac_failed:
            # Direct probes would test a route no launch takes: a launch stops at the PAC.
            why = "skipped: the PAC file cannot be used (see pac), so a launch would fail"
            error = Check(name, "target.route", _show_url(url), SKIP, why)
        else:
            try:
                validate_url(url)
            except KaiRunError as e:
                error = Check(name, "target.route", _show_url(url), FAIL, e.what, e.hint)
        if error is not None:
            job.targets.append(Target(url, None, None, _stamp(error, job, i, 0)))
        else:
            proxy = probe_route(url, job.child)
            bypass = (
                proxy is None
                and not _is_loopback(_host_of(url)[0])
                and probe_route(
                    url, {k: v for k, v in job.child.items() if k.lower() != "no_proxy"}
                )
                is not None
            )
            job.targets.append(Target(url, proxy, ca_file, bypass=bypass))


def oauth2_checks(profile: Profile, plan: EnvPlan) -> list[Check]:
    """`env.oauth2`: each oauth2 token of the profile's env, fetched (or cached) as a run would."""
    out: list[Check] = []
    now = time.time()
    for var, token in plan.tokens.items():
        what = profile.env[var].describe().removeprefix("oauth2: ")  # type: ignore[union-attr]
        how = "from the cache" if token.cached else f"fetched {token.route}"
        left = max(token.expires_at - now, 0)
        message = f"{var}: token for {what} {how}, valid for {left:.0f} s"
        out.append(Check(profile.name, "env.oauth2", var, OK, message))
    for var, error in plan.token_errors.items():
        out.append(Check(profile.name, "env.oauth2", var, FAIL, f"{var}: {error.what}", error.hint))
    return out


def _config_fail(job: ProfileJob, e: KaiRunError, where: str, start: float) -> Check:
    check = Check(job.name, "config", e.where or where, FAIL, e.what, e.hint, _ms_since(start))
    return _stamp(check, job)


def route_rows(jobs: list[ProfileJob], put: Callable[[Check], None]) -> None:
    """`target.route` for every live target, from `kai_launch.route` (which imports requests,
    httpx, httpx2 and aiohttp: about a second, spent while the probes wait on the network)."""
    # `route` asks the libraries under the child's environment by swapping a plain dict in for
    # `os.environ`, never calling setenv(): safe while the probe threads read the C environment.
    from kai_launch.route import route

    for job in jobs:
        assert job.profile is not None
        for i, target in job.live_targets():
            start = time.monotonic()
            try:
                report = route(target.url, job.child)
                check = judge_route(job.name, target.url, target.proxy, report, job.profile.path)
            except KaiRunError as e:
                check = Check(job.name, "target.route", _show_url(target.url), FAIL, e.what, e.hint)
            except Exception as e:  # a bug must not cost the other rows
                message = f"internal error in kai-run: {type(e).__name__}: {e}"
                check = Check(job.name, "target.route", _show_url(target.url), FAIL, message)
            put(_stamp(replace(check, duration_ms=_ms_since(start)), job, i, 0))


class Doctor:
    """Runs prepared jobs; iterate over it to get each `Check` as soon as it is known."""

    def __init__(
        self,
        jobs: list[ProfileJob],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        environ: Mapping[str, str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.jobs = jobs
        self.timeout = timeout
        self.environ = dict(os.environ if environ is None else environ)
        self.verbose = verbose
        # Set when the consumer stops early (Ctrl+C): chains then stop before their next step
        # instead of running it, so the process can exit within one timeout.
        self._cancel = threading.Event()

    @property
    def total(self) -> int | None:
        """How many rows iterating yields (every chain reports every step, run or skipped);
        None while a sidecar profile, completed only once its sidecar runs, is pending."""
        if any(job.deferred for job in self.jobs):
            return None
        count = 0
        for job in self.jobs:
            count += len(job.offline) + len(job.targets) + int(job.sidecar)
            count += sum(len(proxy_steps(url)) for url in job.proxies)
            count += len(job.live_targets()) * len(TARGET_STEPS)
        return count

    def __iter__(self) -> Iterator[Check]:
        ready = [j for j in self.jobs if j.profile is not None and not j.deferred]
        for job in self.jobs:
            yield from self._offline(job)
        yield from self._run(ready, [j for j in ready if j.live_targets()])
        for job in self.jobs:
            if job.deferred:
                yield from self._with_sidecar(job)

    def _offline(self, job: ProfileJob) -> Iterator[Check]:
        yield from job.offline
        yield from (t.error for t in job.targets if t.error is not None)

    def _with_sidecar(self, job: ProfileJob) -> Iterator[Check]:
        assert job.profile is not None
        from kai_launch.sidecar import running_sidecar

        start = time.monotonic()
        with contextlib.ExitStack() as stack:
            try:
                running = stack.enter_context(
                    running_sidecar(job.profile, self.environ, verbose=self.verbose)
                )
            except KaiRunError as e:
                check = Check(job.name, "sidecar", None, FAIL, e.message(), e.hint)
                yield _stamp(replace(check, duration_ms=_ms_since(start)), job)
                complete(job, job.profile, self.environ)
                yield from self._offline(job)
                if job.profile is not None:
                    yield from self._skipped(job, "skipped: the sidecar did not start")
                return
            message = (
                f"using the background sidecar (pid {running.background.pid})"
                if running.background is not None
                else "sidecar started for the duration of the checks"
            )
            yield _stamp(Check(job.name, "sidecar", None, OK, message, None, _ms_since(start)), job)
            complete(job, job.profile, self.environ)
            yield from self._offline(job)
            if job.profile is not None:
                yield from self._run([job], [job] if job.live_targets() else [])

    def _skipped(self, job: ProfileJob, why: str) -> Iterator[Check]:
        for p, url in enumerate(job.proxies):
            for s, step in enumerate(proxy_steps(url)):
                yield _stamp(Check(job.name, step, _show_url(url), SKIP, why), job, p, s)
        for t, target in job.live_targets():
            for s, step in enumerate(TARGET_STEPS, start=1):
                yield _stamp(Check(job.name, step, _show_url(target.url), SKIP, why), job, t, s)

    def _run(self, jobs: list[ProfileJob], routes: list[ProfileJob]) -> Iterator[Check]:
        """Every chain of `jobs` in its own thread, plus one thread computing `target.route`
        for `routes`; rows are yielded as they arrive."""
        results: queue.SimpleQueue[Check | None] = queue.SimpleQueue()
        tasks: list[Callable[[], None]] = []
        # One chain per distinct proxy URL (credentials included: they change the answer).
        users: dict[str, list[tuple[ProfileJob, int]]] = {}
        for job in jobs:
            for p, url in enumerate(job.proxies):
                users.setdefault(url, []).append((job, p))
        tasks += [self._proxy_task(url, used_by, results.put) for url, used_by in users.items()]
        for job in jobs:
            tasks += [
                self._target_task(job, t, target, results.put) for t, target in job.live_targets()
            ]
        if routes:
            tasks.append(lambda: route_rows(routes, results.put))
        if not tasks:
            return

        def run(task: Callable[[], None]) -> None:
            try:
                task()
            finally:
                results.put(None)  # one "done" per task, whatever happened

        pool = ThreadPoolExecutor(min(len(tasks), MAX_THREADS), thread_name_prefix="kai-doctor")
        pending = len(tasks)
        try:
            for task in tasks:
                pool.submit(run, task)
            while pending:
                item = results.get()
                if item is None:
                    pending -= 1
                else:
                    yield item
        finally:
            if pending:
                self._cancel.set()
            # Nothing waits here: a running step ends within its timeout, and is the last.
            pool.shutdown(wait=False, cancel_futures=True)

    def _proxy_task(
        self, url: str, used_by: list[tuple[ProfileJob, int]], put: Callable[[Check], None]
    ) -> Callable[[], None]:
        steps = proxy_steps(url)

        def emit(row: _Row) -> None:
            if self._cancel.is_set():
                raise _Cancelled
            for job, p in used_by:
                assert job.profile is not None
                ctx = _Ctx(job.profile, job.proxies[url])
                put(_materialise(row, ctx, job, (p, steps.index(row.check))))

        return lambda: _guard(lambda e: run_proxy_chain(url, self.timeout, e), emit, steps, url)

    def _target_task(
        self, job: ProfileJob, t: int, target: Target, put: Callable[[Check], None]
    ) -> Callable[[], None]:
        assert job.profile is not None
        ctx = _Ctx(job.profile, job.proxies.get(target.proxy or "", ()))

        def emit(row: _Row) -> None:
            if self._cancel.is_set():
                raise _Cancelled
            put(_materialise(row, ctx, job, (t, 1 + TARGET_STEPS.index(row.check))))

        def chain(e: Emit) -> None:
            run_target_chain(
                target.url, target.proxy, target.ca_file, self.timeout, e, bypass=target.bypass
            )

        return lambda: _guard(chain, emit, TARGET_STEPS, target.url)


def _materialise(row: _Row, ctx: _Ctx, job: ProfileJob, position: tuple[int, int]) -> Check:
    hint = row.hint(ctx) if row.hint is not None and row.status in (WARN, FAIL) else None
    check = Check(job.name, row.check, row.target, row.status, row.message, hint, row.duration_ms)
    return _stamp(check, job, *position)


def _guard(chain: Callable[[Emit], None], emit: Emit, steps: tuple[str, ...], target: str) -> None:
    """A bug in one chain becomes failing rows for its remaining steps, not a hang or a crash."""
    sent: set[str] = set()

    def tracking(row: _Row) -> None:
        sent.add(row.check)
        emit(row)

    try:
        chain(tracking)
    except _Cancelled:
        return
    except Exception as e:  # reported, not hidden: the row says it is kai-run's fault
        for step in steps:
            if step not in sent:
                message = f"internal error in kai-run: {type(e).__name__}: {e}"
                emit(_Row(step, _show_url(target), FAIL, message, _report_bug))


class _Cancelled(Exception):
    """Raised into a chain by its emit function once the run was abandoned."""


def _report_bug(ctx: _Ctx) -> str:
    return "this is a bug in kai-run: please report it with the output of --json"
