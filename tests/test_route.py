"""kai-run route: its answers against what the real clients do.

requests, urllib, httpx and httpx2 run in child processes under the exact environment, build a
real client and say which proxy (or none) they picked for each URL; nothing is sent anywhere
(the requests/urllib handlers stop before connecting, httpx only resolves its mount). curl runs
for real, against two loopback recorders: `--connect-to` pins every direct connection to
127.0.0.1, the proxy is on 127.0.0.1, so no packet leaves the machine. Go and Node are not run
(not installed / too old for NODE_USE_ENV_PROXY): their encoded rules are checked against the
examples documented in their sources.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from kai_launch import route as route_mod
from kai_launch.errors import KaiRunError
from kai_launch.proxyurl import redact_url
from kai_launch.route import CLIENTS, route

SECRET = "s3cret-pw"
PROXY = f"http://user:{SECRET}@proxy.invalid:3128"
PROXY_SHOWN = "http://user:***@proxy.invalid:3128"
PROXIES = {"HTTP_PROXY": PROXY, "http_proxy": PROXY, "HTTPS_PROXY": PROXY, "https_proxy": PROXY}

NO_PROXY_VALUES = [
    "",
    "example.com",
    ".example.com",
    "*.example.com",
    "example.com:8443",
    "EXAMPLE.COM",
    "other.invalid, example.com",
    "10.0.0.0/8",
    "10.1.2.3",
    "::1",
    "[::1]",
    "fd00::/8",
    "localhost,127.0.0.1",
    "*",
]
URLS = [
    "http://example.com/",
    "https://example.com/",
    "https://api.example.com/v1",
    "https://example.com:8443/",
    "http://notexample.com/",
    "http://10.1.2.3/",
    "http://10.1.2.3:8080/",
    "http://127.0.0.1:8000/",
    "http://localhost:8000/",
    "http://[::1]:8080/",
    "https://[fd00::1]/",
]
UPPER = "http://upper.invalid:1111"
LOWER = "http://lower.invalid:2222"
CONFLICTS: dict[str, dict[str, str]] = {
    "upper-vs-lower-proxy": {
        "HTTP_PROXY": UPPER,
        "http_proxy": LOWER,
        "HTTPS_PROXY": UPPER,
        "https_proxy": LOWER,
    },
    "empty-lower-proxy": {"HTTP_PROXY": UPPER, "http_proxy": "", "HTTPS_PROXY": UPPER},
    "upper-only": {"HTTP_PROXY": UPPER, "HTTPS_PROXY": UPPER},
    "empty-lower-no_proxy": {**PROXIES, "NO_PROXY": "example.com", "no_proxy": ""},
    "empty-upper-NO_PROXY": {**PROXIES, "NO_PROXY": "", "no_proxy": "example.com"},
    "NO_PROXY-vs-no_proxy": {**PROXIES, "NO_PROXY": "example.com", "no_proxy": "other.invalid"},
    "all_proxy-only": {"ALL_PROXY": "http://all.invalid:3333"},
    "cgi": {"HTTP_PROXY": UPPER, "HTTPS_PROXY": UPPER, "REQUEST_METHOD": "GET"},
    "scheme-less": {"HTTP_PROXY": "proxy.invalid:3128", "HTTPS_PROXY": "proxy.invalid:3128"},
}
CONFLICT_URLS = ["http://example.com/", "https://example.com/", "https://api.example.com/"]
LIBRARIES = ("requests", "urllib", "httpx", "httpx2")


def _base_env() -> dict[str, str]:
    # Nothing inherited: the machine's own SSL_CERT_FILE etc. must not leak into the cases.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}


def _no_proxy_env(value: str) -> dict[str, str]:
    return {**_base_env(), **PROXIES, "NO_PROXY": value, "no_proxy": value}


def _conflict_env(name: str) -> dict[str, str]:
    return {**_base_env(), **CONFLICTS[name]}


# ---------------------------------------------------------------------------------------------
# What the libraries really do, in a child process


CHILD = r"""
import importlib, json, ssl, sys

class Seen(Exception):
    pass

def serials(ctx):
    return sorted(c["serialNumber"] for c in ctx.get_ca_certs())

def with_requests(url):
    import requests
    from requests.adapters import HTTPAdapter

    class Capture(HTTPAdapter):
        def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
            pool = self.get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
            raise Seen({
                "proxy": None if pool.proxy is None else str(pool.proxy),
                "verify": verify if isinstance(verify, str) else requests.certs.where(),
            })

    session = requests.Session()
    session.mount("http://", Capture())
    session.mount("https://", Capture())
    try:
        session.get(url)
    except Seen as seen:
        return seen.args[0]
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"error": "request was not captured"}

def with_urllib(url):
    import urllib.request as ur

    def record(req):
        # After ProxyHandler: https is tunnelled (_tunnel_host set), http is sent in absolute form.
        proxied = req._tunnel_host is not None or req.selector == req.full_url
        raise Seen({"proxy": req.host if proxied else None})

    class Http(ur.HTTPHandler):
        def http_open(self, req):
            record(req)

    class Https(ur.HTTPSHandler):
        def https_open(self, req):
            record(req)

    try:
        ur.build_opener(Http(), Https()).open(url, timeout=1)
    except Seen as seen:
        answer = seen.args[0]
        answer["cas"] = serials(ssl.create_default_context())
        return answer
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"error": "request was not captured"}

CLIENTS = {}

def with_httpx(package, url):
    # One client per child: what it mounts depends on the environment only, not on the URL.
    mod = importlib.import_module(package)
    if package not in CLIENTS:
        try:
            CLIENTS[package] = mod.Client()
        except Exception as exc:
            CLIENTS[package] = exc
    client = CLIENTS[package]
    if isinstance(client, Exception):
        return {"error": f"{type(client).__name__}: {client}"}
    transport = client._transport_for_url(mod.URL(url))
    pool = transport._pool
    proxy = None
    if transport is not client._transport:
        u = pool._proxy_url
        proxy = f"{u.scheme.decode()}://{u.host.decode()}:{u.port}"
    return {"proxy": proxy, "cas": serials(pool._ssl_context)}

out = {}
for url in json.loads(sys.argv[1]):
    out[url] = {
        "requests": with_requests(url),
        "urllib": with_urllib(url),
        "httpx": with_httpx("httpx", url),
        "httpx2": with_httpx("httpx2", url),
    }
print(json.dumps(out))
"""


def _run_child(env_items: tuple[tuple[str, str], ...], urls: tuple[str, ...]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(list(urls))],
        env=dict(env_items),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers: dict[str, Any] = json.loads(done.stdout)
    return answers


_Key = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]


@functools.cache
def _children() -> dict[_Key, Future[dict[str, Any]]]:
    """Every table's child process, started together on first use (each takes about a second,
    mostly imports)."""
    keys: list[_Key] = [
        (tuple(sorted(_no_proxy_env(v).items())), tuple(URLS)) for v in NO_PROXY_VALUES
    ]
    keys += [(tuple(sorted(_conflict_env(n).items())), tuple(CONFLICT_URLS)) for n in CONFLICTS]
    pool = ThreadPoolExecutor(max_workers=4)
    futures = {key: pool.submit(_run_child, *key) for key in keys}
    pool.shutdown(wait=False)
    return futures


def _actual(env: Mapping[str, str], urls: list[str], url: str) -> dict[str, Any]:
    key: _Key = (tuple(sorted(env.items())), tuple(urls))
    future = _children().get(key)
    answers = future.result() if future else _run_child(*key)
    return answers[url]  # type: ignore[no-any-return]


def _without_userinfo(shown: str | None) -> str | None:
    if shown is None:
        return None
    parts = urlsplit(shown)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


def _hostport(shown: str | None) -> str | None:
    if shown is None:
        return None
    parts = urlsplit(shown)
    return f"{parts.hostname}:{parts.port}"


def _assert_same(client: str, predicted: route_mod.ClientRoute, actual: dict[str, Any]) -> None:
    if "error" in actual:
        assert predicted.proxy is None and predicted.note.startswith("error:"), (
            f"{client} really fails ({actual['error']}); route says {predicted}"
        )
        return
    assert not predicted.note.startswith("error:"), f"{client} works; route says {predicted}"
    if client == "requests":
        real = redact_url(actual["proxy"]) if actual["proxy"] else None
        assert predicted.proxy == real
    elif client == "urllib":
        assert _hostport(predicted.proxy) == actual["proxy"]
    else:
        assert _without_userinfo(predicted.proxy) == actual["proxy"]


NO_PROXY_CASES = [
    pytest.param(value, url, client, id=f"{value or 'empty'}|{url}|{client}")
    for value in NO_PROXY_VALUES
    for url in URLS
    for client in LIBRARIES
]


@pytest.mark.parametrize(("no_proxy", "url", "client"), NO_PROXY_CASES)
def test_route_matches_real_library_for_no_proxy(no_proxy: str, url: str, client: str) -> None:
    env = _no_proxy_env(no_proxy)
    actual = _actual(env, URLS, url)[client]
    _assert_same(client, route(url, env).clients[client], actual)


CONFLICT_CASES = [
    pytest.param(name, url, client, id=f"{name}|{url}|{client}")
    for name in CONFLICTS
    for url in CONFLICT_URLS
    for client in LIBRARIES
]


@pytest.mark.parametrize(("conflict", "url", "client"), CONFLICT_CASES)
def test_route_matches_real_library_for_case_conflicts(
    conflict: str, url: str, client: str
) -> None:
    env = _conflict_env(conflict)
    actual = _actual(env, CONFLICT_URLS, url)[client]
    _assert_same(client, route(url, env).clients[client], actual)


# ---------------------------------------------------------------------------------------------
# CA files, against the certificates the real clients loaded


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    trustme = pytest.importorskip("trustme")
    folder = tmp_path_factory.mktemp("cas")
    files = {}
    for name in ("one", "two"):
        path = folder / f"{name}.pem"
        trustme.CA().cert_pem.write_to_path(str(path))
        files[name] = str(path)
    return files


def _serials_of(path: str) -> list[str]:
    return sorted(c["serialNumber"] for c in ssl.create_default_context(cafile=path).get_ca_certs())


CA_ENVS = {
    "nothing-set": {},
    "ssl_cert_file": {"SSL_CERT_FILE": "one"},
    "requests_ca_bundle": {"REQUESTS_CA_BUNDLE": "one"},
    "curl-vs-ssl": {"CURL_CA_BUNDLE": "one", "SSL_CERT_FILE": "two"},
}


@pytest.mark.parametrize("case", list(CA_ENVS))
def test_route_ca_files_match_what_clients_load(case: str, ca_files: dict[str, str]) -> None:
    env = {**_base_env(), **{k: ca_files[v] for k, v in CA_ENVS[case].items()}}
    url = "https://example.com/"
    actual = _actual(env, [url], url)
    report = route(url, env)
    assert report.clients["requests"].ca_file == actual["requests"]["verify"]
    for client in ("urllib", "httpx", "httpx2"):
        ca_file = report.clients[client].ca_file
        assert ca_file is not None and os.path.isfile(ca_file), report.clients[client]
        assert _serials_of(ca_file) == actual[client]["cas"], client


def test_requests_ignores_ssl_cert_file_and_says_so(ca_files: dict[str, str]) -> None:
    env = {**_base_env(), "SSL_CERT_FILE": ca_files["one"]}
    report = route("https://example.com/", env)
    assert report.clients["httpx"].ca_file == ca_files["one"]
    assert report.clients["requests"].ca_file != ca_files["one"]
    line = next(d for d in report.disagreements if d.startswith("requests"))
    assert "requests ignores SSL_CERT_FILE" in line


# ---------------------------------------------------------------------------------------------
# Encoded rules for the Python libraries (used when one is not installed) against the library


PREDICTIONS = [
    ("requests", route_mod._requests_predicted, route_mod._requests),
    ("httpx", route_mod._httpx_family_predicted(cidr=False), route_mod._httpx_family("httpx")),
    ("httpx2", route_mod._httpx_family_predicted(cidr=True), route_mod._httpx_family("httpx2")),
    ("aiohttp", route_mod._aiohttp_trust_env_predicted, route_mod._aiohttp_trust_env),
]
ALL_ENVS = [_no_proxy_env(v) for v in NO_PROXY_VALUES] + [_conflict_env(n) for n in CONFLICTS]


@pytest.mark.parametrize(
    ("name", "predicted", "real"), PREDICTIONS, ids=[p[0] for p in PREDICTIONS]
)
def test_predicted_rules_agree_with_installed_library(
    name: str, predicted: route_mod.Evaluator, real: route_mod.Evaluator
) -> None:
    wrong = []
    for env in ALL_ENVS:
        for url in URLS:
            target = route_mod._parse_target(url)
            want, got = real(target, env), predicted(target, env)
            if (want.proxy, want.error is None) != (got.proxy, got.error is None):
                no_proxy = env.get("NO_PROXY")
                wrong.append(f"{url} NO_PROXY={no_proxy!r}: library {want}, predicted {got}")
    assert not wrong, "\n".join(wrong)


def test_missing_library_gives_a_predicted_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = route_mod._optional_module
    monkeypatch.setattr(
        route_mod, "_optional_module", lambda n: None if n == "httpx2" else real_import(n)
    )
    report = route("http://10.1.2.3/", _no_proxy_env("10.0.0.0/8"))
    answer = report.clients["httpx2"]
    assert answer.predicted and answer.note.startswith("predicted")
    assert answer.proxy is None  # httpx2 honours CIDR entries
    assert not report.clients["httpx"].predicted


# ---------------------------------------------------------------------------------------------
# curl for real, on loopback only


class _Recorder:
    """Accepts on 127.0.0.1, keeps the first line each client sends, answers 502 and closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(3)
                try:
                    data = conn.recv(4096)
                    self.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def recorders() -> Iterator[tuple[_Recorder, _Recorder]]:
    proxy, origin = _Recorder(), _Recorder()
    yield proxy, origin
    proxy.close()
    origin.close()


_CURL_LOCK = threading.Lock()


def _curl_uses_proxy(url: str, env: dict[str, str], recorders: tuple[_Recorder, _Recorder]) -> bool:
    proxy, origin = recorders
    with _CURL_LOCK:
        proxy.lines.clear()
        origin.lines.clear()
        subprocess.run(
            # --connect-to sends every direct connection to the loopback origin recorder: the
            # hosts in the URLs are never resolved or contacted.
            [
                *("curl", "-s", "-o", "/dev/null", "--max-time", "5"),
                *("--connect-to", f"::127.0.0.1:{origin.port}", url),
            ],
            env=env,
            timeout=20,
            check=False,
        )
        seen = proxy.lines + origin.lines
    assert seen, f"curl connected nowhere for {url}"
    if proxy.lines:
        return True
    first = origin.lines[0]
    return first.startswith("CONNECT ") or " http://" in first


def _curl_version() -> tuple[int, ...]:
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(part) for part in out.split()[1].split(".")[:2])


CURL_URLS = [
    "http://example.com/",
    "https://example.com/",
    "http://api.example.com:8080/",
    "http://notexample.com/",
    "http://10.1.2.3/",
    "http://[::1]:8080/",
    "http://[fd00::1]/",
    "http://localhost:8000/",
]
CURL_NO_PROXY = [
    "",
    "example.com",
    ".example.com",
    "*.example.com",
    "example.com:8080",
    "10.0.0.0/8",
    "10.1.2.3",
    "::1",
    "fd00::/8",
    "*",
    "other.invalid example.com",
]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("no_proxy", CURL_NO_PROXY, ids=lambda v: v or "empty")
def test_curl_rules_match_real_curl(no_proxy: str, recorders: tuple[_Recorder, _Recorder]) -> None:
    proxy_url = f"http://127.0.0.1:{recorders[0].port}"
    env = {
        **_base_env(),
        "http_proxy": proxy_url,
        "HTTPS_PROXY": proxy_url,
        "NO_PROXY": no_proxy,
    }
    # curl before 8.9 also split NO_PROXY on blanks; route describes current curl and says so.
    old_curl = _curl_version() < (8, 9)
    wrong = []
    for url in CURL_URLS:
        answer = route(url, env).clients["curl"]
        predicted = answer.proxy is not None
        host = urlsplit(url).hostname or ""
        if old_curl and route_mod._curl_noproxy(host, no_proxy, blanks_separate=True):
            if not route_mod._curl_noproxy(host, no_proxy):
                assert "curl < 8.9" in answer.note
            predicted = False
        real = _curl_uses_proxy(url, env, recorders)
        if predicted != real:
            wrong.append(f"{url}: curl {'proxied' if real else 'direct'}, route said otherwise")
    assert not wrong, "\n".join(wrong)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_real_curl_ignores_upper_case_http_proxy(recorders: tuple[_Recorder, _Recorder]) -> None:
    env = {**_base_env(), "HTTP_PROXY": f"http://127.0.0.1:{recorders[0].port}"}
    assert not _curl_uses_proxy("http://example.com/", env, recorders)
    assert route("http://example.com/", env).clients["curl"].proxy is None


# ---------------------------------------------------------------------------------------------
# curl, Go and Node: documented examples


def _proxy_for(client: str, url: str, **env: str) -> str | None:
    return route(url, {**_base_env(), **env}).clients[client].proxy


P = "http://p.invalid:3128"


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        # docs/cmdline-opts/_ENVIRONMENT.md: http_proxy only in lower case.
        ("http://example.com/", {"HTTP_PROXY": P}, None),
        ("http://example.com/", {"http_proxy": P}, P),
        ("https://example.com/", {"HTTPS_PROXY": P}, P),
        ("https://example.com/", {"https_proxy": P, "HTTPS_PROXY": "http://u.invalid:1"}, P),
        # curl_getenv(): an empty variable is unset, so the upper-case one is used.
        ("https://example.com/", {"https_proxy": "", "HTTPS_PROXY": P}, P),
        ("https://example.com/", {"ALL_PROXY": P}, P),
        ("http://example.com/", {"all_proxy": P}, P),
        # NO_PROXY: a name matches itself and its subdomains, leading dot ignored.
        ("http://www.example.com/", {"http_proxy": P, "NO_PROXY": "example.com"}, None),
        ("http://nonexample.com/", {"http_proxy": P, "NO_PROXY": "example.com"}, P),
        ("http://example.com/", {"http_proxy": P, "NO_PROXY": ".example.com"}, None),
        ("http://a.example.com/", {"http_proxy": P, "NO_PROXY": "*.example.com"}, P),
        ("http://example.com/", {"http_proxy": P, "NO_PROXY": "*"}, None),
        ("http://example.com/", {"http_proxy": P, "NO_PROXY": "*,other.invalid"}, P),
        ("http://192.168.7.1/", {"http_proxy": P, "NO_PROXY": "192.168.0.0/16"}, None),
        # IPv6 hosts are compared as names: "::1" matches, a CIDR entry does not (curl#19828).
        ("http://[::1]/", {"http_proxy": P, "NO_PROXY": "::1"}, None),
        ("http://[fd00::1]/", {"http_proxy": P, "NO_PROXY": "fd00::/8"}, P),
        ("http://example.com:8080/", {"http_proxy": P, "NO_PROXY": "example.com:8080"}, P),
        # lower-case no_proxy first.
        (
            "http://example.com/",
            {"http_proxy": P, "no_proxy": "x.invalid", "NO_PROXY": "example.com"},
            P,
        ),
        # no built-in exception for localhost.
        ("http://localhost/", {"http_proxy": P}, P),
    ],
)
def test_curl_documented_rules(url: str, env: dict[str, str], expected: str | None) -> None:
    assert _proxy_for("curl", url, **env) == expected


def test_curl_ca_bundle_precedence() -> None:
    env = {**_base_env(), "CURL_CA_BUNDLE": "/a.pem", "SSL_CERT_FILE": "/b.pem"}
    assert route("https://example.com/", env).clients["curl"].ca_file == "/a.pem"
    env.pop("CURL_CA_BUNDLE")
    assert route("https://example.com/", env).clients["curl"].ca_file == "/b.pem"


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        # httpproxy.FromEnvironment: upper case first; ALL_PROXY is not read.
        ("http://example.com/", {"HTTP_PROXY": P, "http_proxy": "http://l.invalid:1"}, P),
        ("http://example.com/", {"HTTP_PROXY": "", "http_proxy": P}, P),
        ("https://example.com/", {"ALL_PROXY": P}, None),
        ("https://example.com/", {"HTTPS_PROXY": "p.invalid:3128"}, P),
        # localhost and loopback addresses are never proxied.
        ("http://localhost:8000/", {"HTTP_PROXY": P}, None),
        ("http://127.0.0.2/", {"HTTP_PROXY": P}, None),
        ("http://[::1]/", {"HTTP_PROXY": P}, None),
        # NoProxy doc: "foo.com" matches foo.com and bar.foo.com; ".y.com" only subdomains.
        ("http://foo.com/", {"HTTP_PROXY": P, "NO_PROXY": "foo.com"}, None),
        ("http://bar.foo.com/", {"HTTP_PROXY": P, "NO_PROXY": "foo.com"}, None),
        ("http://y.com/", {"HTTP_PROXY": P, "NO_PROXY": ".y.com"}, P),
        ("http://x.y.com/", {"HTTP_PROXY": P, "NO_PROXY": ".y.com"}, None),
        ("http://y.com/", {"HTTP_PROXY": P, "NO_PROXY": "*.y.com"}, P),
        ("http://x.y.com/", {"HTTP_PROXY": P, "NO_PROXY": "*.y.com"}, None),
        # IP prefixes, CIDR and ports.
        ("http://1.2.3.4/", {"HTTP_PROXY": P, "NO_PROXY": "1.2.3.4:80"}, None),
        ("http://1.2.3.4:8080/", {"HTTP_PROXY": P, "NO_PROXY": "1.2.3.4:80"}, P),
        ("https://example.com/", {"HTTPS_PROXY": P, "NO_PROXY": "example.com:443"}, None),
        ("http://10.9.8.7/", {"HTTP_PROXY": P, "NO_PROXY": "10.0.0.0/8"}, None),
        ("http://[fd00::1]/", {"HTTP_PROXY": P, "NO_PROXY": "fd00::/8"}, None),
        ("http://[fd00::1]/", {"HTTP_PROXY": P, "NO_PROXY": "[fd00::1]:80"}, None),
        ("http://example.com/", {"HTTP_PROXY": P, "NO_PROXY": "other.invalid,*"}, None),
        # NO_PROXY before no_proxy.
        (
            "http://a.invalid/",
            {"HTTP_PROXY": P, "NO_PROXY": "b.invalid", "no_proxy": "a.invalid"},
            P,
        ),
    ],
)
def test_go_documented_rules(url: str, env: dict[str, str], expected: str | None) -> None:
    assert _proxy_for("go", url, **env) == expected


def test_go_refuses_http_proxy_under_cgi() -> None:
    report = route("http://example.com/", {**_base_env(), "HTTP_PROXY": P, "REQUEST_METHOD": "GET"})
    assert report.clients["go"].note.startswith("error:")
    assert (
        route("https://example.com/", {**_base_env(), "HTTPS_PROXY": P, "REQUEST_METHOD": "GET"})
        .clients["go"]
        .proxy
        == P
    )


ON = {"NODE_USE_ENV_PROXY": "1"}


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("https://example.com/", {"HTTPS_PROXY": P}, None),  # off without NODE_USE_ENV_PROXY
        ("https://example.com/", {**ON, "HTTPS_PROXY": P}, P),
        ("https://example.com/", {"NODE_OPTIONS": "--use-env-proxy", "HTTPS_PROXY": P}, P),
        ("https://example.com/", {**ON, "https_proxy": P, "HTTPS_PROXY": "http://u.invalid:1"}, P),
        ("https://example.com/", {**ON, "HTTPS_PROXY": "socks5://s.invalid:1080"}, None),
        ("https://example.com/", {**ON, "HTTPS_PROXY": "p.invalid:3128"}, None),
        # NO_PROXY: exact hosts, host:port, ".x" and "*.x" suffixes, IPv4 ranges; no CIDR.
        ("https://example.com/", {**ON, "HTTPS_PROXY": P, "NO_PROXY": "example.com"}, None),
        ("https://a.example.com/", {**ON, "HTTPS_PROXY": P, "NO_PROXY": "example.com"}, P),
        ("https://a.example.com/", {**ON, "HTTPS_PROXY": P, "NO_PROXY": ".example.com"}, None),
        ("https://example.com/", {**ON, "HTTPS_PROXY": P, "NO_PROXY": "*.example.com"}, P),
        ("https://example.com/", {**ON, "HTTPS_PROXY": P, "NO_PROXY": "example.com:443"}, None),
        ("http://10.0.0.5/", {**ON, "HTTP_PROXY": P, "NO_PROXY": "10.0.0.1-10.0.0.9"}, None),
        ("http://10.0.0.5/", {**ON, "HTTP_PROXY": P, "NO_PROXY": "10.0.0.0/8"}, P),
        ("http://localhost/", {**ON, "HTTP_PROXY": P}, P),
        ("http://example.com/", {**ON, "HTTP_PROXY": P, "NO_PROXY": "x.invalid,*"}, None),
    ],
)
def test_node_documented_rules(url: str, env: dict[str, str], expected: str | None) -> None:
    assert _proxy_for("node", url, **env) == expected


def test_node_note_says_what_it_would_do_and_ca_is_extra() -> None:
    env = {**_base_env(), "HTTPS_PROXY": P, "NODE_EXTRA_CA_CERTS": "/extra.pem"}
    answer = route("https://example.com/", env).clients["node"]
    assert "NODE_USE_ENV_PROXY" in answer.note and P in answer.note
    assert answer.ca_file == "/extra.pem" and "bundled roots" in answer.note


# ---------------------------------------------------------------------------------------------
# The report itself


def test_report_shape_order_and_redaction() -> None:
    report = route("https://api.example.com/v1", _no_proxy_env("localhost"))
    assert tuple(report.clients) == CLIENTS
    data = report.to_json()
    assert set(data) == {"url", "clients", "disagreements"}
    assert data["url"] == "https://api.example.com/v1"
    for answer in data["clients"].values():
        assert set(answer) == {"proxy", "ca_file", "note"}
    assert data["clients"]["requests"]["proxy"] == PROXY_SHOWN
    dumped = json.dumps(data) + "\n".join(report.disagreements)
    dumped += "\n".join(route_mod.render_text(report))
    assert SECRET not in dumped


def test_aiohttp_is_direct_by_default_and_says_what_trust_env_would_do() -> None:
    answer = route("https://example.com/", _no_proxy_env("")).clients["aiohttp"]
    assert answer.proxy is None
    assert "trust_env=False by default" in answer.note and PROXY_SHOWN in answer.note


def test_cidr_disagreement_names_the_entry_and_the_clients() -> None:
    report = route("http://10.1.2.3/", _no_proxy_env("10.0.0.0/8"))
    assert report.clients["httpx"].proxy == PROXY_SHOWN
    assert report.clients["httpx2"].proxy is None
    line = next(d for d in report.disagreements if "CIDR entry 10.0.0.0/8" in d)
    assert "httpx" in line.split(" but ")[0] and "httpx2" in line.split(" but ")[1]


def test_case_conflict_disagreement_names_the_variables() -> None:
    report = route("http://example.com/", _conflict_env("upper-vs-lower-proxy"))
    assert report.clients["go"].proxy == UPPER
    assert report.clients["requests"].proxy == LOWER
    line = next(d for d in report.disagreements if d.startswith("go "))
    assert "HTTP_PROXY read by go" in line and "http_proxy" in line


def test_httpx_crash_on_bracketed_ipv6_entry_is_reported() -> None:
    report = route("http://[::1]:8080/", _no_proxy_env("[::1]"))
    assert report.clients["httpx"].note.startswith("error:")
    assert "InvalidURL" in report.clients["httpx"].note
    assert any(d.startswith("httpx fails") for d in report.disagreements)


def test_agreeing_clients_give_no_disagreement(tmp_path: Path) -> None:
    bundle = str(tmp_path / "bundle.pem")
    env = {
        **_no_proxy_env("*"),
        **dict.fromkeys(("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"), bundle),
        "NODE_EXTRA_CA_CERTS": bundle,
    }
    assert route("https://example.com/", env).disagreements == []


def test_os_environ_is_restored() -> None:
    before = dict(os.environ)
    route("http://10.1.2.3/", _no_proxy_env("10.0.0.0/8"))
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "example.com", "http:///path", "http://h:99999/"]
)
def test_bad_urls_raise_kai_run_error(url: str) -> None:
    with pytest.raises(KaiRunError):
        route(url, _base_env())


def test_empty_lower_case_variables_hide_upper_case_ones_from_python_clients() -> None:
    report = route("http://example.com/", _conflict_env("empty-lower-proxy"))
    assert report.clients["requests"].proxy is None and report.clients["go"].proxy == UPPER
    assert any(
        "http_proxy is set but empty, which hides HTTP_PROXY" in d for d in report.disagreements
    )
    report = route("https://example.com/", _conflict_env("empty-lower-no_proxy"))
    assert report.clients["httpx"].proxy == PROXY_SHOWN and report.clients["requests"].proxy is None
    assert any("no_proxy is set but empty, which hides NO_PROXY" in d for d in report.disagreements)


def test_cgi_environment_is_explained() -> None:
    report = route("http://example.com/", _conflict_env("cgi"))
    assert "REQUEST_METHOD" in report.clients["requests"].note
    assert report.clients["go"].note.startswith("error:")


def test_ipv6_cidr_entry_makes_httpx_fail_not_go_direct() -> None:
    for url, others in (
        ("https://api.example.com/v1", "use " + PROXY_SHOWN),
        ("https://[2001:db8::5]/v1", "go direct"),
    ):
        report = route(url, _no_proxy_env("2001:db8::/32"))
        httpx = report.clients["httpx"]
        assert httpx.proxy is None
        assert httpx.answer == "error"
        assert httpx.error is not None
        assert httpx.error.startswith("cannot create a client: httpx.Client() raises InvalidURL")
        assert httpx.note.startswith("error: cannot create a client: ")
        assert httpx.entry == "2001:db8::/32"
        assert report.to_json()["clients"]["httpx"]["proxy"] is None
        row = next(line for line in route_mod.render_text(report) if line.split()[0] == "httpx")
        assert row.split()[1] == "error"
        line = next(d for d in report.disagreements if d.startswith("httpx "))
        assert line.startswith("httpx fails but ")
        assert others in line
        assert "CIDR entry 2001:db8::/32" in line
        # requests ignores an IPv6 range (its CIDR check is for IPv4 hosts only), httpx2 not.
        assert report.clients["requests"].proxy == PROXY_SHOWN
        assert report.clients["httpx2"].error is None


def test_a_failure_without_no_proxy_is_not_blamed_on_no_proxy() -> None:
    env = {**_base_env(), "HTTPS_PROXY": "socks4://127.0.0.1:1080", "NO_PROXY": "localhost"}
    httpx = route("https://example.com/", env).clients["httpx"]
    assert httpx.error is not None
    assert "Unknown scheme" in httpx.error
    assert httpx.entry is None
    assert "localhost" not in httpx.note


class _WriteRecorder(dict[str, str]):
    """Stands in for the real os.environ and records every write to it."""

    writes: list[str]

    def __setitem__(self, key: str, value: str) -> None:
        self.writes.append(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.writes.append(key)
        super().__delitem__(key)

    def clear(self) -> None:
        self.writes.append("*clear*")
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.writes.append("*update*")
        super().update(*args, **kwargs)


def test_route_never_writes_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each write of the real os.environ calls setenv(), which is not safe while doctor's probe
    # threads call getaddrinfo() and OpenSSL (they read the C environment): route swaps a plain
    # dict in instead, and puts the very same object back.
    real = _WriteRecorder(os.environ)
    real.writes = []
    monkeypatch.setattr(os, "environ", real)
    report = route("http://10.1.2.3/", _no_proxy_env("10.0.0.0/8"))
    assert os.environ is real
    assert real.writes == []
    assert report.clients["requests"].proxy is None  # the libraries did see the child's env
