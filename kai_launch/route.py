"""`kai-run route`: for one URL and one environment, where each HTTP client would send the request
(which proxy, or direct) and which CA file it would trust.

The Python clients are asked, not imitated: requests, urllib, httpx, httpx2 and aiohttp each read
the environment with their own functions (`requests.utils.get_environ_proxies`,
`urllib.request.getproxies_environment`, httpx's and httpx2's `get_environment_proxies` matched by
their `URLPattern`...). When one of them is not installed its rules are encoded here and the
answer says "predicted". curl, Go and Node cannot be asked from Python, so their documented rules
(and their source, cited next to each function) are encoded.

Why a client goes direct is found by asking it again: without NO_PROXY (did NO_PROXY decide?), then
with one NO_PROXY entry at a time (which entry?). That turns "httpx and requests disagree" into
"CIDR entry 10.0.0.0/8 in NO_PROXY, not honoured by httpx".
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from kai_launch.errors import KaiRunError
from kai_launch.proxyurl import redact_url

if TYPE_CHECKING:
    from kai_launch.pac import PacResult

CLIENTS: Final = ("requests", "urllib", "httpx", "httpx2", "aiohttp", "curl", "go", "node")
DIRECT: Final = "direct"

__all__ = ["CLIENTS", "ClientRoute", "RouteReport", "render_text", "route"]


@dataclass(frozen=True)
class ClientRoute:
    """One client's answer. `proxy` is redacted (`user:***@`); None means direct."""

    client: str
    proxy: str | None
    ca_file: str | None
    note: str
    predicted: bool  # the library was not importable: its rules were applied instead
    # Set when the client would fail before sending anything (e.g. httpx cannot create a client):
    # `proxy` is then None, and `note` starts with "error:" (after any "predicted" prefix).
    error: str | None = None
    entry: str | None = None  # the NO_PROXY entry that decided "direct" or caused the error

    @property
    def answer(self) -> str:
        """The proxy, "direct", or "error" (the route column of the table)."""
        return "error" if self.error else self.proxy or DIRECT


@dataclass(frozen=True)
class PacView:
    """The profile's PAC file's answer for the URL, shown beside the clients' (see with_pac)."""

    answer: str  # what FindProxyForURL returned, e.g. "PROXY proxy.corp:3128; DIRECT"
    proxy: str | None  # its first entry as a proxy URL (redacted); None: DIRECT
    note: str

    @property
    def route(self) -> str:
        return self.proxy or DIRECT


@dataclass(frozen=True)
class RouteReport:
    url: str
    clients: dict[str, ClientRoute]
    disagreements: list[str]
    pac: PacView | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "url": self.url,
            "clients": {
                name: {"proxy": c.proxy, "ca_file": c.ca_file, "note": c.note}
                for name, c in self.clients.items()
            },
            "disagreements": self.disagreements,
        }
        if self.pac is not None:
            data["pac"] = {
                "answer": self.pac.answer,
                "proxy": self.pac.proxy,
                "note": self.pac.note,
            }
        return data


PAC_ROW = "PAC file"


def with_pac(report: RouteReport, url: str, pac: PacResult | None) -> RouteReport:
    """The report with the PAC's answer for `url` beside the clients', and a disagreement line
    when the clients do not go where the PAC says (environment variables hold one proxy)."""
    from dataclasses import replace

    if pac is None:
        return report
    found = pac.route_for(url)
    if found is None:
        return report
    proxy = redact_url(found.proxy) if found.proxy else None
    note = (
        f'FindProxyForURL returned "{redact_url(found.answer)}", first entry used; '
        f"{pac.describe_source()}"
    )
    lines = list(report.disagreements)
    groups: dict[str, list[str]] = {}
    for name, c in report.clients.items():
        # aiohttp and node ignore the proxy variables by default: their own disagreement lines
        # say so, and they say nothing about what kai-run exported.
        if name in ENV_CLIENTS and not c.error and _endpoint(c.proxy) != _endpoint(proxy):
            groups.setdefault(c.proxy or DIRECT, []).append(name)
    if groups:
        answer, names = max(groups.items(), key=lambda item: len(item[1]))
        verb = "use" if len(names) > 1 else "uses"
        lines.append(
            f"{', '.join(names)} {verb} {answer} but the PAC file says {proxy or DIRECT}: "
            "environment variables hold one proxy and a NO_PROXY list, so kai-run exports the "
            "first check URL's proxy (add this URL to check_urls, or write http_proxy/https_proxy)"
        )
    return replace(report, pac=PacView(found.answer, proxy, note), disagreements=lines)


# The clients that read HTTP(S)_PROXY/NO_PROXY whatever else is set.
ENV_CLIENTS: Final = ("requests", "urllib", "httpx", "httpx2", "curl", "go")


def _endpoint(proxy: str | None) -> str | None:
    """A proxy URL without its credentials: `http://u:***@h:1` and `http://h:1` are one proxy."""
    if proxy is None:
        return None
    scheme, sep, rest = proxy.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{authority.rpartition('@')[2].lower()}{slash}{path}".rstrip("/")


def render_text(report: RouteReport) -> list[str]:
    """Plain lines (no colour, no printing) for a non-terminal or a log."""
    width = max(len(name) for name in report.clients)
    lines = [f"route for {report.url}"]
    if report.pac is not None:
        width = max(width, len(PAC_ROW))
        lines.append(f"  {PAC_ROW:<{width}}  {report.pac.route}  ({report.pac.note})")
    for name, c in report.clients.items():
        ca = c.ca_file or "-"
        lines.append(f"  {name:<{width}}  {c.answer}  CA {ca}  ({c.note})")
    if report.disagreements:
        lines.append("disagreements:")
        lines.extend(f"  - {line}" for line in report.disagreements)
    return lines


# --------------------------------------------------------------------------------------------
# The target URL and the environment


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str  # "http" or "https"
    host: str  # lower case, IPv6 without brackets
    port: int  # the effective port (explicit, else the scheme's default)
    explicit_port: int | None


def _parse_target(url: str) -> _Target:
    from urllib.parse import urlsplit

    hint = "give a full URL, e.g. https://api.openai.com/v1"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise KaiRunError(f"route needs an http:// or https:// URL, not '{url}'", hint=hint)
    if not parts.hostname:
        raise KaiRunError(f"URL '{url}' has no host", hint=hint)
    try:
        explicit = parts.port
    except ValueError as exc:
        raise KaiRunError(f"URL '{url}' has a bad port: {exc}", hint=hint) from None
    default = 443 if scheme == "https" else 80
    return _Target(url, scheme, parts.hostname.lower(), explicit or default, explicit)


_ENVIRON_LOCK = threading.Lock()


@contextlib.contextmanager
def _process_environ(env: Mapping[str, str]) -> Iterator[None]:
    """Make `os.environ` a plain dict holding exactly `env` inside the block, and put the real one
    back in `finally`.

    Why: requests, urllib, httpx, httpx2 and aiohttp read proxy variables from `os.environ` and take
    no environment argument, and `route` must call their own code rather than guess it. Why a plain
    dict instead of clearing and refilling the real mapping: each write of the real one calls
    setenv(), and glibc does not make getenv() safe against a concurrent setenv() (the array can
    be reallocated under the reader), while doctor's probe threads call getaddrinfo() and OpenSSL,
    which read the C environment. A dict has no C side: the libraries see `env` through
    `os.environ`, and the process's C environment is never touched. The swap is one assignment,
    so no thread ever sees a half-cleared environment; Python code in other threads that reads
    `os.environ` during the block does see `env`. The lock serialises `route` with itself.
    """
    with _ENVIRON_LOCK:
        real = os.environ
        os.environ = dict(env)  # type: ignore[assignment]  # noqa: B003 (the point: no C side)
        try:
            yield
        finally:
            os.environ = real  # noqa: B003


def _without_no_proxy(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.lower() != "no_proxy"}


def _with_no_proxy(env: Mapping[str, str], var: str, value: str) -> dict[str, str]:
    out = _without_no_proxy(env)
    out[var] = value
    return out


def _display(raw: str) -> str:
    """How a proxy value is shown: with a scheme (every client here assumes http:// without one)
    and its password hidden."""
    raw = raw.strip()
    return redact_url(raw if "://" in raw else f"http://{raw}")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# --------------------------------------------------------------------------------------------
# Per-client evaluation. An evaluator answers for (target, env) with a _Verdict: the raw proxy
# value, or direct; `why` when direct for a reason other than NO_PROXY or a missing variable;
# `error` when the client would fail before sending anything.


@dataclass(frozen=True)
class _Verdict:
    proxy: str | None
    why: str | None = None
    error: str | None = None
    caveat: str | None = None  # appended to the note: the answer depends on the client's version


Evaluator = Callable[[_Target, Mapping[str, str]], _Verdict]
# The start of the error of a client that fails in its constructor: every request fails then,
# whatever its URL.
_NO_CLIENT: Final = "cannot create a client: "


def _urllib_family_no_proxy(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The NO_PROXY variable urllib's `getproxies_environment` keeps: lower case wins whenever it
    is set, and an empty lower-case value removes the list altogether."""
    if "no_proxy" in env:
        return ("no_proxy", env["no_proxy"]) if env["no_proxy"] else None
    return ("NO_PROXY", env["NO_PROXY"]) if env.get("NO_PROXY") else None


def _proxy_bypass_environment(ur: ModuleType) -> Callable[[str, dict[str, str]], bool]:
    # Public in urllib.request since Python 3.0, but missing from typeshed.
    found: Callable[[str, dict[str, str]], bool] = ur.proxy_bypass_environment
    return found


def _first_set(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        if env.get(name):
            return name, env[name]
    return None


# ---- urllib (always importable: standard library)


def _urllib(t: _Target, env: Mapping[str, str]) -> _Verdict:
    import urllib.request as ur

    # ProxyHandler passes Request.host: with the port when the URL has one, IPv6 in brackets.
    req_host = ur.Request(t.url).host
    with _process_environ(env):
        proxies = ur.getproxies_environment()
        bypass = _proxy_bypass_environment(ur)(req_host, proxies)
    # ProxyHandler installs one opener per scheme key: `all` (ALL_PROXY) is never consulted.
    proxy = proxies.get(t.scheme)
    if proxy and bypass:
        return _Verdict(None)
    return _Verdict(proxy or None)


# ---- requests


def _requests(t: _Target, env: Mapping[str, str]) -> _Verdict:
    import requests.utils as ru

    with _process_environ(env):
        proxies = ru.get_environ_proxies(t.url)
    return _Verdict(ru.select_proxy(t.url, proxies))


def _requests_predicted(t: _Target, env: Mapping[str, str]) -> _Verdict:
    """requests 2.x `should_bypass_proxies` + `select_proxy`, without requests."""
    import urllib.request as ur

    no_proxy = env.get("no_proxy") or env.get("NO_PROXY")
    if no_proxy:
        entries = [e for e in no_proxy.replace(" ", "").split(",") if e]
        if _is_ipv4(t.host):
            for entry in entries:
                if "/" in entry:
                    net, _, bits = entry.partition("/")
                    if bits.isdecimal() and 1 <= int(bits) <= 32 and _is_ipv4(net):
                        if ipaddress.IPv4Address(t.host) in ipaddress.ip_network(
                            entry, strict=False
                        ):
                            return _Verdict(None)
                        continue
                if t.host == entry:
                    return _Verdict(None)
        else:
            with_port = f"{t.host}:{t.explicit_port}" if t.explicit_port else t.host
            for raw in entries:
                entry = raw.lstrip(".")
                if entry in (t.host, with_port):
                    return _Verdict(None)
                if t.host.endswith("." + entry) or with_port.endswith("." + entry):
                    return _Verdict(None)
    with _process_environ(env):
        proxies = ur.getproxies_environment()
        # requests then asks urllib too, with the bare host name.
        if _proxy_bypass_environment(ur)(t.host, proxies):
            return _Verdict(None)
    return _Verdict(proxies.get(t.scheme) or proxies.get("all"))


# ---- httpx and httpx2: the environment becomes mounts {URLPattern: proxy or None}; the most
# specific pattern that matches the URL wins (Client._transport_for_url).


def _httpx_family(package: str) -> Evaluator:
    def evaluate(t: _Target, env: Mapping[str, str]) -> _Verdict:
        mod = importlib.import_module(package)
        utils = importlib.import_module(f"{package}._utils")
        with _process_environ(env):
            mounts: dict[str, str | None] = utils.get_environment_proxies()
        try:
            # What Client.__init__ does with the mounts; it raises on a pattern it cannot parse.
            patterns = sorted(
                ((utils.URLPattern(key), value) for key, value in mounts.items()),
                key=lambda item: item[0],
            )
            for value in mounts.values():
                if value is not None:
                    mod.Proxy(url=value)
        except Exception as exc:  # the client's own error, reported as such
            why = f"{package}.Client() raises {type(exc).__name__}: {exc}"
            return _Verdict(None, error=f"{_NO_CLIENT}{why}")
        url = mod.URL(t.url)
        for pattern, value in patterns:
            if pattern.matches(url):
                return _Verdict(value)
        return _Verdict(None)

    return evaluate


def _httpx_family_predicted(*, cidr: bool) -> Evaluator:
    """httpx 0.28 (`cidr=False`) or httpx2 (`cidr=True`) proxy mounts, without the package.

    httpx 0.28 turns `10.0.0.0/8` into a pattern that only matches the host 10.0.0.0, never sees
    `*.x` as a wildcard, and fails to build a client for `[::1]` or `fd00::/8`; httpx2 honours
    all three.
    """

    def evaluate(t: _Target, env: Mapping[str, str]) -> _Verdict:
        import urllib.request as ur

        with _process_environ(env):
            info = ur.getproxies_environment()
        mounts: dict[str, str | None] = {}
        for scheme in ("http", "https", "all"):
            if info.get(scheme):
                value = info[scheme]
                mounts[f"{scheme}://"] = value if "://" in value else f"http://{value}"
        bypassed = False  # keep scanning: a later "*" or an unparsable entry still counts
        host_ip = _ip(t.host)
        for raw in info.get("no", "").split(","):
            entry = raw.strip()
            if entry == "*":
                return _Verdict(None)
            if not entry:
                continue
            if "://" in entry:
                if entry in mounts or entry.endswith("://"):
                    mounts[entry] = None
                continue
            base = entry.split("/")[0]
            if _ip(base) is not None:
                if "/" in entry and cidr:
                    network = ipaddress.ip_network(entry, strict=False)
                    bypassed |= host_ip is not None and host_ip in network
                elif "/" in entry and ":" in base:
                    return _Verdict(
                        None, error=f"{_NO_CLIENT}httpx.Client() raises InvalidURL ({entry!r})"
                    )
                else:
                    bypassed |= t.host == base.lower()
                continue
            if entry.startswith("["):
                if not cidr:
                    return _Verdict(
                        None, error=f"{_NO_CLIENT}httpx.Client() raises InvalidURL ({entry!r})"
                    )
                bypassed |= t.host == entry.strip("[]").lower()
                continue
            if entry.lower() == "localhost":
                bypassed |= t.host == "localhost"
                continue
            if "/" in entry:
                continue  # httpx2 skips it; httpx 0.28 would build a pattern that matches nothing
            host, _, port = entry.lower().partition(":")
            if cidr and host.startswith("*."):
                host_ok = t.host.endswith(host[1:])
            elif host.startswith("*"):  # httpx 0.28: "**.x" never matches a real host
                host_ok = False
            elif host.startswith("."):
                host_ok = t.host.endswith(host)
            else:
                host_ok = t.host == host or t.host.endswith("." + host)
            bypassed |= host_ok and (not port.isdecimal() or int(port) == t.port)
        if bypassed:
            return _Verdict(None)
        if mounts.get(f"{t.scheme}://") is None and f"{t.scheme}://" in mounts:
            return _Verdict(None)
        return _Verdict(mounts.get(f"{t.scheme}://") or mounts.get("all://"))

    return evaluate


# ---- aiohttp: trust_env=False by default; the trust_env=True answer is computed for the note.


def _aiohttp_trust_env(t: _Target, env: Mapping[str, str]) -> _Verdict:
    helpers = importlib.import_module("aiohttp.helpers")
    yarl = importlib.import_module("yarl")
    import urllib.request as ur

    with _process_environ(env):
        try:
            helpers.get_env_proxy_for_url(yarl.URL(t.url))
        except LookupError:
            return _Verdict(None)
        raw = ur.getproxies_environment().get(t.scheme)
    return _Verdict(raw)


def _aiohttp_trust_env_predicted(t: _Target, env: Mapping[str, str]) -> _Verdict:
    """aiohttp 3.x `get_env_proxy_for_url`: urllib's bypass on the bare host, urllib's proxies,
    and https:// proxies ignored (aiohttp cannot speak TLS to a proxy)."""
    import urllib.request as ur

    with _process_environ(env):
        proxies = ur.getproxies_environment()
        if _proxy_bypass_environment(ur)(t.host, proxies):
            return _Verdict(None)
    raw = proxies.get(t.scheme)
    if raw and raw.lower().startswith("https://"):
        return _Verdict(None, why="aiohttp ignores https:// proxies")
    return _Verdict(raw)


# ---- curl (lib/url.c detect_proxy, lib/noproxy.c Curl_check_noproxy, lib/getenv.c)


def _curl(t: _Target, env: Mapping[str, str]) -> _Verdict:
    # curl_getenv() treats an empty variable as unset. NO_PROXY is checked before any proxy
    # variable is read.
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY")
    caveat = None
    if no_proxy and _curl_noproxy(t.host, no_proxy) != _curl_noproxy(
        t.host, no_proxy, blanks_separate=True
    ):
        caveat = "curl < 8.9 also reads blank-separated NO_PROXY entries and would differ"
    if no_proxy and _curl_noproxy(t.host, no_proxy):
        return _Verdict(None, caveat=caveat)
    names: tuple[str, ...] = (f"{t.scheme}_proxy",)
    if t.scheme != "http":  # HTTP_PROXY is never read: a CGI "Proxy:" header would set it
        names += (f"{t.scheme.upper()}_PROXY",)
    found = _first_set(env, (*names, "all_proxy", "ALL_PROXY"))
    if found:
        return _Verdict(found[1], caveat=caveat)
    if t.scheme == "http" and env.get("HTTP_PROXY"):
        return _Verdict(None, why="curl ignores upper-case HTTP_PROXY (CGI safety)")
    return _Verdict(None)


def _curl_noproxy(host: str, no_proxy: str, *, blanks_separate: bool = False) -> bool:
    """Curl_check_noproxy (curl >= 8.9): `*` only as the whole value; entries split on commas
    (a blank not followed by a comma ends the list; before 8.9 - `blanks_separate` - blanks
    separated entries too, curl/curl#13789); one leading and one trailing dot
    ignored; a name matches itself and its subdomains; IPv4 hosts match only IPv4 entries, with
    CIDR; no port in entries; no `*.x` wildcard."""
    if no_proxy == "*":
        return True
    # curl hands Curl_check_noproxy the IPv6 host without brackets, so the function's IPv6 branch
    # is never taken: IPv6 hosts are compared as names, and IPv6 CIDR entries never match
    # (curl/curl#19828; seen with curl 7.88).
    ip = _ip(host) if _is_ipv4(host) else None
    name = host if ip else host.removesuffix(".")
    pos, size = 0, len(no_proxy)
    while pos < size:
        while pos < size and no_proxy[pos] in " \t":
            pos += 1
        start = pos
        while pos < size and no_proxy[pos] not in " \t,":
            pos += 1
        token = no_proxy[start:pos]
        if token and _curl_token_matches(name, ip, token):
            return True
        while pos < size and no_proxy[pos] in " \t":
            pos += 1
        if pos >= size or (no_proxy[pos] != "," and not blanks_separate):
            break
        while pos < size and no_proxy[pos] == ",":
            pos += 1
    return False


def _curl_token_matches(
    name: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, token: str
) -> bool:
    if ip is None:
        token = token.removesuffix(".")
        token = token[1:] if token.startswith(".") else token
        token, name = token.lower(), name.lower()
        return name == token or (len(token) < len(name) and name.endswith("." + token))
    address, slash, bits_text = token.partition("/")
    digits = re.match(r"\d*", bits_text)
    bits = int(digits.group()) if slash and digits and digits.group() else 0  # C atoi()
    check = _ip(address)
    if check is None or check.version != ip.version:
        return False
    full = 32 if ip.version == 4 else 128
    if bits > full:
        return False
    if bits == 0:
        bits = full
    return ip in ipaddress.ip_network(f"{check}/{bits}", strict=False)


# ---- Go net/http ProxyFromEnvironment (golang.org/x/net/http/httpproxy)


def _go(t: _Target, env: Mapping[str, str]) -> _Verdict:
    # Upper case first; an empty value counts as unset. Go never reads ALL_PROXY.
    names = ("HTTPS_PROXY", "https_proxy") if t.scheme == "https" else ("HTTP_PROXY", "http_proxy")
    found = _first_set(env, names)
    if not found:
        return _Verdict(None)
    proxy = found[1]
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    if t.scheme == "http" and env.get("REQUEST_METHOD"):
        return _Verdict(
            None,
            error="Go refuses HTTP_PROXY when REQUEST_METHOD is set (CGI); the request fails",
        )
    if t.host == "localhost" or ((ip := _ip(t.host)) is not None and ip.is_loopback):
        return _Verdict(None, why="Go never proxies localhost or loopback addresses")
    no_proxy = (_first_set(env, ("NO_PROXY", "no_proxy")) or ("", ""))[1]
    if _go_noproxy(t, no_proxy):
        return _Verdict(None)
    return _Verdict(proxy)


def _go_noproxy(t: _Target, no_proxy: str) -> bool:
    """httpproxy config.init/useProxy: `*` as any entry; CIDR and IP entries (optionally with a
    port) match IP hosts; `x` matches x and its subdomains, `.x` and `*.x` only subdomains;
    `x:port` also needs the port (the URL's, or the scheme's default)."""
    host_ip = _ip(t.host)
    port = str(t.port)
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                pass
            else:
                if host_ip is not None and host_ip in network:
                    return True
                continue
        entry_host, entry_port = _go_split_host_port(entry)
        if entry_host is None:
            continue
        entry_ip = _ip(entry_host)
        if entry_ip is not None:
            if host_ip is not None and entry_ip == host_ip and entry_port in ("", port):
                return True
            continue
        suffix = entry_host[1:] if entry_host.startswith("*.") else entry_host
        match_host = not suffix.startswith(".")
        if match_host:
            suffix = "." + suffix
        if (t.host.endswith(suffix) or (match_host and t.host == suffix[1:])) and entry_port in (
            "",
            port,
        ):
            return True
    return False


def _go_split_host_port(entry: str) -> tuple[str | None, str]:
    """net.SplitHostPort, falling back to the whole entry as a host (as httpproxy does)."""
    if entry.startswith("["):
        end = entry.find("]")
        if end > 0 and entry[end + 1 : end + 2] == ":" and ":" not in entry[end + 2 :]:
            host = entry[1:end]
            return (host or None), entry[end + 2 :]
        return entry, ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return (host or None), port
    return entry, ""


# ---- Node (lib/internal/http.js parseProxyConfigFromEnv / ProxyConfig, Node >= 24.5 / 22.21)


def _node_enabled(env: Mapping[str, str]) -> bool:
    return (
        env.get("NODE_USE_ENV_PROXY") == "1"
        or "--use-env-proxy" in env.get("NODE_OPTIONS", "").split()
    )


def _node_with_env_proxy(t: _Target, env: Mapping[str, str]) -> _Verdict:
    """What node:http/https do once NODE_USE_ENV_PROXY=1: lower case first; only http:// and
    https:// proxies; NO_PROXY entries are exact hosts (or host:port), `.x`/`*.x` suffixes, or
    a.b.c.d-e.f.g.h IPv4 ranges; no CIDR and no subdomain match for a bare name."""
    lower = f"{t.scheme}_proxy"
    proxy = env.get(lower) or env.get(lower.upper())
    if not proxy:
        return _Verdict(None)
    if not proxy.startswith(("http://", "https://")):
        return _Verdict(None, why="Node ignores proxy URLs that are not http:// or https://")
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY")
    if no_proxy and _node_bypass(t, no_proxy):
        return _Verdict(None)
    return _Verdict(proxy)


def _node_bypass(t: _Target, no_proxy: str) -> bool:
    entries = [e.strip().lower() for e in no_proxy.split(",")]
    if "*" in entries:
        return True
    # ClientRequest fills in the scheme's default port before the proxy check.
    with_port = f"{t.host}:{t.port}"
    for entry in entries:
        if entry.startswith(("*.", ".")):
            if t.host.endswith(entry[1:]):  # ".x" keeps "x": it also matches "notx"
                return True
            continue
        start, dash, end = (part.strip() for part in entry.partition("-"))
        if dash and _is_ipv4(start) and _is_ipv4(end):
            if _is_ipv4(t.host) and (
                ipaddress.IPv4Address(start)
                <= ipaddress.IPv4Address(t.host)
                <= ipaddress.IPv4Address(end)
            ):
                return True
            continue
        if entry in (t.host, with_port):
            return True
    return False


# --------------------------------------------------------------------------------------------
# CA files


def _certifi() -> str | None:
    certifi = _optional_module("certifi")
    return str(certifi.where()) if certifi else None


def _ssl_default(env: Mapping[str, str]) -> tuple[str | None, str]:
    """Python's ssl.create_default_context(): OpenSSL reads SSL_CERT_FILE, else its own default."""
    import ssl

    if env.get("SSL_CERT_FILE"):
        return env["SSL_CERT_FILE"], "SSL_CERT_FILE"
    with _process_environ(env):
        paths = ssl.get_default_verify_paths()
    if paths.cafile:
        return paths.cafile, "OpenSSL default"
    if env.get("SSL_CERT_DIR"):
        return env["SSL_CERT_DIR"], "SSL_CERT_DIR (directory)"
    return paths.capath, "OpenSSL default directory"


def _ca_requests(env: Mapping[str, str]) -> tuple[str | None, str]:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if env.get(name):
            return env[name], name
    return _certifi(), "certifi; requests ignores SSL_CERT_FILE"


def _ca_httpx(env: Mapping[str, str]) -> tuple[str | None, str]:
    # httpx 0.28 create_ssl_context(trust_env=True).
    if env.get("SSL_CERT_FILE"):
        return env["SSL_CERT_FILE"], "SSL_CERT_FILE"
    if env.get("SSL_CERT_DIR"):
        return env["SSL_CERT_DIR"], "SSL_CERT_DIR (directory)"
    return _certifi(), "certifi"


def _ca_httpx2(env: Mapping[str, str]) -> tuple[str | None, str]:
    # httpcore2 default_ssl_context: SSL_CERT_FILE, SSL_CERT_DIR, else the system store
    # (OpenSSL's compiled-in paths, then truststore's list of well-known files) - not certifi.
    import platform
    import ssl

    if env.get("SSL_CERT_FILE"):
        return env["SSL_CERT_FILE"], "SSL_CERT_FILE"
    if env.get("SSL_CERT_DIR"):
        return env["SSL_CERT_DIR"], "SSL_CERT_DIR (directory)"
    if platform.system() in ("Windows", "Darwin"):
        return None, "system trust store (truststore)"
    paths = ssl.get_default_verify_paths()
    if os.path.isfile(paths.openssl_cafile):
        return paths.openssl_cafile, "system store"
    ssl_mod = _optional_module("httpcore2._ssl")
    candidates = getattr(ssl_mod, "CA_FILE_CANDIDATES", None) or [
        "/etc/ssl/cert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/pki/tls/cert.pem",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/ca-bundle.pem",
    ]
    found = next((str(f) for f in candidates if os.path.isfile(f)), None)
    return found, "system store"


def _ca_curl(env: Mapping[str, str]) -> tuple[str | None, str]:
    # src/tool_operate.c cacertpaths(): CURL_CA_BUNDLE, else SSL_CERT_DIR and SSL_CERT_FILE.
    if env.get("CURL_CA_BUNDLE"):
        return env["CURL_CA_BUNDLE"], "CURL_CA_BUNDLE"
    if env.get("SSL_CERT_FILE"):
        return env["SSL_CERT_FILE"], "SSL_CERT_FILE"
    if env.get("SSL_CERT_DIR"):
        return env["SSL_CERT_DIR"], "SSL_CERT_DIR (directory)"
    return None, "curl's built-in default"


_GO_CA_FILES: Final = (  # crypto/x509 root_linux.go
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
)


def _ca_go(env: Mapping[str, str]) -> tuple[str | None, str]:
    if env.get("SSL_CERT_FILE"):
        return env["SSL_CERT_FILE"], "SSL_CERT_FILE"
    found = next((f for f in _GO_CA_FILES if os.path.isfile(f)), None)
    if found:
        return found, "Go's system file list"
    if env.get("SSL_CERT_DIR"):
        return env["SSL_CERT_DIR"], "SSL_CERT_DIR (directory)"
    return None, "no system CA file found"


def _ca_node(env: Mapping[str, str]) -> tuple[str | None, str]:
    options = env.get("NODE_OPTIONS", "").split()
    if "--use-openssl-ca" in options:
        return env.get("SSL_CERT_FILE") or None, "OpenSSL store (--use-openssl-ca)"
    system = env.get("NODE_USE_SYSTEM_CA") == "1" or "--use-system-ca" in options
    base = "system store" if system else "Node's bundled roots"
    if env.get("NODE_EXTRA_CA_CERTS"):
        return env["NODE_EXTRA_CA_CERTS"], f"{base} + NODE_EXTRA_CA_CERTS"
    return None, base


# --------------------------------------------------------------------------------------------
# The table: one row per client, in report order.


@dataclass(frozen=True)
class _Client:
    name: str
    library: str | None  # the package that must import for `evaluate` (None: nothing to import)
    evaluate: Evaluator
    predicted: Evaluator | None  # used when `library` is missing
    proxy_vars: Callable[[str], tuple[str, ...]]  # variables read for a scheme, in precedence
    no_proxy_read: Callable[[Mapping[str, str]], tuple[str, str] | None]
    ca: Callable[[Mapping[str, str]], tuple[str | None, str]]
    # For clients that may ignore proxy variables altogether: why they do under `env` (None when
    # they do not), and what turns them on. `evaluate` then answers as if they were on.
    off_by_default: Callable[[Mapping[str, str]], str | None] | None = None
    enable: str = ""


def _lower_then_upper(scheme: str, *, all_proxy: bool) -> tuple[str, ...]:
    names = (f"{scheme}_proxy", f"{scheme.upper()}_PROXY")
    return (*names, "all_proxy", "ALL_PROXY") if all_proxy else names


def _requests_no_proxy(env: Mapping[str, str]) -> tuple[str, str] | None:
    return _first_set(env, ("no_proxy", "NO_PROXY"))


_TABLE: Final = (
    _Client(
        "requests",
        "requests",
        _requests,
        _requests_predicted,
        lambda s: _lower_then_upper(s, all_proxy=True),
        _requests_no_proxy,
        _ca_requests,
    ),
    _Client(
        "urllib",
        None,
        _urllib,
        None,
        lambda s: _lower_then_upper(s, all_proxy=False),
        _urllib_family_no_proxy,
        _ssl_default,
    ),
    _Client(
        "httpx",
        "httpx",
        _httpx_family("httpx"),
        _httpx_family_predicted(cidr=False),
        lambda s: _lower_then_upper(s, all_proxy=True),
        _urllib_family_no_proxy,
        _ca_httpx,
    ),
    _Client(
        "httpx2",
        "httpx2",
        _httpx_family("httpx2"),
        _httpx_family_predicted(cidr=True),
        lambda s: _lower_then_upper(s, all_proxy=True),
        _urllib_family_no_proxy,
        _ca_httpx2,
    ),
    _Client(
        "aiohttp",
        "aiohttp",
        _aiohttp_trust_env,
        _aiohttp_trust_env_predicted,
        lambda s: _lower_then_upper(s, all_proxy=False),
        _urllib_family_no_proxy,
        _ssl_default,
        off_by_default=lambda env: "trust_env=False by default",
        enable="trust_env=True",
    ),
    _Client(
        "curl",
        None,
        _curl,
        None,
        lambda s: (
            ("http_proxy", "all_proxy", "ALL_PROXY")
            if s == "http"
            else _lower_then_upper(s, all_proxy=True)
        ),
        _requests_no_proxy,
        _ca_curl,
    ),
    _Client(
        "go",
        None,
        _go,
        None,
        lambda s: (f"{s.upper()}_PROXY", f"{s}_proxy"),
        lambda env: _first_set(env, ("NO_PROXY", "no_proxy")),
        _ca_go,
    ),
    _Client(
        "node",
        None,
        _node_with_env_proxy,
        None,
        lambda s: _lower_then_upper(s, all_proxy=False),
        _requests_no_proxy,
        _ca_node,
        off_by_default=lambda env: (
            None
            if _node_enabled(env)
            else "NODE_USE_ENV_PROXY is not set: Node ignores proxy variables"
        ),
        enable="NODE_USE_ENV_PROXY=1",
    ),
)


# --------------------------------------------------------------------------------------------
# Resolving one client, with the reason


@dataclass(frozen=True)
class _Resolution:
    client: str
    proxy: str | None  # display form
    proxy_var: str | None
    entry: str | None  # the NO_PROXY entry that decided "direct" (or caused the error)
    no_proxy: tuple[str, str] | None  # (variable, value) this client reads
    why: str | None
    error: str | None
    predicted: bool
    ca_file: str | None
    ca_source: str
    note: str

    @property
    def answer(self) -> str:
        if self.error:
            return "error"
        return self.proxy or DIRECT


def _entries(value: str) -> list[str]:
    return [e for e in re.split(r"[,\s]+", value) if e]


def _resolve(client: _Client, t: _Target, env: Mapping[str, str]) -> _Resolution:
    predicted = client.library is not None and _optional_module(client.library) is None
    evaluate = client.predicted if predicted and client.predicted else client.evaluate
    verdict = evaluate(t, env)
    no_proxy = client.no_proxy_read(env)
    entry: str | None = None
    proxy_var: str | None = None
    if verdict.proxy:
        shown = _display(verdict.proxy)
        proxy_var = next(
            (n for n in client.proxy_vars(t.scheme) if env.get(n) and _display(env[n]) == shown),
            None,
        )
    elif no_proxy and (verdict.error or not verdict.why):
        entry = _deciding_entry(evaluate, t, env, no_proxy, want_error=bool(verdict.error))

    proxy = _display(verdict.proxy) if verdict.proxy else None
    why, error = verdict.why, verdict.error
    if (
        not (proxy or why or error or entry)
        and t.scheme == "http"
        and env.get("REQUEST_METHOD")
        and env.get("HTTP_PROXY")
        and not env.get("http_proxy")
        and "HTTP_PROXY" in client.proxy_vars("http")
    ):
        # urllib's getproxies_environment drops HTTP_PROXY for CGI scripts (CVE-2016-1000110).
        why = "REQUEST_METHOD is set (CGI), so HTTP_PROXY is ignored"
    if verdict.error and entry:
        error = f"{error} (from {_describe(entry)} in {no_proxy[0] if no_proxy else 'NO_PROXY'})"
    reason = _reason(proxy, proxy_var, entry, no_proxy, why, error, t)

    off = client.off_by_default(env) if client.off_by_default else None
    if off:
        would = f"use {proxy}" if proxy else f"go direct ({reason.removeprefix('direct: ')})"
        reason = f"{off}; with {client.enable} it would {would}"
        proxy, why, error, entry = None, off, None, None

    ca_file, ca_source = client.ca(env)
    note = f"{reason}; CA: {ca_source}"
    if verdict.caveat and not off:
        note = f"{note}; {verdict.caveat}"
    if predicted:
        note = f"predicted ({client.library} not installed): {note}"
    return _Resolution(
        client.name,
        proxy,
        proxy_var,
        entry,
        no_proxy,
        why,
        error,
        predicted,
        ca_file,
        ca_source,
        note,
    )


def _deciding_entry(
    evaluate: Evaluator,
    t: _Target,
    env: Mapping[str, str],
    no_proxy: tuple[str, str],
    *,
    want_error: bool,
) -> str | None:
    """The first NO_PROXY entry that alone makes the client go direct (or fail)."""
    var, value = no_proxy
    without = evaluate(t, _without_no_proxy(env))
    if want_error and without.error:
        return None  # fails even without NO_PROXY (e.g. a proxy scheme it cannot use)
    if not want_error and not without.proxy:
        return None  # direct even without NO_PROXY: NO_PROXY did not decide
    for entry in _entries(value):
        alone = evaluate(t, _with_no_proxy(env, var, entry))
        if (alone.error is not None) if want_error else (not alone.proxy and not alone.error):
            return entry
    return None


def _reason(
    proxy: str | None,
    proxy_var: str | None,
    entry: str | None,
    no_proxy: tuple[str, str] | None,
    why: str | None,
    error: str | None,
    t: _Target,
) -> str:
    if error:
        return f"error: {error}"
    if proxy:
        return f"via {proxy_var}" if proxy_var else "via the environment"
    if why:
        return f"direct: {why}"
    if entry and no_proxy:
        return f"direct: {_describe(entry)} in {no_proxy[0]} matches"
    return f"direct: no proxy variable it reads for {t.scheme}"


def _describe(entry: str) -> str:
    """'CIDR entry 10.0.0.0/8', 'wildcard entry *.x', ... : the kind is usually the cause."""
    if entry == "*":
        return "entry '*'"
    if "/" in entry:
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            pass
        else:
            return f"CIDR entry {entry}"
    if entry.startswith("*."):
        return f"wildcard entry {entry}"
    if entry.startswith("."):
        return f"leading-dot entry {entry}"
    if entry.startswith("["):
        return f"bracketed IPv6 entry {entry}"
    if _ip(entry) is not None:
        return f"IP entry {entry}"
    host, colon, port = entry.rpartition(":")
    if colon and port.isdecimal() and host and ":" not in host:
        return f"entry with port {entry}"
    return f"entry {entry}"


# --------------------------------------------------------------------------------------------
# Disagreements


def _names(group: list[_Resolution]) -> str:
    return ", ".join(r.client for r in group)


def _verb(answer: str, plural: bool) -> str:
    if answer == "error":
        return "fail" if plural else "fails"
    if answer == DIRECT:
        return "go direct" if plural else "goes direct"
    return f"use {answer}" if plural else f"uses {answer}"


_WHO: Final = "\x00who\x00"  # replaced by the group's names once clients are grouped by cause


def _cause(c: _Resolution, ref: list[_Resolution], env: Mapping[str, str]) -> str:
    first = ref[0]
    if c.error:
        return c.error
    if first.error:
        return f"{_names(ref)}: {first.error}"
    value = c.no_proxy[1] if c.no_proxy else None
    reads = [r for r in ref if (r.no_proxy[1] if r.no_proxy else None) != value]
    if (c.entry or any(r.entry for r in ref)) and reads:
        if c.no_proxy is None and env.get("no_proxy") == "" and env.get("NO_PROXY"):
            return f"no_proxy is set but empty, which hides NO_PROXY from {_WHO}"
        return (
            f"{_show_read(c.no_proxy)} read by {_WHO}, "
            f"{_show_read(reads[0].no_proxy)} by {_names(reads)}"
        )
    if c.answer == DIRECT:
        if c.why:
            return c.why
        if c.entry and c.no_proxy:
            return f"{_describe(c.entry)} in {c.no_proxy[0]}, honoured by {_WHO}"
        var = next((r.proxy_var for r in ref if r.proxy_var), None)
        return _unread(var, _WHO, env)
    if first.answer == DIRECT:
        decided = next((r for r in ref if r.entry), None)
        if decided and decided.no_proxy and decided.entry:
            return f"{_describe(decided.entry)} in {decided.no_proxy[0]}, not honoured by {_WHO}"
        # Clients that went direct for no special reason simply did not use the variable.
        plain = [r for r in ref if not r.why]
        if plain:
            return _unread(c.proxy_var, _names(plain), env)
        return f"{first.client}: {first.why}"
    return f"{c.proxy_var} read by {_WHO}, {first.proxy_var} by {_names(ref)}"


def _unread(var: str | None, who: str, env: Mapping[str, str]) -> str:
    if var is None:
        return f"the proxy variable is not read by {who}"
    lower = var.lower()
    if var != lower and env.get(lower) == "":
        return f"{lower} is set but empty, which hides {var} from {who}"
    return f"{var} is not read by {who}"


def _show_read(read: tuple[str, str] | None) -> str:
    return f"{read[0]}={read[1]!r}" if read else "no NO_PROXY"


def _proxy_line(
    c: _Resolution, ref: list[_Resolution], env: Mapping[str, str]
) -> tuple[Callable[[bool], str], str]:
    def head(plural: bool) -> str:
        return _verb(c.answer, plural)

    tail = f"but {_names(ref)} {_verb(ref[0].answer, len(ref) > 1)} ({_cause(c, ref, env)})"
    return head, tail


def _ca_line(
    c: _Resolution, ref: list[_Resolution], env: Mapping[str, str]
) -> tuple[Callable[[bool], str], str]:
    def head(plural: bool) -> str:
        return f"trust{'' if plural else 's'} {_show_ca(c)}"

    trusts = "trust" if len(ref) > 1 else "trusts"
    return head, f"but {_names(ref)} {trusts} {_show_ca(ref[0])}"


def _show_ca(r: _Resolution) -> str:
    return f"{r.ca_file} ({r.ca_source})" if r.ca_file else r.ca_source


def _ca_key(r: _Resolution) -> str:
    return os.path.realpath(r.ca_file) if r.ca_file else f"<{r.ca_source}>"


_LineMaker = Callable[
    [_Resolution, list[_Resolution], Mapping[str, str]], tuple[Callable[[bool], str], str]
]


def _disagreements(results: list[_Resolution], env: Mapping[str, str]) -> list[str]:
    """One line per distinct (answer, cause) that differs from the most common answer."""
    makers: tuple[tuple[Callable[[_Resolution], str], _LineMaker], ...] = (
        (lambda r: r.answer, _proxy_line),
        (_ca_key, _ca_line),
    )
    lines = []
    for key, make in makers:
        groups: dict[str, list[_Resolution]] = {}
        for r in results:
            groups.setdefault(key(r), []).append(r)
        if len(groups) < 2:
            continue
        # The reference is the most common answer; on a tie, the earliest client's.
        ref_key = max(groups, key=lambda k: (len(groups[k]), -results.index(groups[k][0])))
        ref = groups[ref_key]
        by_line: dict[tuple[str, str], tuple[Callable[[bool], str], list[_Resolution]]] = {}
        for r in results:
            if key(r) == ref_key:
                continue
            head, tail = make(r, ref, env)
            entry = by_line.setdefault((head(False), tail), (head, []))
            entry[1].append(r)
        for (_, tail), (head, members) in by_line.items():
            names = _names(members)
            lines.append(f"{names} {head(len(members) > 1)} {tail.replace(_WHO, names)}")
    return lines


# --------------------------------------------------------------------------------------------


def route(url: str, env: Mapping[str, str]) -> RouteReport:
    """Where each client would send a request for `url` given `env`, the complete environment the
    child would get. Proxy credentials are redacted in every answer."""
    target = _parse_target(url)
    env = dict(env)
    # Import the libraries under the real environment first: some read it at import time
    # (aiohttp builds its default SSL context then), and that must not see a swapped one.
    for client in _TABLE:
        if client.library:
            _optional_module(client.library)
    results = [_resolve(client, target, env) for client in _TABLE]
    return RouteReport(
        url=redact_url(url),  # the target's own credentials are never shown either
        clients={
            r.client: ClientRoute(
                r.client, r.proxy, r.ca_file, r.note, r.predicted, r.error, r.entry
            )
            for r in results
        },
        disagreements=_disagreements(results, env),
    )
