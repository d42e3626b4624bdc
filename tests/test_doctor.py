"""kai-run doctor against real servers on loopback: a real mitmdump (with and without
--proxyauth), a trustme HTTPS upstream, a SOCKS5 proxy, peers that hang, closed ports.

Targets that must go THROUGH a proxy cannot be localhost, 127.0.0.1 or ::1 (kai-run always puts
those in NO_PROXY), so the upstream for those tests listens on 127.0.0.2 (loopback on Linux)
with a certificate for that IP. In-process runs also guard the resolver: any lookup of a
non-loopback name fails the test before a packet leaves, which is how "a target behind a proxy
is never resolved locally" is checked.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.servers import HangingServer, closed_port, expired_ca_pem, expiring_ca_pem
from typer.testing import CliRunner

from kai_launch.checks import STATUSES, is_public_host
from kai_launch.cli import app

FAR_HOST = "127.0.0.2"
JSON_KEYS = {"profile", "check", "target", "status", "message", "hint", "duration_ms"}

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="127.0.0.2 is loopback only on Linux"
    ),
    pytest.mark.usefixtures("resolver_guard"),  # no lookup of a non-loopback name in-process
]


# --- fixtures --------------------------------------------------------------------------------


class _FarHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FarUpstream

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("User-Agent", "")))
        # Like an API without a key: doctor must count any status as "reachable".
        body = b'{"error": {"message": "missing API key"}}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _answer


class FarUpstream(ThreadingHTTPServer):
    """HTTPS on 127.0.0.2 with a trustme certificate for that IP: a loopback target that is
    not in kai-run's NO_PROXY, so it can be reached through a proxy."""

    daemon_threads = True

    def __init__(self, workdir: Path) -> None:
        super().__init__((FAR_HOST, 0), _FarHandler)
        self.ca = trustme.CA()
        self.ca_path = workdir / "far-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(FAR_HOST).configure_cert(self.ctx)
        self.seen: list[tuple[str, str, str]] = []

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake happens in the connection's thread, so one stalled client (doctor's
        # failed verification) never blocks the accept loop.
        request.settimeout(10)
        with self.ctx.wrap_socket(request, server_side=True) as tls:
            super().finish_request(tls, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that refuse the certificate hang up mid-handshake: expected here

    @property
    def url(self) -> str:
        return f"https://{FAR_HOST}:{self.server_address[1]}/v1/models"


@pytest.fixture
def far(tmp_path: Path) -> Iterator[FarUpstream]:
    server = FarUpstream(tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def mitm_sidecar_command(binary: Path, port: int, confdir: Path, upstream_ca: object) -> list[str]:
    """A real mitmdump as a profile's sidecar: loopback only, its own confdir (it writes its CA
    there on first start), trusting the test upstream's CA."""
    from support.mitm import LOOPBACK_GUARD_ADDON

    return [
        str(binary),
        "--listen-host", "127.0.0.1",
        "-p", str(port),
        "--set", f"confdir={confdir}",
        "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}",
        "-s", str(LOOPBACK_GUARD_ADDON),
    ]  # fmt: skip


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def doctor(
    *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]], float, Any]:
    """Run `kai-run doctor ARGS --json` in-process; (exit code, rows, seconds, result)."""
    start = time.monotonic()
    result = CliRunner().invoke(app, ["doctor", *args, "--json"], env=env)
    elapsed = time.monotonic() - start
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    rows = json.loads(result.stdout) if result.exit_code in (0, 1) else []
    return result.exit_code, rows, elapsed, result


def row(rows: list[dict[str, Any]], check: str, profile: str | None = None) -> dict[str, Any]:
    found = [r for r in rows if r["check"] == check and profile in (None, r["profile"])]
    assert len(found) == 1, (check, rows)
    return found[0]


def statuses(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["check"]: r["status"] for r in rows}


# --- the good path ------------------------------------------------------------------------------


def test_good_profile_passes_through_mitmdump(write_profiles, mitmdump, far, resolver_guard):
    mitm = mitmdump(upstream_ca=far.ca_path)
    path = write_profiles(f"""
        [profiles.good]
        https_proxy = "{mitm.url}"
        ca_bundle = ["{mitm.ca_cert_path}"]
        check_urls = ["{far.url}"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "good")
    assert code == 0, rows
    got = statuses(rows)
    for check in (
        "config",
        "proxy.dns",
        "proxy.tcp",
        "proxy.http",
        "proxy.auth",
        "target.route",
        "target.tunnel",
        "target.tls",
        "target.http",
    ):
        assert got[check] == "ok", row(rows, check)
    assert not [r for r in rows if r["status"] in ("warn", "fail")], rows
    assert "through proxy" in row(rows, "target.route")["message"]
    assert "401" in row(rows, "target.http")["message"]  # any status means reachable
    # The request really went through mitmdump (which re-encrypted it with the upstream's CA).
    assert ("HEAD", "/v1/models", "kai-run-doctor") in far.seen
    assert "127.0.0.2" in mitm.log_text()
    assert resolver_guard == []


def test_good_profile_as_a_real_subprocess(kai_run, write_profiles, mitmdump, far):
    mitm = mitmdump(upstream_ca=far.ca_path)
    path = write_profiles(f"""
        [profiles.good]
        https_proxy = "{mitm.url}"
        ca_bundle = "{mitm.ca_cert_path}"
        check_urls = ["{far.url}"]
    """)
    plain = kai_run("doctor", "-c", str(path), "-p", "good")
    assert plain.returncode == 0, plain
    assert "profile good" in plain.stdout
    assert "target.tls" in plain.stdout
    assert "0 fail" in plain.stdout
    as_json = kai_run("doctor", "-c", str(path), "-p", "good", "--json")
    assert as_json.returncode == 0, as_json
    assert {r["status"] for r in json.loads(as_json.stdout)} <= {"ok"}


# --- proxy authentication ----------------------------------------------------------------------


def test_no_credentials_gives_407_fail_naming_proxy_auth(write_profiles, mitmdump, far):
    mitm = mitmdump(proxyauth="user:pass", upstream_ca=far.ca_path)
    path = write_profiles(f"""
        [profiles.noauth]
        https_proxy = "{mitm.url}"
        ca_bundle = ["{mitm.ca_cert_path}"]
        check_urls = ["{far.url}"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "noauth")
    assert code == 1
    auth = row(rows, "proxy.auth")
    assert auth["status"] == "fail"
    assert "407" in auth["message"]
    assert "proxy_auth" in auth["hint"]
    tunnel = row(rows, "target.tunnel")
    assert tunnel["status"] == "fail"
    assert "407" in tunnel["message"]
    assert "proxy_auth" in tunnel["hint"]
    assert row(rows, "target.tls")["status"] == "skip"


@pytest.mark.parametrize(("password", "ok"), [("wrong", False), ("pass", True)])
def test_proxy_credentials_wrong_and_right(
    write_profiles, mitmdump, far, monkeypatch, password, ok
):
    mitm = mitmdump(proxyauth="user:pass", upstream_ca=far.ca_path)
    monkeypatch.setenv("KAI_TEST_PROXY_PASSWORD", password)
    path = write_profiles(f"""
        [profiles.auth]
        https_proxy = "{mitm.url}"
        ca_bundle = ["{mitm.ca_cert_path}"]
        check_urls = ["{far.url}"]
        [profiles.auth.proxy_auth]
        username = "user"
        password = {{ env = "KAI_TEST_PROXY_PASSWORD" }}
    """)
    code, rows, _, result = doctor("-c", str(path), "-p", "auth")
    assert password not in result.stdout or (ok is False and password == "wrong")
    assert "user:***@" in row(rows, "proxy.auth")["target"]
    if ok:
        assert code == 0, rows
        assert row(rows, "proxy.auth")["message"].endswith("accepts the credentials")
        assert row(rows, "target.http")["status"] == "ok"
    else:
        assert code == 1
        auth = row(rows, "proxy.auth")
        assert auth["status"] == "fail"
        assert "rejected" in auth["message"]
        assert "proxy_auth.password" in auth["hint"]
        tunnel = row(rows, "target.tunnel")
        assert tunnel["status"] == "fail"
        assert "proxy_auth" in tunnel["hint"]
        assert "pass" not in json.dumps(rows).replace("password", "").replace("passes", "")


# --- trust ---------------------------------------------------------------------------------------


def test_missing_mitmproxy_ca_names_the_issuer_and_the_file(write_profiles, mitmdump, far):
    mitm = mitmdump(upstream_ca=far.ca_path)
    path = write_profiles(f"""
        [profiles.noca]
        https_proxy = "{mitm.url}"
        check_urls = ["{far.url}"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "noca")
    assert code == 1
    tls = row(rows, "target.tls")
    assert tls["status"] == "fail"
    assert "issued by mitmproxy, not in your CA bundle" in tls["message"]
    assert "ca_bundle" in tls["hint"]
    assert "mitmproxy-ca-cert.pem" in tls["hint"]
    assert str(path) in tls["hint"]
    assert row(rows, "target.http")["status"] == "skip"
    assert far.seen == []


def test_expired_ca_file_fails(write_profiles, tmp_path):
    expired = expired_ca_pem(tmp_path / "old-ca.pem", common_name="Old Corp Root")
    path = write_profiles(f"""
        [profiles.old]
        ca_bundle = ["{expired}"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "old")
    assert code == 1
    assert row(rows, "ca.file")["status"] == "ok"
    cert = row(rows, "ca.cert")
    assert cert["status"] == "fail"
    assert "Old Corp Root" in cert["message"]
    assert "expired" in cert["message"]
    assert str(expired) in cert["hint"]


def test_ca_expiring_within_30_days_warns_and_strict_fails(write_profiles, tmp_path):
    soon = expiring_ca_pem(tmp_path / "soon.pem", days=10, common_name="Soon Root")
    path = write_profiles(f"""
        [profiles.soon]
        ca_bundle = ["{soon}"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "soon")
    assert code == 0
    cert = row(rows, "ca.cert")
    assert cert["status"] == "warn"
    assert "expires in" in cert["message"]
    assert cert["hint"]
    strict, _, _, _ = doctor("-c", str(path), "-p", "soon", "--strict")
    assert strict == 1


def test_ca_file_that_is_not_pem_fails_and_targets_are_skipped(write_profiles, tmp_path):
    bad = tmp_path / "not-a-cert.pem"
    bad.write_text("hello\n")
    path = write_profiles(f"""
        [profiles.bad]
        ca_bundle = ["{bad}"]
        check_urls = ["https://{FAR_HOST}:9/"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "bad")
    assert code == 1
    assert row(rows, "config")["status"] == "ok"
    assert row(rows, "ca.file")["status"] == "fail"
    assert row(rows, "target.route")["status"] == "skip"


def test_replace_mode_with_a_public_target_warns(write_profiles, tmp_path, resolver_guard):
    from kai_launch.checks import prepare

    ca = tmp_path / "corp.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    path = write_profiles(f"""
        [profiles.replace]
        ca_bundle = ["{ca}"]
        ca_mode = "replace"
        no_proxy = ["llm.corp.example"]
    """)
    # Offline only: prepare() judges the hosts by name and never touches the network (a public
    # name must not even reach a proxy in these tests).
    urls = ["https://llm.corp.example/v1", "https://api.openai.com/v1/models"]
    (job,) = prepare(str(path), "replace", all_profiles=False, urls=urls, environ={})
    (warn,) = [c for c in job.offline if c.check == "ca.replace-public"]
    assert warn.status == "warn"
    assert "api.openai.com" in warn.message
    assert warn.hint is not None
    assert "ca_mode = append" in warn.hint
    (job,) = prepare(str(path), "replace", all_profiles=False, urls=urls[:1], environ={})
    assert [c.status for c in job.offline if c.check == "ca.replace-public"] == ["ok"]
    assert is_public_host("api.openai.com")
    assert not is_public_host("llm.corp.internal")
    assert not is_public_host("10.1.2.3")
    assert not is_public_host("gpu1.lab.example.org", "lab.example.org,localhost")
    assert resolver_guard == []


# --- failing proxies: fast, and bounded by the timeout ------------------------------------------


def test_closed_port_fails_fast(write_profiles):
    port = closed_port()
    path = write_profiles(f"""
        [profiles.closed]
        https_proxy = "http://127.0.0.1:{port}"
        check_urls = ["https://{FAR_HOST}:9/v1/models"]
    """)
    code, rows, elapsed, _ = doctor("-c", str(path), "-p", "closed", "--timeout", "5")
    assert code == 1
    assert elapsed < 2.0
    tcp = row(rows, "proxy.tcp")
    assert tcp["status"] == "fail"
    assert "refused" in tcp["message"]
    assert "https_proxy" in tcp["hint"]
    assert row(rows, "proxy.http")["status"] == "skip"
    assert row(rows, "target.tunnel")["status"] == "fail"


def test_hanging_proxy_fails_within_the_timeout(write_profiles, hanging_server):
    path = write_profiles(f"""
        [profiles.hang]
        https_proxy = "{hanging_server.url}"
        check_urls = ["https://{FAR_HOST}:9/v1/models"]
    """)
    code, rows, elapsed, _ = doctor("-c", str(path), "-p", "hang", "--timeout", "1")
    assert code == 1
    assert elapsed < 2.5
    assert row(rows, "proxy.tcp")["status"] == "ok"
    http = row(rows, "proxy.http")
    assert http["status"] == "fail"
    assert "within 1 s" in http["message"]
    assert "--timeout" in http["hint"]
    assert row(rows, "target.tunnel")["status"] == "fail"
    assert 900 <= row(rows, "target.tunnel")["duration_ms"] < 2000


def test_target_behind_a_proxy_is_never_resolved_locally(
    write_profiles, hanging_server, resolver_guard
):
    path = write_profiles(f"""
        [profiles.hang]
        https_proxy = "{hanging_server.url}"
        http_proxy = "{hanging_server.url}"
    """)
    code, rows, _, _ = doctor(
        "-c",
        str(path),
        "-p",
        "hang",
        "--timeout",
        "0.5",
        "--url",
        "https://kai-target.invalid/v1/models",
        "--url",
        "http://kai-target.invalid/",
    )
    assert code == 1
    assert [r["message"] for r in rows if r["check"] == "target.route"] == [
        "https://kai-target.invalid/v1/models goes through proxy "
        f"{hanging_server.url} (https_proxy)",
        f"http://kai-target.invalid/ goes through proxy {hanging_server.url} (http_proxy)",
    ]
    assert resolver_guard == []
    # The CONNECT and the absolute-form GET were sent to the proxy, which said nothing.
    assert hanging_server.accepted >= 2


def test_identical_proxies_are_checked_once(write_profiles, hanging_server):
    path = write_profiles(f"""
        [profiles.a]
        https_proxy = "{hanging_server.url}"
        [profiles.b]
        https_proxy = "{hanging_server.url}"
        http_proxy = "{hanging_server.url}"
    """)
    code, rows, _, _ = doctor("-c", str(path), "--all", "--timeout", "0.5")
    assert code == 1
    assert row(rows, "proxy.http", "a")["status"] == "fail"
    assert "http_proxy / https_proxy" in row(rows, "proxy.http", "b")["hint"]
    # One chain for both profiles: one TCP check and one HTTP check.
    assert hanging_server.accepted == 2


def test_ten_hanging_profiles_take_about_one_timeout(write_profiles):
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(HangingServer()) for _ in range(10)]
        body = "".join(
            f"""
            [profiles.p{i}]
            https_proxy = "{s.url}"
            check_urls = ["https://{FAR_HOST}:9/v1/models"]
            """
            for i, s in enumerate(servers)
        )
        path = write_profiles(body)
        code, rows, elapsed, _ = doctor("-c", str(path), "--all", "--timeout", "1")
        # proxy.tcp, proxy.http and the tunnel: three connections each, all at once
        assert [s.accepted for s in servers] == [3] * 10
    assert code == 1
    assert {r["profile"] for r in rows} == {f"p{i}" for i in range(10)}
    hung = [r for r in rows if r["check"] in ("proxy.http", "target.tunnel")]
    assert len(hung) == 20
    assert {r["status"] for r in hung} == {"fail"}
    # Ten profiles in a row would take 10 s or more (bench/doctor_hanging.py times the
    # same thing as a subprocess, start-up included).
    assert elapsed < 2.5, f"doctor --all over 10 hanging proxies took {elapsed:.2f} s"


def test_hanging_profiles_as_a_subprocess(kai_run, write_profiles, hanging_server):
    body = "".join(
        f"""
        [profiles.p{i}]
        https_proxy = "http://user{i}:pw@127.0.0.1:{hanging_server.port}"
        """
        for i in range(3)
    )
    path = write_profiles(body)
    start = time.monotonic()
    run = kai_run("doctor", "-c", str(path), "--all", "--timeout", "1", "--json")
    elapsed = time.monotonic() - start
    assert run.returncode == 1, run
    rows = json.loads(run.stdout)
    assert [r["status"] for r in rows if r["check"] == "proxy.http"] == ["fail"] * 3
    assert elapsed < 4


# --- routes: NO_PROXY and SOCKS ------------------------------------------------------------------


def test_no_proxy_routes_a_loopback_target_direct(write_profiles, upstream):
    path = write_profiles(f"""
        [profiles.split]
        https_proxy = "http://127.0.0.1:{closed_port()}"
        ca_bundle = ["{upstream.ca_pem_path}"]
        check_urls = ["{upstream.url}/v1/models"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "split")
    assert code == 1  # only because the proxy itself is down
    route = row(rows, "target.route")
    assert route["status"] == "ok"
    assert "goes direct" in route["message"]
    assert "localhost" in route["message"]
    assert "(direct)" in row(rows, "target.tunnel")["message"]
    assert row(rows, "target.tls")["status"] == "ok"
    assert row(rows, "target.http")["status"] == "ok"
    assert [r.path for r in upstream.requests] == ["/v1/models"]
    assert upstream.requests[0].method == "HEAD"


@pytest.mark.parametrize("scheme", ["socks5h", "socks5"])
def test_socks5_proxy_handshake_and_tunnel(write_profiles, socks5_server, far, scheme):
    url = socks5_server.url_h if scheme == "socks5h" else socks5_server.url
    path = write_profiles(f"""
        [profiles.socks]
        https_proxy = "{url}"
        ca_bundle = ["{far.ca_path}"]
        check_urls = ["{far.url}"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "socks")
    assert code == 0, rows
    got = statuses(rows)
    assert got["proxy.tcp"] == got["proxy.socks"] == "ok"
    assert "proxy.http" not in got
    assert got["target.route"] == "ok"
    assert "SOCKS5" in row(rows, "proxy.socks")["message"]
    assert got["target.tunnel"] == got["target.tls"] == got["target.http"] == "ok"
    assert [(c.atyp, c.host) for c in socks5_server.connects] == [("ipv4", FAR_HOST)]
    assert far.seen


def test_socks4_is_connected_to_but_not_probed(write_profiles, socks5_server):
    path = write_profiles(f"""
        [profiles.old]
        https_proxy = "socks4://127.0.0.1:{socks5_server.port}"
        check_urls = ["https://{FAR_HOST}:9/v1/models"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "old")
    assert row(rows, "proxy.tcp")["status"] == "ok"
    assert row(rows, "proxy.socks")["status"] == "skip"
    assert row(rows, "target.tunnel")["status"] == "skip"
    assert socks5_server.connects == []
    # httpx and httpx2 cannot create a client with a socks4:// proxy: every request of the
    # openai SDK and langchain would fail, so that is the one failure.
    assert code == 1
    assert [r["check"] for r in rows if r["status"] == "fail"] == ["target.route"]
    route = row(rows, "target.route")
    assert "httpx fails: cannot create a client" in route["message"]
    assert "goes direct" not in route["message"]
    assert "no_proxy" not in route["hint"]
    assert "socks5h://" in route["hint"]


def test_socks_proxy_that_is_not_socks(write_profiles, hanging_server, mitmdump):
    mitm = mitmdump()
    path = write_profiles(f"""
        [profiles.wrong]
        all_proxy = "socks5h://127.0.0.1:{mitm.port}"
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "wrong", "--timeout", "2")
    assert code == 1
    socks = row(rows, "proxy.socks")
    assert socks["status"] == "fail"
    assert socks["hint"]


# --- environment checks --------------------------------------------------------------------------


def test_environment_checks_warn_with_hints(write_profiles, tmp_path, monkeypatch):
    ca = tmp_path / "corp.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    proxy = f"http://127.0.0.1:{closed_port()}"
    path = write_profiles(f"""
        [profiles.risky]
        https_proxy = "{proxy}"
        no_proxy = ["10.0.0.0/8", "llm.corp.test"]
        ca_bundle = ["{ca}"]
        insecure = true
        openai_proxy = true
    """)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1111")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:2222")
    monkeypatch.setenv("HTTPS_PROXY", "http://u:secret-pw@127.0.0.1:3333")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    code, rows, _, result = doctor("-c", str(path), "-p", "risky")
    assert code == 1  # the proxy is down; the environment findings are warnings
    env = {r["check"]: r for r in rows if r["check"].startswith("env.")}
    assert {k: r["status"] for k, r in env.items()} == {
        "env.proxy-case-conflict": "warn",
        "env.parent-override": "warn",
        "env.insecure": "warn",
        "env.openai-proxy-private-ca": "warn",
        "env.no-proxy-cidr": "warn",
    }
    assert all(r["hint"] for r in env.values())
    assert "HTTP_PROXY" in env["env.proxy-case-conflict"]["message"]
    assert "HTTPS_PROXY" in env["env.parent-override"]["message"]
    assert "SSL_CERT_FILE" in env["env.parent-override"]["message"]
    assert "PYTHONHTTPSVERIFY=0" in env["env.insecure"]["message"]
    assert "langchain" in env["env.openai-proxy-private-ca"]["message"]
    assert "openai_proxy = false" in env["env.openai-proxy-private-ca"]["hint"]
    assert "10.0.0.0/8" in env["env.no-proxy-cidr"]["message"]
    assert "httpx" in env["env.no-proxy-cidr"]["message"]
    assert "secret-pw" not in result.stdout


def test_environment_checks_pass_on_a_clean_profile(write_profiles, monkeypatch):
    path = write_profiles("""
        [profiles.clean]
        description = "nothing at all"
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "clean")
    assert code == 0
    assert {r["check"]: r["status"] for r in rows if r["check"].startswith("env.")} == {
        "env.proxy-case-conflict": "ok",
        "env.parent-override": "ok",
        "env.insecure": "ok",
        "env.openai-proxy-private-ca": "ok",
        "env.no-proxy-cidr": "ok",
    }
    assert row(rows, "target.route")["status"] == "skip"
    # The parent's PYTHONHTTPSVERIFY=0 alone is worth a warning too.
    monkeypatch.setenv("PYTHONHTTPSVERIFY", "0")
    code, rows, _, _ = doctor("-c", str(path), "-p", "clean")
    assert row(rows, "env.insecure")["status"] == "warn"


# --- output and exit codes ---------------------------------------------------------------------


def test_json_shape_and_nothing_else_on_stdout(kai_run, write_profiles):
    path = write_profiles(f"""
        [profiles.shape]
        https_proxy = "http://jdoe:hunter2@127.0.0.1:{closed_port()}"
        no_proxy = ["10.0.0.0/8"]
        check_urls = ["https://{FAR_HOST}:9/v1/models"]
    """)
    run = kai_run("doctor", "-c", str(path), "-p", "shape", "--json")
    assert run.returncode == 1
    rows = json.loads(run.stdout)  # the whole of stdout is the JSON list
    assert isinstance(rows, list)
    assert rows
    for r in rows:
        assert set(r) == JSON_KEYS
        assert r["status"] in STATUSES
        assert isinstance(r["duration_ms"], int | float)
        assert isinstance(r["message"], str)
        assert r["message"]
        assert "\n" not in r["message"]
        if r["status"] in ("warn", "fail"):
            assert r["hint"]
    assert "hunter2" not in run.stdout
    assert "hunter2" not in run.stderr
    assert "jdoe:***@" in run.stdout


def test_plain_output_is_grouped_by_profile(write_profiles):
    path = write_profiles(f"""
        [profiles.one]
        https_proxy = "http://127.0.0.1:{closed_port()}"
        [profiles.two]
        description = "fine"
    """)
    result = CliRunner().invoke(app, ["doctor", "-c", str(path), "--all"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines.index("profile one") < lines.index("profile two")
    assert any(line.split()[:2] == ["fail", "proxy.tcp"] for line in lines)
    assert any(line.strip().startswith("hint:") for line in lines)
    assert lines[-1].startswith("doctor: ")


def test_kai_runs_own_errors_exit_2(kai_run, write_profiles, tmp_path):
    path = write_profiles("""
        [profiles.a]
        description = "a"
    """)
    unknown = kai_run("doctor", "-c", str(path), "-p", "nope")
    assert unknown.returncode == 2
    assert "unknown profile 'nope'" in unknown.stderr
    assert unknown.stdout == ""
    missing = kai_run("doctor", "-c", str(tmp_path / "absent.toml"), "-p", "a")
    assert missing.returncode == 2
    assert "not found" in missing.stderr
    both = kai_run("doctor", "-c", str(path), "-p", "a", "--all")
    assert both.returncode == 2
    bad_url = kai_run("doctor", "-c", str(path), "-p", "a", "--url", "ftp://x")
    assert bad_url.returncode == 2
    assert "--url" in bad_url.stderr
    none_selected = kai_run("doctor", "-c", str(path))
    assert none_selected.returncode == 2


def test_broken_profiles_are_failing_config_checks(write_profiles, monkeypatch):
    path = write_profiles("""
        [profiles.orphan]
        extends = "nowhere"
        [profiles.secret]
        [profiles.secret.env]
        TOKEN = { env = "KAI_TEST_UNSET_SECRET" }
        [profiles.badproxy]
        https_proxy = "http://${KAI_TEST_UNSET_HOST}:3128"
        [profiles.fine]
        description = "fine"
    """)
    monkeypatch.delenv("KAI_TEST_UNSET_SECRET", raising=False)
    code, rows, _, _ = doctor("-c", str(path), "--all")
    assert code == 1
    configs = {r["profile"]: r for r in rows if r["check"] == "config"}
    assert configs["orphan"]["status"] == "fail"
    assert "nowhere" in configs["orphan"]["message"]
    assert configs["secret"]["status"] == "fail"
    assert "KAI_TEST_UNSET_SECRET" in configs["secret"]["message"] + str(configs["secret"]["hint"])
    assert configs["badproxy"]["status"] == "fail"
    assert configs["fine"]["status"] == "ok"
    # A broken profile has no further rows; the others are checked as usual.
    assert {r["check"] for r in rows if r["profile"] == "orphan"} == {"config"}


def test_unparsable_file_is_a_failing_config_check(write_profiles):
    path = write_profiles("""
        [profiles.x
        description = "oops"
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "x")
    assert code == 1
    assert rows == [row(rows, "config")]
    assert "invalid TOML" in rows[0]["message"]
    assert "line" in rows[0]["target"]


# --- sidecar ---------------------------------------------------------------------------------------


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_sidecar_runs_for_the_checks_then_stops(write_profiles, mitm_binary, far, tmp_path):
    port = closed_port()
    confdir = tmp_path / "sidecar-conf"  # empty: mitmdump writes its CA there when it starts
    ca = confdir / "mitmproxy-ca-cert.pem"
    command = mitm_sidecar_command(mitm_binary, port, confdir, far.ca_path)
    path = write_profiles(f"""
        [profiles.side]
        https_proxy = "http://127.0.0.1:{port}"
        ca_bundle = ["{ca}"]
        check_urls = ["{far.url}"]

        [profiles.side.sidecar]
        command = {toml_list(command)}
        ready = "127.0.0.1:{port}"
        ready_file = "{ca}"
        ready_timeout = 60
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "side")
    assert code == 0, rows
    assert row(rows, "sidecar")["status"] == "ok"
    assert row(rows, "ca.file")["status"] == "ok"  # the file the sidecar wrote
    assert row(rows, "target.tls")["status"] == "ok"
    assert ("HEAD", "/v1/models", "kai-run-doctor") in far.seen
    assert not _accepts(port), "the sidecar is still running after doctor"


def test_sidecar_that_cannot_start_is_a_failing_check(write_profiles, tmp_path):
    port = closed_port()
    path = write_profiles(f"""
        [profiles.side]
        https_proxy = "http://127.0.0.1:{port}"
        check_urls = ["https://{FAR_HOST}:9/v1/models"]

        [profiles.side.sidecar]
        command = ["{tmp_path / "no-such-proxy"}"]
        ready = "127.0.0.1:{port}"
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "side")
    assert code == 1
    sidecar = row(rows, "sidecar")
    assert sidecar["status"] == "fail"
    assert sidecar["hint"]
    assert row(rows, "config")["status"] == "ok"
    assert {r["status"] for r in rows if r["check"].startswith(("proxy.", "target.t"))} == {"skip"}


def test_abandoned_run_stops_its_chains(write_profiles, hanging_server):
    from kai_launch.checks import Doctor, prepare

    path = write_profiles(f"""
        [profiles.hang]
        https_proxy = "{hanging_server.url}"
        check_urls = ["https://{FAR_HOST}:9/v1/models"]
    """)
    jobs = prepare(str(path), "hang", all_profiles=False, urls=[], environ={})
    run = iter(Doctor(jobs, 1.0, environ={}))
    assert next(run).check == "config"
    while next(run).check != "proxy.tcp":  # the network threads are running now
        pass
    run.close()  # what Ctrl+C does to the renderer's loop
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name.startswith("kai-doctor")]:
            break
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("kai-doctor")]


# --- plain http:// through a proxy: the proxy's own error is not the target's answer -------------


class _StatusHandler(BaseHTTPRequestHandler):
    """Answers every request with the server's `status`, `headers` and `body`."""

    protocol_version = "HTTP/1.1"
    server: StatusServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return self.server.headers.get("Server") or super().version_string()

    def _answer(self) -> None:
        self.server.seen.append((self.command, self.path))
        self.send_response(self.server.status)
        for name, value in self.server.headers.items():
            if name != "Server":  # sent by send_response, from version_string()
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.server.body)

    do_GET = do_HEAD = do_CONNECT = _answer


class StatusServer(ThreadingHTTPServer):
    """Plain HTTP on `host` that gives every request the same answer: an upstream that answers
    502 itself, or (on 127.0.0.1) a filtering proxy that refuses everything. It never connects
    anywhere."""

    daemon_threads = True

    def __init__(
        self, host: str, status: int, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        super().__init__((host, 0), _StatusHandler)
        self.status, self.headers, self.body = status, headers or {}, body
        self.seen: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


@contextlib.contextmanager
def status_server(host: str, status: int, **kwargs: Any) -> Iterator[StatusServer]:
    server = StatusServer(host, status, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_plain_http_the_proxy_cannot_reach_fails_with_the_proxys_reason(write_profiles, mitmdump):
    mitm = mitmdump()
    port = closed_port()
    path = write_profiles(f"""
        [profiles.down]
        http_proxy = "{mitm.url}"
        https_proxy = "{mitm.url}"
    """)
    code, rows, _, _ = doctor(
        "-c",
        str(path),
        "-p",
        "down",
        "--url",
        f"http://{FAR_HOST}:{port}/down",
        "--url",
        f"https://{FAR_HOST}:{port}/down",
    )
    assert code == 1
    http, https = (r for r in rows if r["check"] == "target.http")
    assert http["status"] == "fail", http
    # mitmproxy's own 502 page (Server: mitmproxy) says why, and the row passes that on.
    assert f"could not reach {FAR_HOST}:{port}" in http["message"]
    assert "Connect call failed" in http["message"]
    assert "502 Bad Gateway from the proxy" in http["message"]
    assert "reachable" not in http["message"]
    assert http["hint"].startswith(f"the proxy could not reach {FAR_HOST}:")
    assert "no_proxy" in http["hint"]
    # The same target over https: the CONNECT fails, with the same advice.
    assert https["status"] == "skip"
    tunnel = [r for r in rows if r["check"] == "target.tunnel"][1]
    assert tunnel["status"] == "fail"
    assert "502" in tunnel["message"]
    assert tunnel["hint"].startswith(f"the proxy could not reach {FAR_HOST}:")


def test_plain_http_status_from_the_target_itself_is_not_the_proxys(write_profiles, mitmdump):
    mitm = mitmdump()
    with (
        status_server(FAR_HOST, 502, body=b"backend down") as gateway,
        status_server(FAR_HOST, 403, body=b"no key") as forbidden,
    ):
        path = write_profiles(f"""
            [profiles.up]
            http_proxy = "{mitm.url}"
        """)
        code, rows, _, _ = doctor(
            "-c", str(path), "-p", "up", "--url", f"{gateway.url}/v1", "--url", f"{forbidden.url}/"
        )
    assert gateway.seen == [("GET", "/v1")]
    assert forbidden.seen == [("GET", "/")]
    bad_gateway, refused = (r for r in rows if r["check"] == "target.http")
    # A 502 that mitmproxy passed on: nothing says who wrote it, so doubtful, not failed.
    assert bad_gateway["status"] == "warn", bad_gateway
    assert "either the proxy could not reach it" in bad_gateway["message"]
    assert bad_gateway["hint"]
    # Any other status from the target means it was reached (an API may well say 403).
    assert refused["status"] == "ok", refused
    assert "reachable" in refused["message"]
    assert code == 0


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Server": "squid/6.6", "X-Squid-Error": "ERR_ACCESS_DENIED 0"}, "ERR_ACCESS_DENIED"),
        (
            {"Proxy-Status": 'corp-proxy; error=http_request_denied; details="category: AI"'},
            "http_request_denied (category: AI)",
        ),
    ],
)
def test_plain_http_refused_by_a_filtering_proxy_fails(write_profiles, headers, reason):
    with status_server("127.0.0.1", 403, headers=headers, body=b"<h1>Access denied</h1>") as proxy:
        path = write_profiles(f"""
            [profiles.filtered]
            http_proxy = "{proxy.url}"
        """)
        code, rows, _, _ = doctor(
            "-c", str(path), "-p", "filtered", "--url", "http://kai-target.invalid/v1"
        )
    assert code == 1
    http = row(rows, "target.http")
    assert http["status"] == "fail", http
    assert f"refused to fetch kai-target.invalid: {reason}" in http["message"]
    assert "403 Forbidden from the proxy" in http["message"]
    assert "allow" in http["hint"]
    assert ("GET", "http://kai-target.invalid/v1") in proxy.seen


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (
            502,
            {"server": ["mitmproxy 11.0.2"]},
            b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>"
            b"<p>[Errno 111] Connect call failed (&#x27;127.0.0.2&#x27;, 80)</p></body></html>",
            "[Errno 111] Connect call failed ('127.0.0.2', 80)",
        ),
        (504, {"server": ["mitmproxy 11.0.2"]}, b"", "504 Gateway Timeout"),
        (503, {"x-squid-error": ["ERR_CONNECT_FAIL 111"]}, b"", None),  # reason filled below
        (502, {"proxy-status": ["cdn, corp; error=dns_error"]}, b"", "dns_error"),
        # A target's own answers, passed on: Via is added by every proxy, so it proves nothing.
        (502, {"server": ["nginx"], "via": ["1.1 squid"]}, b"bad gateway", None),
        (502, {}, b"", None),
        (401, {"server": ["mitmproxy 11.0.2"]}, b"", None),
        (200, {"proxy-status": ["corp; error=dns_error"]}, b"", None),
    ],
)
def test_proxy_error_tells_the_proxys_page_from_the_targets(status, headers, body, expected):
    import os

    from kai_launch.checks import proxy_error

    reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(
        status, ""
    )
    if "x-squid-error" in headers:
        expected = f"ERR_CONNECT_FAIL ({os.strerror(111)})"
    assert proxy_error(status, reason, headers, body) == expected


# --- IPv6 CIDR in NO_PROXY: httpx cannot even create a client ------------------------------------


def test_ipv6_cidr_in_no_proxy_fails_and_route_says_httpx_fails(write_profiles, resolver_guard):
    path = write_profiles(f"""
        [profiles.v6]
        https_proxy = "http://127.0.0.1:{closed_port()}"
        no_proxy = ["2001:db8::/32"]
    """)
    code, rows, _, _ = doctor(
        "-c", str(path), "-p", "v6", "--url", "https://kai-target.invalid/v1", "--timeout", "1"
    )
    assert code == 1
    cidr = row(rows, "env.no-proxy-cidr")
    assert cidr["status"] == "fail"
    assert "IPv6 CIDR entry 2001:db8::/32" in cidr["message"]
    assert "cannot create any client" in cidr["message"]
    assert "urllib" in cidr["message"]
    assert "remove 2001:db8::/32" in cidr["hint"]
    assert "list the IPv6 addresses" in cidr["hint"]
    route = row(rows, "target.route")
    assert route["status"] == "fail"
    assert route["message"].startswith(
        "https://kai-target.invalid/v1 goes through proxy http://127.0.0.1:"
    )
    assert (
        "httpx fails: cannot create a client: httpx.Client() raises InvalidURL"
        in (route["message"])
    )
    assert "goes direct" not in route["message"]
    assert "httpx cannot send any request" in route["hint"]
    assert resolver_guard == []


def test_ipv4_cidr_wording_names_urllib_too():
    from kai_launch.checks import OK, WARN, check_environment
    from kai_launch.profiles import Profile

    profile = Profile("p", "/profiles.toml")
    (cidr,) = [
        c
        for c in check_environment(profile, {}, {"NO_PROXY": "localhost,10.0.0.0/8"})
        if c.check == "env.no-proxy-cidr"
    ]
    assert cidr.status == WARN
    assert (
        "CIDR entry 10.0.0.0/8: curl, Go, requests and httpx2 honour it, but httpx "
        "(langchain, openai SDK 1.x/2.x) and urllib ignore it"
    ) in cidr.message
    (clean,) = [c for c in check_environment(profile, {}, {}) if c.check == "env.no-proxy-cidr"]
    assert clean.status == OK


def test_probed_route_applies_cidr_to_ipv4_hosts_only_as_requests_does():
    from kai_launch.checks import probe_route
    from kai_launch.route import route

    proxy = "http://127.0.0.1:3128"
    child = {"https_proxy": proxy, "HTTPS_PROXY": proxy, "NO_PROXY": "2001:db8::/32,10.0.0.0/8"}
    for url, expected in (
        ("https://[2001:db8::5]/", proxy),
        ("https://10.1.2.3/", None),
        ("https://[::1]/", proxy),
    ):
        assert probe_route(url, child) == expected, url
        assert route(url, child).clients["requests"].proxy == expected, url


# --- hints that fit the route ----------------------------------------------------------------------


def test_socks5_target_name_that_does_not_resolve_locally(
    write_profiles, socks5_server, resolver_guard
):
    path = write_profiles(f"""
        [profiles.socks]
        https_proxy = "{socks5_server.url}"
    """)
    code, rows, _, _ = doctor(
        "-c", str(path), "-p", "socks", "--url", "https://kai-target.invalid/v1"
    )
    assert code == 1
    assert row(rows, "proxy.socks")["status"] == "ok"
    tunnel = row(rows, "target.tunnel")
    assert tunnel["status"] == "fail"
    assert "kai-target.invalid" in tunnel["message"]
    assert "the target kai-target.invalid" in tunnel["hint"]
    assert "socks5h://" in tunnel["hint"]
    assert "fix the host" not in tunnel["hint"]
    # socks5:// resolves locally: the lookup was tried (and refused by the guard), nothing sent.
    assert resolver_guard == ["kai-target.invalid"]
    assert socks5_server.connects == []


@pytest.mark.parametrize("proxy", [False, True])
def test_hanging_loopback_service_hint_does_not_blame_no_proxy(
    write_profiles, hanging_server, proxy
):
    setting = f'http_proxy = "http://127.0.0.1:{closed_port()}"' if proxy else ""
    path = write_profiles(f"""
        [profiles.local]
        {setting}
    """)
    url = f"http://127.0.0.1:{hanging_server.port}/v1"
    code, rows, _, _ = doctor("-c", str(path), "-p", "local", "--url", url, "--timeout", "0.5")
    assert code == 1
    http = row(rows, "target.http")
    assert http["status"] == "fail"
    assert "within 0.5 s" in http["message"]
    assert "no_proxy" not in http["hint"]
    assert "is the service running" in http["hint"]


def test_only_a_no_proxy_bypass_is_worth_removing_from_no_proxy(write_profiles):
    from kai_launch.checks import prepare

    path = write_profiles("""
        [profiles.split]
        https_proxy = "http://127.0.0.1:3128"
        no_proxy = ["llm.corp.test"]
        [profiles.plain]
        description = "no proxy at all"
    """)
    urls = ["https://llm.corp.test/v1", "https://127.0.0.1:8000/v1", "https://api.example.test/"]
    (split,) = prepare(str(path), "split", all_profiles=False, urls=urls, environ={})
    assert [(t.proxy is None, t.bypass) for t in split.targets] == [
        (True, True),  # direct because of its no_proxy entry
        (True, False),  # loopback: always direct, whatever no_proxy says
        (False, False),
    ]
    (plain,) = prepare(str(path), "plain", all_profiles=False, urls=urls, environ={})
    assert [t.bypass for t in plain.targets] == [False, False, False]


def test_mitmproxy_ca_hint_names_the_default_as_a_default(write_profiles, mitmdump, far):
    mitm = mitmdump(upstream_ca=far.ca_path)
    path = write_profiles(f"""
        [profiles.noca]
        https_proxy = "{mitm.url}"
        check_urls = ["{far.url}"]
    """)
    _, rows, _, _ = doctor("-c", str(path), "-p", "noca")
    hint = row(rows, "target.tls")["hint"]
    assert hint.startswith(
        "add mitmproxy's CA (by default ~/.mitmproxy/mitmproxy-ca-cert.pem) to ca_bundle"
    )


def test_mitmproxy_ca_hint_names_the_sidecars_confdir(write_profiles, mitm_binary, far, tmp_path):
    port = closed_port()
    confdir = tmp_path / "sidecar-conf"
    command = mitm_sidecar_command(mitm_binary, port, confdir, far.ca_path)
    path = write_profiles(f"""
        [profiles.side]
        https_proxy = "http://127.0.0.1:{port}"
        check_urls = ["{far.url}"]

        [profiles.side.sidecar]
        command = {toml_list(command)}
        ready = "127.0.0.1:{port}"
        ready_timeout = 60
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "side")
    assert code == 1
    tls = row(rows, "target.tls")
    assert tls["status"] == "fail"
    assert "issued by mitmproxy" in tls["message"]
    assert tls["hint"].startswith(
        f"add mitmproxy's CA, {confdir / 'mitmproxy-ca-cert.pem'}, to ca_bundle"
    )


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        ('command = ["mitmdump", "--set=confdir=conf"]', "{base}/conf/mitmproxy-ca-cert.pem"),
        ('command = ["mitmdump", "--set", "confdir=~/m"]', "{home}/m/mitmproxy-ca-cert.pem"),
        (
            'command = ["mitmdump", "--set", "confdir=/x"]\nready_file = "/y/ca.pem"',
            "/y/ca.pem",
        ),
        ('command = ["mitmdump", "-p", "8080"]', None),
        (
            'command = ["mitmdump", "--set", "confdir=/x"]\nready_file = "/y/ready"',
            "/x/mitmproxy-ca-cert.pem",
        ),
    ],
)
def test_mitmproxy_ca_file_of_a_sidecar(write_profiles, tmp_path, sidecar, expected):
    import os

    from kai_launch.checks import _mitmproxy_ca_file
    from kai_launch.config import load_config
    from kai_launch.profiles import resolve_profile

    path = write_profiles(f"""
        [profiles.side]
        https_proxy = "http://127.0.0.1:8080"
        [profiles.side.sidecar]
        {sidecar}
    """)
    profile = resolve_profile(load_config(str(path), dict(os.environ)), "side")
    if expected is not None:
        expected = expected.format(base=tmp_path, home=os.environ["HOME"])
    assert _mitmproxy_ca_file(profile) == expected


# --- ca.sources: the mode and what each source contributed ---------------------------------------


def test_ca_sources_counts_each_source_in_text_and_json(write_profiles, tmp_path):
    from kai_launch.systemca import BUNDLE_FILES
    from kai_launch.trust import certifi_bundle

    os_bundle = next((p for p in BUNDLE_FILES if Path(p).is_file()), None)
    if os_bundle is None:
        pytest.skip("no distribution CA bundle on this machine")
    os_count = Path(os_bundle).read_text(encoding="latin-1").count("BEGIN CERTIFICATE")
    certifi_count = Path(certifi_bundle()).read_text().count("BEGIN CERTIFICATE")
    corp, two = tmp_path / "corp-root.pem", tmp_path / "two.pem"
    trustme.CA().cert_pem.write_to_path(str(corp))
    two.write_text(trustme.CA().cert_pem.bytes().decode() + trustme.CA().cert_pem.bytes().decode())
    path = write_profiles(f"""
        [profiles.sys]
        ca_mode = "system"
        ca_bundle = ["{corp}"]
        [profiles.laptop]
        ca_mode = "system"
        [profiles.app]
        ca_bundle = ["{corp}", "{two}"]
        [profiles.rep]
        ca_mode = "replace"
        ca_bundle = ["{two}"]
        [profiles.none]
        description = "no CA settings: no ca.sources row"
    """)
    code, rows, _, _ = doctor("-c", str(path), "--all")
    assert code == 0

    def sources(profile: str) -> dict[str, Any]:
        r = row(rows, "ca.sources", profile)
        assert r["status"] == "ok"
        assert set(r) == JSON_KEYS | {"data"}
        return r

    sys_row = sources("sys")
    assert sys_row["data"] == {
        "ca_mode": "system",
        "bundle": sys_row["target"],
        "total": os_count + 1,
        "sources": [
            {"kind": "os", "source": os_bundle, "certificates": os_count},
            {"kind": "file", "source": str(corp), "certificates": 1},
        ],
    }
    assert sys_row["message"] == (
        f"ca_mode system: {os_count} roots from {os_bundle} (OS store) + 1 from {corp} "
        f"= {os_count + 1}"
    )
    laptop = sources("laptop")
    assert laptop["data"]["sources"] == [
        {"kind": "os", "source": os_bundle, "certificates": os_count}
    ]
    app_row = sources("app")
    assert [(s["kind"], s["certificates"]) for s in app_row["data"]["sources"]] == [
        ("certifi", certifi_count),
        ("file", 1),
        ("file", 2),
    ]
    assert app_row["message"].startswith(f"ca_mode append: {certifi_count} roots from ")
    assert "(public roots (certifi)) + 1 from" in app_row["message"]
    rep = sources("rep")
    assert rep["data"]["sources"] == [{"kind": "file", "source": str(two), "certificates": 2}]
    assert rep["message"] == f"ca_mode replace: 2 certificates from {two} = 2"
    assert [r for r in rows if r["check"] == "ca.sources" and r["profile"] == "none"] == []

    # The same numbers in the plain text report.
    result = CliRunner().invoke(app, ["doctor", "-c", str(path), "-p", "sys"])
    assert result.exit_code == 0, result.stdout
    (line,) = [x for x in result.stdout.splitlines() if "ca.sources" in x]
    assert f"ca_mode system: {os_count} roots from {os_bundle} (OS store) + 1 from {corp}" in line


def test_ca_sources_fails_when_the_os_store_cannot_be_read(write_profiles, tmp_path, monkeypatch):
    from kai_launch import systemca

    monkeypatch.setattr(systemca, "BUNDLE_FILES", (str(tmp_path / "gone.crt"),))
    monkeypatch.setattr(systemca, "_openssl_default_cafile", lambda: None)
    path = write_profiles(f"""
        [profiles.sys]
        ca_mode = "system"
        check_urls = ["https://{FAR_HOST}:9/"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "sys")
    assert code == 1
    failed = row(rows, "ca.sources")
    assert failed["status"] == "fail"
    assert "no operating system CA bundle" in failed["message"]
    assert "key 'ca_mode'" in failed["message"]
    assert "ca-certificates" in failed["hint"]
    assert "see ca.sources" in row(rows, "config")["message"]
    assert row(rows, "target.route")["status"] == "skip"


def test_system_mode_trusts_the_os_store_in_doctors_tls_probe(
    write_profiles, far, tmp_path, monkeypatch
):
    """The proxy's CA is in the OS store only: doctor's TLS check fails in append mode, with a
    hint towards ca_mode = "system", and passes in system mode."""
    from kai_launch import systemca

    store = tmp_path / "os-bundle.crt"
    store.write_text(far.ca_path.read_text())
    monkeypatch.setattr(systemca, "BUNDLE_FILES", (str(store),))
    path = write_profiles(f"""
        [profiles.app]
        ca_bundle = []
        check_urls = ["{far.url}"]
        [profiles.sys]
        ca_mode = "system"
        check_urls = ["{far.url}"]
    """)
    code, rows, _, _ = doctor("-c", str(path), "-p", "app")
    assert code == 1
    tls = row(rows, "target.tls")
    assert tls["status"] == "fail"
    assert 'ca_mode = "system"' in tls["hint"]
    code, rows, _, _ = doctor("-c", str(path), "-p", "sys")
    assert code == 0, rows
    assert row(rows, "target.tls")["status"] == "ok"
    assert row(rows, "ca.sources")["data"]["sources"][0]["source"] == str(store)


def test_openai_proxy_warns_with_system_mode_too(write_profiles, tmp_path, monkeypatch):
    from kai_launch import systemca

    store = tmp_path / "os-bundle.crt"
    trustme.CA().cert_pem.write_to_path(str(store))
    monkeypatch.setattr(systemca, "BUNDLE_FILES", (str(store),))
    path = write_profiles("""
        [profiles.sys]
        ca_mode = "system"
        https_proxy = "http://127.0.0.1:9"
        openai_proxy = true
    """)
    _, rows, _, _ = doctor("-c", str(path), "-p", "sys")
    assert row(rows, "env.openai-proxy-private-ca")["status"] == "warn"


def test_system_mode_does_not_call_the_parents_os_bundle_an_override(
    write_profiles, tmp_path, monkeypatch
):
    """A shell with SSL_CERT_FILE=<the distribution bundle> loses nothing in system mode."""
    from kai_launch import systemca

    store = tmp_path / "os-bundle.crt"
    trustme.CA().cert_pem.write_to_path(str(store))
    monkeypatch.setattr(systemca, "BUNDLE_FILES", (str(store),))
    monkeypatch.setenv("SSL_CERT_FILE", str(store))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(store))
    path = write_profiles("""
        [profiles.sys]
        ca_mode = "system"
        [profiles.other]
        ca_bundle = ["os-bundle.crt"]
    """)
    _, rows, _, _ = doctor("-c", str(path), "-p", "sys")
    assert row(rows, "env.parent-override")["status"] == "ok"
    _, rows, _, _ = doctor("-c", str(path), "-p", "other")
    override = row(rows, "env.parent-override")
    assert override["status"] == "warn" and "REQUESTS_CA_BUNDLE" in override["message"]
