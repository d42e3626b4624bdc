"""PAC files (`pac_url`): fetch, cache, evaluate, and reduce to what environment variables can say.

A PAC file is JavaScript whose `FindProxyForURL(url, host)` answers, per URL, a list such as
`PROXY proxy.corp:3128; DIRECT`. Environment variables say much less: one proxy per scheme and a
NO_PROXY list. So kai-run evaluates the PAC for the profile's `check_urls` (plus the `--url`s of
doctor and route), keeps the FIRST entry of each answer (failover lists are lost), and reduces:
- the proxy the non-DIRECT answers name becomes http_proxy and https_proxy; when they name
  several, the first check URL's proxy is used and a warning lists each URL's route;
- the hosts of the targets the PAC sends DIRECT are added to NO_PROXY.
Proxies written in the profile (http_proxy, https_proxy, all_proxy) win over the PAC's.

The PAC is fetched DIRECT (never through a proxy: it is what says which proxy to use), verified
against certifi's roots plus the profile's ca_bundle, and cached in the user cache dir (`pac/`):
its text, URL and fetch time, and the answers per (content hash, URL). The exec path with a warm
cache therefore imports neither pypac (nor its JavaScript engine, dukpy) nor requests, and sends
nothing over the network. A cached PAC is reused for MAX_AGE; a `file:` PAC is re-read as soon as
its size or mtime changes. Answers can depend on DNS (dnsResolve, isInNet, myIpAddress), so they
are kept only as long as the PAC copy they came from: refetching (MAX_AGE, `--refresh-pac`)
re-evaluates them. When a refetch fails and a copy exists, that copy is used with a warning.

The JavaScript runs in a child Python process (`python -m kai_launch.pac`, see `evaluate`) that is
killed after a timeout: dukpy holds the GIL and cannot be interrupted, so a PAC that loops would
otherwise hang kai-run.
"""

from __future__ import annotations

import os
import time

from kai_launch import paths
from kai_launch.errors import ConfigError, KaiRunError
from kai_launch.proxyurl import redact_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from kai_launch.checks import Check
    from kai_launch.profiles import Profile

MAX_AGE = 12 * 3600.0  # seconds a fetched PAC (and its answers) is reused without refetching
RETRY_AFTER = 600.0  # after a failed refetch, the stale copy is used this long without trying
FETCH_TIMEOUT = 10.0  # seconds for connecting, and for each read, when fetching a PAC over http(s)
EVAL_MIN_TIMEOUT = 5.0  # seconds for the child that evaluates the PAC (it imports pypac first)
MAX_SIZE = 1 << 20  # a PAC file is a few KiB; anything past 1 MiB is not one
_CACHE_VERSION = 1
_KEYWORDS = {
    "PROXY": "http",
    "HTTP": "http",
    "HTTPS": "https",
    "SOCKS": "socks5",
    "SOCKS5": "socks5",
    "SOCKS4": "socks4",
}


class PacError(KaiRunError):
    """A PAC file could not be fetched, read, parsed or evaluated."""


class PacLocation:
    """Where the PAC is: an http(s) URL or an absolute file path, and how to name it to humans."""

    __slots__ = ("kind", "location", "shown", "where")

    def __init__(self, kind: str, location: str, where: str) -> None:
        self.kind = kind  # "http" (http:// and https://) or "file"
        self.location = location
        self.shown = redact_url(location) if kind == "http" else location
        self.where = where


class PacRoute:
    """The PAC's answer for one target URL."""

    __slots__ = ("answer", "entry", "host", "proxy", "url")

    def __init__(self, url: str, host: str, answer: str, entry: str, proxy: str | None) -> None:
        self.url = url
        self.host = host
        self.answer = answer  # what FindProxyForURL returned, verbatim
        self.entry = entry  # its first entry, e.g. "PROXY proxy.corp:3128" or "DIRECT"
        self.proxy = proxy  # that entry as a proxy URL; None for DIRECT

    def shown(self) -> str:
        """`PROXY h:p` or `DIRECT`, credentials redacted, with what kai-run makes of it."""
        if self.proxy is None:
            return "DIRECT"
        keyword = self.entry.split(None, 1)[0].upper()
        return f"{keyword} {redact_url(self.proxy).split('://', 1)[1]}"


class PacResult:
    """What the PAC says for the evaluated URLs, and what kai-run exports from it."""

    __slots__ = (
        "age",
        "direct_hosts",
        "eval_ms",
        "evaluated",
        "fetch_ms",
        "how",
        "proxy",
        "routes",
        "source",
        "warnings",
    )

    def __init__(self, source: PacLocation) -> None:
        self.source = source
        self.routes: list[PacRoute] = []
        self.proxy: str | None = None  # exported as http_proxy/https_proxy (unless written)
        self.direct_hosts: list[str] = []  # added to NO_PROXY
        self.warnings: list[str] = []
        self.how = "fetched"  # fetched, read (a file: PAC), cached, stale (cached, refetch failed)
        self.age = 0.0  # seconds since the PAC copy in use was fetched or read
        self.fetch_ms = 0.0
        self.eval_ms = 0.0
        self.evaluated = 0  # URLs pypac evaluated in this run (the others' answers were cached)

    def route_for(self, url: str) -> PacRoute | None:
        return next((r for r in self.routes if r.url == url), None)

    def describe_source(self) -> str:
        """`fetched http://...`, `from the cache (fetched 2 h ago)`..., for doctor and route."""
        if self.how == "fetched":
            return f"fetched {self.source.shown} in {self.fetch_ms:.0f} ms"
        if self.how == "read":
            return f"read {self.source.shown}"
        if self.how == "stale":
            return f"stale cached copy of {self.source.shown} (fetched {human_age(self.age)} ago)"
        return f"cached copy of {self.source.shown} (fetched {human_age(self.age)} ago)"


def human_age(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# --------------------------------------------------------------------------------------------
# The profile's PAC and its targets


def locate(profile: Profile, environ: Mapping[str, str]) -> PacLocation:
    """The PAC of a profile that has `pac_url`, with ${VAR}, `~` and relative paths resolved."""
    from kai_launch.expand import expand_path, expand_vars

    assert profile.pac_url is not None
    where = f"{profile.origins.get('pac_url', profile.path)}, key 'pac_url'"
    raw = expand_vars(profile.pac_url, environ, where)
    lower = raw.lower()
    if lower.startswith(("http://", "https://")):
        return PacLocation("http", raw, where)
    if not lower.startswith("file:"):
        raise ConfigError(
            f"PAC URL '{raw}' is not an http://, https:// or file: URL",
            where,
            'write e.g. "http://wpad.corp.example/proxy.pac" or "file:proxy.pac"',
        )
    rest = raw[5:]
    if rest.startswith("//"):
        # file://host/path: only an empty host or localhost name this machine.
        host, _, tail = rest[2:].partition("/")
        if host and host.lower() != "localhost":
            raise ConfigError(
                f"PAC URL '{raw}' names another host ({host})",
                where,
                'write file:///absolute/path.pac, or "file:relative.pac"',
            )
        rest = "/" + tail
    from urllib.parse import unquote

    rest = unquote(rest)
    if os.name == "nt" and rest[:1] == "/" and rest[2:3] == ":":
        rest = rest[1:]  # file:///C:/proxy.pac
    path = expand_path(rest, profile.pac_base_dir or os.getcwd(), environ, where)
    return PacLocation("file", path, where)


def target_urls(profile: Profile, extra: Iterable[str] = ()) -> list[str]:
    """check_urls, then the --urls not among them: the first check URL decides a disagreement."""
    urls = list(dict.fromkeys([*profile.check_urls, *extra]))
    if not urls:
        raise ConfigError(
            "pac_url needs URLs to evaluate the PAC file for, and the profile has no check_urls",
            f"{profile.origins.get('pac_url', profile.path)}, key 'pac_url'",
            'add check_urls = ["https://api.openai.com/v1/models", ...] (the endpoints the '
            "command talks to): kai-run exports the proxy the PAC file gives them",
        )
    return urls


def offline_problems(profile: Profile, environ: Mapping[str, str]) -> list[KaiRunError]:
    """What `config check` can say about pac_url without the network: a `file:` PAC that does
    not exist, no URLs to evaluate it for."""
    problems: list[KaiRunError] = []
    try:
        loc = locate(profile, environ)
        if loc.kind == "file":
            _stat(loc)
    except KaiRunError as e:
        problems.append(e)
    try:
        target_urls(profile)
    except KaiRunError as e:
        problems.append(e)
    return problems


def for_profile(
    profile: Profile,
    environ: Mapping[str, str],
    urls: Iterable[str] = (),
    *,
    refresh: bool = False,
    timeout: float = FETCH_TIMEOUT,
    fetch: bool = False,
) -> PacResult | None:
    """Evaluate the profile's PAC for check_urls + `urls`; None when it has no pac_url.

    refresh: fetch and evaluate anew (--refresh-pac); fetch: fetch even when the cached copy is
    fresh, keeping the cached answers when the PAC did not change (doctor)."""
    if profile.pac_url is None:
        return None
    loc = locate(profile, environ)
    # A launch evaluates check_urls only, so doctor and route need them too: their --urls are
    # evaluated for display (route_for), but the exported proxy and NO_PROXY stay the launch's.
    exported = target_urls(profile)
    targets = list(dict.fromkeys([*exported, *urls]))
    result = PacResult(loc)
    record = _load(
        loc,
        profile,
        environ,
        result,
        refresh=refresh or fetch,
        timeout=timeout,
        refresh_answers=refresh,
    )
    start = time.monotonic()
    answers, result.evaluated = _answers(record, loc, targets, timeout)
    result.eval_ms = (time.monotonic() - start) * 1000
    for url in targets:
        result.routes.append(_route(url, answers[url], loc))
    _reduce(result, profile, [r for r in result.routes if r.url in exported])
    return result


# --------------------------------------------------------------------------------------------
# Reducing the answers to one proxy and NO_PROXY


def parse_entry(entry: str) -> str | None:
    """One PAC entry as a proxy URL: `PROXY h:p` -> http://h:p, `DIRECT` -> None.

    Raises ValueError for anything else.
    """
    words = entry.split()
    if len(words) == 1 and words[0].upper() == "DIRECT":
        return None
    if len(words) != 2 or words[0].upper() not in _KEYWORDS:
        raise ValueError(entry)
    hostport = words[1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdecimal() or "/" in hostport:
        raise ValueError(entry)
    return f"{_KEYWORDS[words[0].upper()]}://{hostport}"


def _route(url: str, answer: str, loc: PacLocation) -> PacRoute:
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    first = next((e.strip() for e in answer.split(";") if e.strip()), "")
    if not first:
        # Browsers read an empty answer as DIRECT.
        return PacRoute(url, host, answer, "DIRECT", None)
    try:
        proxy = parse_entry(first)
    except ValueError:
        raise PacError(
            f"the PAC file answered '{first}' for {redact_url(url)}, which is not a route",
            f"{loc.shown}, {loc.where}",
            'FindProxyForURL must return entries like "PROXY host:port", "SOCKS5 host:port" '
            'or "DIRECT", separated by ";"',
        ) from None
    return PacRoute(url, host, answer, first.upper() if proxy is None else first, proxy)


def _reduce(result: PacResult, profile: Profile, routes: list[PacRoute]) -> None:
    proxied = [r for r in routes if r.proxy is not None]
    if proxied:
        result.proxy = proxied[0].proxy
    proxied_hosts = {r.host for r in proxied}
    for r in routes:
        if r.proxy is not None or not r.host or r.host in result.direct_hosts:
            continue
        # NO_PROXY `x` also matches every subdomain of x: adding it must not pull a target the
        # PAC proxies into the direct set.
        clash = sorted(h for h in proxied_hosts if h == r.host or h.endswith("." + r.host))
        if clash:
            result.warnings.append(
                f"the PAC file {result.source.shown} sends {redact_url(r.url)} DIRECT but proxies "
                f"{', '.join(clash)}; NO_PROXY cannot tell them apart, so {r.host} is not added "
                "to NO_PROXY and goes through the proxy"
            )
            continue
        result.direct_hosts.append(r.host)
    if len({r.proxy for r in routes if r.proxy is not None}) > 1:
        listing = "; ".join(f"{redact_url(r.url)} -> {r.shown()}" for r in routes)
        chosen = redact_url(result.proxy or "")
        first = f"{chosen} (the proxy of the first check URL that gets one)"
        https_use = (
            f"the profile's https_proxy {redact_url(profile.https_proxy)}"
            if profile.https_proxy is not None
            else first
        )
        http_use = (
            f"the profile's http_proxy {redact_url(profile.http_proxy)}"
            if profile.http_proxy is not None
            else first
        )
        if https_use == http_use:
            use = f"every URL not in NO_PROXY uses {first}"
        else:
            use = f"https:// URLs use {https_use}, http:// URLs use {http_use}"
        result.warnings.append(
            f"the PAC file {result.source.shown} gives the check URLs different proxies "
            f"({listing}); environment variables hold one proxy, so {use}"
        )
    pac_would_apply = profile.http_proxy is None or profile.https_proxy is None
    if profile.all_proxy is not None and result.proxy is not None and pac_would_apply:
        result.warnings.append(
            f"note: all_proxy is written in profile '{profile.name}': it wins over the PAC "
            f"file's proxy {redact_url(result.proxy)}, which is not exported"
        )


# --------------------------------------------------------------------------------------------
# Cache and fetch


def cache_dir() -> str:
    return os.path.join(paths.user_cache_dir(), "pac")


def _cache_file(loc: PacLocation) -> str:
    import hashlib

    key = hashlib.sha256(f"{loc.kind}\n{loc.location}".encode()).hexdigest()[:32]
    return os.path.join(cache_dir(), key + ".json")


def _read_record(loc: PacLocation) -> dict[str, object] | None:
    import json

    try:
        with open(_cache_file(loc), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(data, dict)
        and data.get("version") == _CACHE_VERSION
        and data.get("location") == loc.location
        and isinstance(data.get("text"), str)
        and isinstance(data.get("fetched_at"), (int, float))
        and isinstance(data.get("answers"), dict)
    )
    return data if ok else None


def _write_record(loc: PacLocation, record: dict[str, object]) -> None:
    """Atomically (temp file, fsync, rename), 0600 in a 0700 dir. A cache that cannot be written
    costs speed, not correctness: failures are ignored."""
    import json

    from kai_launch.cachefile import write_quietly

    write_quietly(_cache_file(loc), json.dumps(record).encode("utf-8"))


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _new_record(loc: PacLocation, text: str, stat: os.stat_result | None) -> dict[str, object]:
    return {
        "version": _CACHE_VERSION,
        "location": loc.location,
        "kind": loc.kind,
        "fetched_at": time.time(),
        "sha256": _digest(text),
        "mtime_ns": stat.st_mtime_ns if stat else None,
        "size": stat.st_size if stat else None,
        "text": text,
        "answers": {},
    }


def _load(
    loc: PacLocation,
    profile: Profile,
    environ: Mapping[str, str],
    result: PacResult,
    *,
    refresh: bool,
    timeout: float,
    refresh_answers: bool = True,
) -> dict[str, object]:
    """The PAC record to evaluate: the cached one while fresh, else a new fetch (or read)."""
    cached = _read_record(loc)
    now = time.time()
    if loc.kind == "file":
        stat = _stat(loc)
        if (
            cached is not None
            and not refresh
            and cached.get("mtime_ns") == stat.st_mtime_ns
            and cached.get("size") == stat.st_size
            and 0 <= now - _fetched_at(cached) < MAX_AGE
        ):
            result.how, result.age = "cached", now - _fetched_at(cached)
            return cached
        start = time.monotonic()
        record = _new_record(loc, _read_file(loc), stat)
        result.how, result.fetch_ms = "read", (time.monotonic() - start) * 1000
        _write_record(loc, record)
        return record
    if cached is not None and not refresh:
        age = now - _fetched_at(cached)
        if 0 <= age < MAX_AGE:
            result.how, result.age = "cached", age
            return cached
        retry_after = cached.get("retry_after")
        if isinstance(retry_after, (int, float)) and now < retry_after <= now + RETRY_AFTER:
            # The last refetch failed moments ago (off the VPN, say): don't make every run
            # wait for the same timeout again.
            result.how, result.age = "stale", age
            result.warnings.append(
                f"the PAC file {loc.shown} could not be fetched lately; using the copy cached "
                f"{human_age(age)} ago (next try in {human_age(retry_after - now)}, or now "
                "with --refresh-pac)"
            )
            return cached
    start = time.monotonic()
    try:
        text = fetch(loc, _ca_files(profile, environ), timeout, profile.ca_mode)
    except PacError as e:
        if cached is None:
            raise
        age = now - _fetched_at(cached)
        result.how, result.age = "stale", age
        result.warnings.append(f"{e.what}; using the copy cached {human_age(age)} ago")
        cached["retry_after"] = now + RETRY_AFTER  # kept if the answers are written back
        _write_record(loc, cached)
        return cached
    result.how, result.fetch_ms = "fetched", (time.monotonic() - start) * 1000
    record = _new_record(loc, text, None)
    # The same PAC again: its answers still hold (--refresh-pac re-evaluates anyway, since it
    # is also for answers that depend on DNS; doctor's always-fetch does not need to).
    same = cached is not None and cached.get("sha256") == record["sha256"]
    if same and not refresh_answers:
        assert cached is not None
        record["answers"] = cached.get("answers", {})
        record["answers_for"] = cached.get("answers_for")
    _write_record(loc, record)
    return record


def _fetched_at(record: dict[str, object]) -> float:
    value = record["fetched_at"]
    assert isinstance(value, (int, float))  # checked by _read_record
    return float(value)


def _stat(loc: PacLocation) -> os.stat_result:
    try:
        return os.stat(loc.location)
    except FileNotFoundError:
        raise PacError(
            f"PAC file {loc.location} does not exist",
            loc.where,
            "fix the path in pac_url (a relative file: path is relative to the profile's file)",
        ) from None
    except OSError as e:
        raise PacError(f"cannot read PAC file {loc.location}: {e.strerror}", loc.where) from None


def _read_file(loc: PacLocation) -> str:
    try:
        with open(loc.location, "rb") as f:
            data = f.read(MAX_SIZE + 1)
    except IsADirectoryError:
        raise PacError(
            f"PAC file {loc.location} is a directory", loc.where, "name the .pac file itself"
        ) from None
    except OSError as e:
        raise PacError(f"cannot read PAC file {loc.location}: {e.strerror}", loc.where) from None
    return _decode(data, loc)


def _decode(data: bytes, loc: PacLocation) -> str:
    if len(data) > MAX_SIZE:
        raise PacError(
            f"the PAC file {loc.shown} is larger than {MAX_SIZE // 1024} KiB",
            loc.where,
            "check that pac_url names the PAC file itself, not a page or an archive",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _ca_files(profile: Profile, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    from kai_launch.expand import expand_path

    return [
        (
            expand_path(e.raw, e.base_dir, environ, f"{e.origin}, key 'ca_bundle'"),
            f"{e.origin}, key 'ca_bundle'",
        )
        for e in profile.ca_bundle
    ]


def fetch(
    loc: PacLocation, ca_files: list[tuple[str, str]], timeout: float, ca_mode: str = "append"
) -> str:
    """GET the PAC directly: never through a proxy (neither the environment's nor the
    profile's), TLS verified against certifi's roots (the OS store's in `system` mode) plus the
    profile's CA files."""
    import requests

    from kai_launch import __version__

    verify: str | bool = True
    if loc.location.lower().startswith("https://"):
        from kai_launch.trust import build_bundles, certifi_bundle

        if ca_mode == "system":
            # A PAC server signed by the corporate root MDM installed: the OS store has it.
            verify = build_bundles(ca_files, "system").merged
        else:
            verify = build_bundles(ca_files, "append").merged if ca_files else certifi_bundle()
    session = requests.Session()
    session.trust_env = False  # no *_proxy, no NO_PROXY, no .netrc, no REQUESTS_CA_BUNDLE
    where = loc.where
    try:
        with (
            session,
            session.get(
                loc.location,
                timeout=(timeout, timeout),
                verify=verify,
                proxies={"http": "", "https": "", "all": ""},
                headers={"User-Agent": f"kai-run/{__version__}"},
                stream=True,
            ) as resp,
        ):
            if resp.status_code != 200:
                raise PacError(
                    f"fetching the PAC file {loc.shown} failed: HTTP {resp.status_code} "
                    f"{resp.reason or ''}".rstrip(),
                    where,
                    "check pac_url (open it in a browser on this network)",
                )
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_content(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_SIZE:
                    break
            return _decode(b"".join(chunks), loc)
    except requests.exceptions.SSLError as e:
        raise PacError(
            f"fetching the PAC file {loc.shown} failed: TLS verification failed ({_reason(e)})",
            where,
            "add the CA that signed the PAC server's certificate to ca_bundle",
        ) from None
    except (requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout):
        raise PacError(
            f"fetching the PAC file {loc.shown} failed: no answer within {timeout:g} s",
            where,
            "check that the PAC server is reachable from this network without a proxy "
            "(WPAD servers are usually internal: is the VPN up?)",
        ) from None
    except requests.exceptions.RequestException as e:
        raise PacError(
            f"fetching the PAC file {loc.shown} failed: {_reason(e)}",
            where,
            "check pac_url and that the PAC server is reachable from this network without a "
            "proxy (WPAD servers are usually internal: is the VPN up?)",
        ) from None


def _reason(error: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 error chain."""
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "No route to host"):
        if marker in text:
            return marker.lower()
    if "CERTIFICATE_VERIFY_FAILED" in text:
        tail = text.split("CERTIFICATE_VERIFY_FAILED]", 1)[-1]
        return "certificate verify failed" + (f": {tail.split('(')[0].strip(' ]')}" if tail else "")
    return text.splitlines()[0][:200] if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# Evaluation


def _answers(
    record: dict[str, object], loc: PacLocation, urls: list[str], timeout: float
) -> tuple[dict[str, str], int]:
    """FindProxyForURL's answer for each URL: from the record when it holds it (keyed by the PAC
    text's hash), else from pypac, after which the record is saved with the new answers."""
    digest = str(record.get("sha256"))
    stored = record.get("answers")
    cached: dict[str, str] = {}
    if isinstance(stored, dict) and record.get("answers_for") == digest:
        cached = {k: v for k, v in stored.items() if isinstance(v, str)}
    missing = [u for u in urls if u not in cached]
    if not missing:
        return cached, 0
    text = str(record["text"])
    cached.update(evaluate(text, missing, loc, timeout))
    record["answers"] = cached
    record["answers_for"] = digest
    _write_record(loc, record)
    return cached, len(missing)


def evaluate(
    text: str, urls: list[str], loc: PacLocation, timeout: float = FETCH_TIMEOUT
) -> dict[str, str]:
    """FindProxyForURL's answer for each URL, computed by pypac in a child Python process.

    Why a child: dukpy runs the JavaScript holding the GIL and cannot be interrupted, so a PAC
    stuck in a loop (or in a slow dnsResolve) would hang kai-run for good; a child is killed
    after `timeout` (at least EVAL_MIN_TIMEOUT: it has to import pypac first). pypac itself does
    no I/O: only the PAC's own calls to dnsResolve, isResolvable, isInNet (with a name) and
    myIpAddress resolve names.
    """
    import json
    import subprocess
    import sys

    where = f"{loc.shown}, {loc.where}"
    if "FindProxyForURL" not in text:
        # pypac would report its own fallback name (FindProxyForURLEx) as "not defined".
        raise PacError(
            f"the PAC file {loc.shown} cannot be used: it defines no FindProxyForURL function",
            where,
            "a PAC file is JavaScript with function FindProxyForURL(url, host) { ... }; a "
            "login, error or portal page served in its place is not",
        )
    limit = max(timeout, EVAL_MIN_TIMEOUT)
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(
            # -P: the current directory (a checkout with its own json.py, say) is not on
            # sys.path; the child must import the standard library and pypac, nothing else.
            [sys.executable, "-P", "-m", "kai_launch.pac"],
            check=False,
            input=json.dumps({"text": text, "urls": urls}),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=limit,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise PacError(
            f"the PAC file {loc.shown} did not answer within {limit:g} s",
            where,
            "FindProxyForURL loops or waits on slow DNS (dnsResolve, isInNet, myIpAddress); "
            "fix the PAC file, or write http_proxy/https_proxy instead of pac_url",
        ) from None
    except OSError as e:
        raise PacError(
            f"cannot start Python to evaluate the PAC file: {e.strerror}", where
        ) from None
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise PacError(
            f"evaluating the PAC file {loc.shown} failed: {tail[0]}",
            where,
            "check that pypac is installed with kai-run (pip install pypac)",
        ) from None
    error = reply.get("error")
    if error:
        url = error.get("url")
        message = str(error.get("message"))
        if error.get("kind") == "parse":
            raise PacError(
                f"the PAC file {loc.shown} cannot be used: {message}",
                where,
                "it must be JavaScript defining FindProxyForURL(url, host); check that pac_url "
                "names the PAC file itself (not a login or error page)",
            )
        if error.get("kind") == "type":
            raise PacError(
                f"the PAC file {loc.shown} returned {message} for {redact_url(url)}, not a string",
                where,
                'FindProxyForURL must return a string such as "PROXY host:port; DIRECT"',
            )
        raise PacError(
            f"the PAC file {loc.shown} failed for {redact_url(str(url))}: {message}",
            where,
            "fix FindProxyForURL in the PAC file (or ask whoever publishes it)",
        )
    answers = reply.get("answers")
    assert isinstance(answers, dict)
    return {str(k): str(v) for k, v in answers.items()}


def _evaluate_here(text: str, urls: list[str]) -> dict[str, object]:
    """The child's side of evaluate(): {"answers": {url: answer}} or {"error": {...}}."""
    import warnings
    from urllib.parse import urlsplit

    warnings.simplefilter("ignore")  # pypac warns about deprecated options on stderr
    from pypac.parser import MalformedPacError, PACFile  # type: ignore[import-untyped]

    try:
        pac = PACFile(text)
    except MalformedPacError as e:
        return {"error": {"kind": "parse", "message": _js_error(e.original_exc or e)}}
    except Exception as e:  # dukpy reports some failures with its own types
        return {"error": {"kind": "parse", "message": _js_error(e)}}
    out: dict[str, str] = {}
    for url in urls:
        host = urlsplit(url).hostname or ""
        try:
            value = pac.find_proxy_for_url(url, host)
        except Exception as e:
            return {"error": {"kind": "eval", "url": url, "message": _js_error(e)}}
        if not isinstance(value, str):
            return {"error": {"kind": "type", "url": url, "message": repr(value)}}
        out[url] = value
    return {"answers": out}


def _js_error(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# --------------------------------------------------------------------------------------------
# doctor


def doctor_check(
    name: str,
    profile: Profile,
    environ: Mapping[str, str],
    urls: Iterable[str],
    refresh: bool,
    timeout: float,
) -> tuple[Check, PacResult | None]:
    """doctor's `pac` row (fetch or cache, parse, evaluate each target, time taken) and the
    result to build the plan with; None when the PAC cannot be used (the row then fails)."""
    from kai_launch.checks import FAIL, OK, WARN, Check

    start = time.monotonic()
    target = redact_url(profile.pac_url or "")
    try:
        # Always fetched: the row says whether the PAC server answers now, not 12 h ago (a
        # failed fetch falls back to the cached copy, and the row warns).
        result = for_profile(profile, environ, urls, refresh=refresh, timeout=timeout, fetch=True)
    except KaiRunError as e:
        ms = (time.monotonic() - start) * 1000
        return Check(name, "pac", target, FAIL, e.what, e.hint, round(ms, 1)), None
    assert result is not None
    ms = (time.monotonic() - start) * 1000
    routes = "; ".join(f"{redact_url(r.url)} -> {r.shown()}" for r in result.routes)
    count = len(result.routes)
    urls_word = f"{count} URL{'s' * (count != 1)}"
    if result.evaluated:
        done = f"parsed and evaluated for {urls_word} in {result.eval_ms:.0f} ms"
    else:
        done = f"answers for {urls_word} cached with it"
    message = f"{result.describe_source()}; {done}: {routes}"
    if result.proxy is not None:
        message += f"; exports {redact_url(result.proxy)}"
    if result.direct_hosts:
        message += f", NO_PROXY += {','.join(result.direct_hosts)}"
    status, hint = OK, None
    problems = [w for w in result.warnings if not w.startswith("note:")]
    if problems:
        status = WARN
        hint = " / ".join(problems)
    return Check(name, "pac", result.source.shown, status, message, hint, round(ms, 1)), result


def _main() -> None:
    """`python -m kai_launch.pac`: the evaluating child (see evaluate)."""
    import json
    import sys

    request = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(_evaluate_here(request["text"], request["urls"])))


if __name__ == "__main__":
    _main()
