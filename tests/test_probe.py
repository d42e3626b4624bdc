"""The network steps of `doctor`, against real loopback servers: a CONNECT proxy, a SOCKS5
proxy, TLS servers with trustme certificates, and peers that accept and never answer.

The servers live here (not in tests/support) so that this file stands alone; they are small on
purpose and only ever connect to loopback addresses.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme

from kai_launch import probe
from kai_launch.probe import (
    http_request,
    http_via_proxy,
    open_direct,
    open_route,
    open_tunnel,
    parse_proxy_url,
    proxy_speaks_http,
    resolve,
    socks5_connect,
    tcp_connect,
    tls_handshake,
)

TIMEOUT = 0.6
SLACK = 0.5  # the spec: a hanging step fails within timeout + 0.5 s
LOOPBACK_NAMES = {"127.0.0.1", "::1", "localhost"}


# --- tiny servers ---------------------------------------------------------------------------


class Server:
    """A threaded loopback TCP server; `handle(conn)` runs in its own thread per connection."""

    def __init__(self, handle: Callable[[socket.socket], None] | None) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port: int = self.listener.getsockname()[1]
        self.handle = handle
        self.conns: list[socket.socket] = []
        self.errors: list[BaseException] = []
        if handle is not None:
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            assert self.handle is not None
            self.handle(conn)
        except (OSError, ssl.SSLError):
            pass  # clients of these tests hang up mid-way on purpose
        except ValueError:
            pass  # close() shut a socket under a handler in select(): fd -1 at teardown
        except BaseException as e:  # a bug in the test server: surface it in the test
            self.errors.append(e)
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None] | None], Server]]:
    servers: list[Server] = []

    def start(handle: Callable[[socket.socket], None] | None) -> Server:
        server = Server(handle)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    for server in servers:
        assert not server.errors, server.errors


def hanging(conn: socket.socket) -> None:
    """Accept and never answer (until the client gives up)."""
    while conn.recv(4096):
        pass


def answer_400(conn: socket.socket) -> None:
    """What an HTTP server does with bytes it cannot parse (a TLS ClientHello, a SOCKS greeting)."""
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")


def read_head(conn: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while True:
            ready, _, _ = select.select([a, b], [], [], 10)
            if not ready:
                return
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                (b if src is a else a).sendall(data)
    finally:
        a.close()
        b.close()


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConnectProxy:
    """An HTTP CONNECT proxy with optional Basic auth. It refuses (502) any target that is not a
    loopback address, without resolving it, so that no test can reach the outside."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self.requests: list[bytes] = []

    def __call__(self, conn: socket.socket) -> None:
        head = read_head(conn)
        self.requests.append(head)
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            return
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
            if headers.get("proxy-authorization") != expected:
                conn.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="kai"\r\nContent-Length: 0\r\n\r\n'
                )
                return
        if method != "CONNECT":
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nServer: kai-test-proxy\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        if not is_loopback(host):
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = socket.create_connection((host, int(port)), timeout=5)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pipe(conn, upstream)


class Socks5Proxy:
    """A SOCKS5 server (RFC 1928/1929) that records the address type and address it was sent;
    like ConnectProxy it only connects to loopback."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.auth = auth
        self.requests: list[tuple[int, str]] = []

    @staticmethod
    def _exact(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError
            buf += chunk
        return buf

    def __call__(self, conn: socket.socket) -> None:
        _, n = self._exact(conn, 2)
        methods = self._exact(conn, n)
        if self.auth is None:
            conn.sendall(b"\x05\x00")
        elif 2 not in methods:
            conn.sendall(b"\x05\xff")
            return
        else:
            conn.sendall(b"\x05\x02")
            _, ulen = self._exact(conn, 2)
            user = self._exact(conn, ulen).decode()
            (plen,) = self._exact(conn, 1)
            password = self._exact(conn, plen).decode()
            if (user, password) != self.auth:
                conn.sendall(b"\x01\x01")
                return
            conn.sendall(b"\x01\x00")
        _, cmd, _, atyp = self._exact(conn, 4)
        if atyp == 1:
            host = str(ipaddress.IPv4Address(self._exact(conn, 4)))
        elif atyp == 4:
            host = str(ipaddress.IPv6Address(self._exact(conn, 16)))
        else:
            (length,) = self._exact(conn, 1)
            host = self._exact(conn, length).decode()
        port = int.from_bytes(self._exact(conn, 2), "big")
        self.requests.append((atyp, host))
        if cmd != 1 or not is_loopback(host):
            conn.sendall(b"\x05\x04\x00\x01" + bytes(6))  # host unreachable
            return
        upstream = socket.create_connection((host, port), timeout=5)
        conn.sendall(b"\x05\x00\x00\x01" + bytes([127, 0, 0, 1]) + port.to_bytes(2, "big"))
        pipe(conn, upstream)


def tls_server(cert: trustme.LeafCert, *, answer: bytes | None) -> Callable[[socket.socket], None]:
    """A TLS server presenting `cert`; after the handshake it answers one request with
    `answer`, or never answers when `answer` is None."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    def handle(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            read_head(tls)
            if answer is None:
                hanging(tls)
            else:
                tls.sendall(answer)

    return handle


UNAUTHORIZED = b"HTTP/1.1 401 Unauthorized\r\nServer: kai-test-api\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture(scope="module")
def ca_a() -> trustme.CA:
    return trustme.CA(organization_name="Kai Intercept Corp A")


@pytest.fixture(scope="module")
def ca_b() -> trustme.CA:
    return trustme.CA(organization_name="Kai Trusted Corp B")


@pytest.fixture
def ca_a_file(ca_a: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca-a.pem"
    ca_a.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def ca_b_file(ca_b: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca-b.pem"
    ca_b.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def api(serve: Any, ca_a: trustme.CA) -> Server:
    """An HTTPS 'API' on loopback with a certificate from CA A that answers 401."""
    server: Server = serve(
        tls_server(ca_a.issue_cert("localhost", "127.0.0.1"), answer=UNAUTHORIZED)
    )
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    out = fn()
    return out, time.monotonic() - start


# --- URL parsing ----------------------------------------------------------------------------


def test_parse_proxy_url_decodes_credentials_and_defaults_port() -> None:
    p = parse_proxy_url("http://us%40er:p%3Ass@proxy.corp")
    assert (p.scheme, p.host, p.port, p.username, p.password) == (
        "http",
        "proxy.corp",
        80,
        "us@er",
        "p:ss",
    )
    assert parse_proxy_url("proxy.corp:3128").scheme == "http"
    assert parse_proxy_url("socks5h://[::1]").port == 1080
    assert parse_proxy_url("socks5h://[::1]:9").address == "[::1]:9"
    with pytest.raises(ValueError, match="scheme"):
        parse_proxy_url("ftp://x:1")


# --- DNS and TCP ----------------------------------------------------------------------------


def test_resolve_localhost_and_ip_literal() -> None:
    r = resolve("localhost", 80, TIMEOUT)
    assert r.ok, r
    assert "127.0.0.1" in r.detail["addresses"] or "::1" in r.detail["addresses"]
    assert resolve("127.0.0.1", 80, TIMEOUT).detail["addresses"] == ["127.0.0.1"]


def test_tcp_connect_ok(serve: Any) -> None:
    server = serve(hanging)
    r = tcp_connect("127.0.0.1", server.port, TIMEOUT)
    assert r.ok, r
    assert r.detail["address"] == "127.0.0.1"
    assert r.duration_ms < 500


def test_tcp_connect_closed_port_fails_fast() -> None:
    r, elapsed = timed(lambda: tcp_connect("127.0.0.1", free_port(), 5.0))
    assert not r.ok
    assert r.detail["kind"] == probe.KIND_REFUSED
    assert "refused" in r.message
    assert elapsed < 0.5


# --- hanging peers --------------------------------------------------------------------------


def test_connect_response_hang_times_out(serve: Any) -> None:
    server = serve(hanging)
    (sock, r), elapsed = timed(
        lambda: open_tunnel(f"http://127.0.0.1:{server.port}", "localhost", 443, TIMEOUT)
    )
    assert sock is None
    assert r.detail["kind"] == probe.KIND_TIMEOUT, r
    assert TIMEOUT - 0.05 <= elapsed < TIMEOUT + SLACK


def test_connect_response_dripping_peer_still_times_out(serve: Any) -> None:
    # A per-recv timeout would wait forever for a peer that sends one byte now and then; the
    # step deadline must not.
    def drip(conn: socket.socket) -> None:
        conn.recv(4096)
        for ch in b"HTTP/1.1 200 OK\r\n":
            conn.sendall(bytes([ch]))
            time.sleep(0.1)

    server = serve(drip)
    (sock, r), elapsed = timed(
        lambda: open_tunnel(f"http://127.0.0.1:{server.port}", "localhost", 443, TIMEOUT)
    )
    assert sock is None
    assert r.detail["kind"] == probe.KIND_TIMEOUT
    assert elapsed < TIMEOUT + SLACK


def test_tls_handshake_hang_times_out(serve: Any, ca_a_file: str) -> None:
    server = serve(hanging)
    (tls, r), elapsed = timed(
        lambda: tls_handshake(None, "127.0.0.1", server.port, ca_a_file, TIMEOUT)
    )
    assert tls is None
    assert r.detail["kind"] == probe.KIND_TIMEOUT, r
    assert "TLS handshake" in r.message
    assert elapsed < TIMEOUT + SLACK


def test_http_response_hang_times_out(serve: Any, ca_a: trustme.CA, ca_a_file: str) -> None:
    server = serve(tls_server(ca_a.issue_cert("localhost"), answer=None))
    tls, r = tls_handshake(None, "localhost", server.port, ca_a_file, TIMEOUT)
    assert tls is not None, r
    with tls:
        result, elapsed = timed(lambda: http_request(tls, "localhost", "/", TIMEOUT))
    assert not result.ok
    assert result.detail["kind"] == probe.KIND_TIMEOUT
    assert elapsed < TIMEOUT + SLACK


def test_socks_handshake_hang_times_out(serve: Any) -> None:
    server = serve(hanging)
    (sock, r), elapsed = timed(
        lambda: socks5_connect(
            f"socks5h://127.0.0.1:{server.port}", "localhost", 443, TIMEOUT, remote_dns=True
        )
    )
    assert sock is None
    assert r.detail["kind"] == probe.KIND_TIMEOUT
    assert elapsed < TIMEOUT + SLACK


def test_many_hanging_probes_in_threads_take_one_timeout(serve: Any, ca_a_file: str) -> None:
    # What `doctor --all` relies on: probes share nothing, so N hanging ones cost one timeout.
    servers = [serve(hanging) for _ in range(10)]

    def one(port: int) -> bool:
        _, r = open_tunnel(f"http://127.0.0.1:{port}", "localhost", 443, TIMEOUT)
        return r.detail.get("kind") == probe.KIND_TIMEOUT

    start = time.monotonic()
    with ThreadPoolExecutor(len(servers)) as pool:
        results = list(pool.map(one, [s.port for s in servers]))
    assert all(results)
    assert time.monotonic() - start < TIMEOUT + SLACK


# --- HTTP CONNECT proxy ---------------------------------------------------------------------


def test_tunnel_tls_and_http_through_proxy(serve: Any, api: Server, ca_a_file: str) -> None:
    proxy_handler = ConnectProxy()
    proxy = serve(proxy_handler)
    proxy_url = f"http://127.0.0.1:{proxy.port}"

    sock, r = open_tunnel(proxy_url, "localhost", api.port, TIMEOUT)
    assert sock is not None, r
    assert r.ok and r.detail["status"] == 200 and r.detail["auth_sent"] is False
    assert proxy_handler.requests[0].startswith(f"CONNECT localhost:{api.port} HTTP/1.1".encode())

    tls, t = tls_handshake(sock, "localhost", api.port, ca_a_file, TIMEOUT)
    assert tls is not None, t
    assert t.detail["issuer_short"].startswith("O=Kai Intercept Corp A, OU=Testing CA #")
    assert t.detail["days_left"] > 0
    with tls:
        h = http_request(tls, "localhost", "/v1/models", TIMEOUT, port=api.port)
    assert h.ok, h  # any status means reachable
    assert h.detail["status"] == 401
    assert h.detail["server"] == "kai-test-api"


def test_tunnel_proxy_auth(serve: Any, api: Server) -> None:
    proxy = serve(ConnectProxy(auth=("kai", "s3cr:et@")))

    sock, r = open_tunnel(f"http://127.0.0.1:{proxy.port}", "localhost", api.port, TIMEOUT)
    assert sock is None
    assert r.detail["kind"] == probe.KIND_PROXY_AUTH
    assert r.detail["status"] == 407 and r.detail["auth_sent"] is False
    assert r.detail["auth_schemes"] == ["Basic"]
    assert "no credentials" in r.message

    wrong = f"http://kai:nope@127.0.0.1:{proxy.port}"
    sock, r = open_tunnel(wrong, "localhost", api.port, TIMEOUT)
    assert sock is None
    assert r.detail["status"] == 407 and r.detail["auth_sent"] is True
    assert "rejected the credentials" in r.message
    assert "nope" not in r.message and "nope" not in str(r.detail)

    right = f"http://kai:s3cr%3Aet%40@127.0.0.1:{proxy.port}"
    sock, r = open_tunnel(right, "localhost", api.port, TIMEOUT)
    assert sock is not None, r
    sock.close()
    assert r.ok and r.detail["auth_sent"] is True


def test_tunnel_target_is_resolved_by_the_proxy_only(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = ConnectProxy()
    proxy = serve(handler)
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def spy(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    sock, r = open_tunnel(f"http://127.0.0.1:{proxy.port}", "api.kai-probe.invalid", 443, TIMEOUT)
    assert sock is None
    assert r.detail["kind"] == probe.KIND_PROXY_STATUS and r.detail["status"] == 502
    assert "could not reach" in r.message
    assert handler.requests[0].startswith(b"CONNECT api.kai-probe.invalid:443 HTTP/1.1")
    assert not any("invalid" in h for h in looked_up)


def test_http_via_proxy_uses_absolute_form(serve: Any) -> None:
    handler = ConnectProxy()
    proxy = serve(handler)
    r = http_via_proxy(f"http://127.0.0.1:{proxy.port}", "http://model.invalid:8000/v1?x=1", 1)
    assert r.ok and r.detail["status"] == 400
    assert handler.requests[0].startswith(b"GET http://model.invalid:8000/v1?x=1 HTTP/1.1")

    authed = serve(ConnectProxy(auth=("u", "p")))
    r = http_via_proxy(f"http://127.0.0.1:{authed.port}", "http://model.invalid/", 1)
    assert not r.ok and r.detail["kind"] == probe.KIND_PROXY_AUTH


def test_proxy_speaks_http(serve: Any, api: Server) -> None:
    handler = ConnectProxy()
    proxy = serve(handler)
    r = proxy_speaks_http(f"http://127.0.0.1:{proxy.port}", TIMEOUT)
    assert r.ok, r
    assert r.detail["status"] == 400 and r.detail["server"] == "kai-test-proxy"
    assert handler.requests[0].startswith(f"GET http://127.0.0.1:{proxy.port}/ HTTP/1.1".encode())

    # A TLS port given as an http:// proxy. OpenSSL servers hang up on plain text; others
    # answer with a TLS alert, which the message recognises.
    r = proxy_speaks_http(f"http://127.0.0.1:{api.port}", TIMEOUT)
    assert not r.ok and r.detail["kind"] in (probe.KIND_NOT_HTTP, probe.KIND_CLOSED)
    alert = serve(lambda conn: (conn.recv(4096), conn.sendall(b"\x15\x03\x03\x00\x02\x02\x46")))
    r = proxy_speaks_http(f"http://127.0.0.1:{alert.port}", TIMEOUT)
    assert not r.ok and r.detail["kind"] == probe.KIND_NOT_HTTP
    assert "answered with TLS" in r.message

    closer = serve(lambda conn: conn.recv(4096))
    r = proxy_speaks_http(f"http://127.0.0.1:{closer.port}", TIMEOUT)
    assert not r.ok and r.detail["kind"] == probe.KIND_CLOSED

    r = proxy_speaks_http(f"http://127.0.0.1:{free_port()}", TIMEOUT)
    assert not r.ok and r.detail["kind"] == probe.KIND_REFUSED


def test_unsupported_and_bad_proxy_urls() -> None:
    sock, r = open_tunnel("https://127.0.0.1:1", "localhost", 443, TIMEOUT)
    assert sock is None and r.detail["kind"] == probe.KIND_UNSUPPORTED
    sock, r = open_tunnel("http://127.0.0.1:99999", "localhost", 443, TIMEOUT)
    assert sock is None and r.detail["kind"] == probe.KIND_BAD_URL


# --- TLS verification -----------------------------------------------------------------------


def test_untrusted_certificate_names_its_issuer(api: Server, ca_b_file: str) -> None:
    tls, r = tls_handshake(None, "localhost", api.port, ca_b_file, TIMEOUT)
    assert tls is None
    assert r.detail["kind"] == probe.KIND_UNTRUSTED
    assert "Kai Intercept Corp A" in r.message
    assert r.message.startswith("certificate issued by ")
    assert r.message.endswith(f"is not trusted by {ca_b_file}")
    assert "Kai Intercept Corp A" in r.detail["issuer"]
    assert r.detail["verify_code"] == 20


def test_untrusted_issuer_found_by_second_handshake_through_tunnel(
    serve: Any, api: Server, ca_b_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python < 3.10 style: the failed handshake exposes no chain, so the issuer comes from an
    # unverified handshake over a fresh tunnel.
    monkeypatch.setattr(probe, "_unverified_chain", lambda ssock: [])
    proxy = serve(ConnectProxy())
    proxy_url = f"http://127.0.0.1:{proxy.port}"
    sock, _ = open_tunnel(proxy_url, "localhost", api.port, TIMEOUT)
    tls, r = tls_handshake(
        sock,
        "localhost",
        api.port,
        ca_b_file,
        TIMEOUT,
        reopen=lambda: open_route(proxy_url, "localhost", api.port, TIMEOUT)[0],
    )
    assert tls is None
    assert r.detail["kind"] == probe.KIND_UNTRUSTED
    assert "Kai Intercept Corp A" in r.message


def test_expired_certificate(serve: Any, ca_a: trustme.CA, ca_a_file: str) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert = ca_a.issue_cert("localhost", not_before=past - dt.timedelta(days=30), not_after=past)
    server = serve(tls_server(cert, answer=UNAUTHORIZED))
    tls, r = tls_handshake(None, "localhost", server.port, ca_a_file, TIMEOUT)
    assert tls is None
    assert r.detail["kind"] == probe.KIND_EXPIRED
    assert f"expired (on {past.date()})" in r.message


def test_hostname_mismatch(serve: Any, ca_a: trustme.CA, ca_a_file: str) -> None:
    server = serve(tls_server(ca_a.issue_cert("other.kai-probe.invalid"), answer=UNAUTHORIZED))
    tls, r = tls_handshake(None, "localhost", server.port, ca_a_file, TIMEOUT)
    assert tls is None
    assert r.detail["kind"] == probe.KIND_HOSTNAME
    assert "other.kai-probe.invalid" in r.message and "not localhost" in r.message


def test_self_signed_leaf(serve: Any, tmp_path: Path, ca_b_file: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kai-selfie")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "selfie.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pem))

    def handle(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            read_head(tls)

    server = serve(handle)
    tls, r = tls_handshake(None, "localhost", server.port, ca_b_file, TIMEOUT)
    assert tls is None
    assert r.detail["kind"] == probe.KIND_SELF_SIGNED
    assert "self-signed (kai-selfie)" in r.message


def test_plain_http_port_is_not_tls(serve: Any, ca_a_file: str) -> None:
    server = serve(answer_400)
    tls, r = tls_handshake(None, "localhost", server.port, ca_a_file, TIMEOUT)
    assert tls is None
    assert r.detail["kind"] == probe.KIND_TLS, r
    assert "did not answer with TLS" in r.message


def test_missing_ca_file_fails_without_network(tmp_path: Path) -> None:
    tls, r = tls_handshake(None, "localhost", free_port(), str(tmp_path / "nope.pem"), TIMEOUT)
    assert tls is None
    assert r.detail["kind"] == probe.KIND_CA_FILE and "not found" in r.message
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    tls, r = tls_handshake(None, "localhost", free_port(), str(empty), TIMEOUT)
    assert r.detail["kind"] == probe.KIND_CA_FILE and "no usable certificate" in r.message


def test_direct_route(api: Server, ca_a_file: str) -> None:
    sock, r = open_route(None, "localhost", api.port, TIMEOUT)
    assert sock is not None and r.ok
    tls, t = tls_handshake(sock, "localhost", api.port, ca_a_file, TIMEOUT)
    assert tls is not None, t
    with tls:
        assert http_request(tls, "localhost", "/", TIMEOUT).detail["status"] == 401
    sock, r = open_direct("localhost", free_port(), TIMEOUT)
    assert sock is None and r.detail["kind"] == probe.KIND_REFUSED


# --- SOCKS5 ---------------------------------------------------------------------------------


def test_socks5h_sends_the_name_and_socks5_an_ip(serve: Any, api: Server, ca_a_file: str) -> None:
    handler = Socks5Proxy()
    proxy = serve(handler)

    sock, r = socks5_connect(
        f"socks5h://127.0.0.1:{proxy.port}", "localhost", api.port, TIMEOUT, remote_dns=True
    )
    assert sock is not None, r
    assert handler.requests[-1] == (3, "localhost")
    assert r.detail["address_type"] == "domain"
    tls, t = tls_handshake(sock, "localhost", api.port, ca_a_file, TIMEOUT)
    assert tls is not None, t
    with tls:
        assert http_request(tls, "localhost", "/", TIMEOUT).detail["status"] == 401

    sock, r = open_route(f"socks5://127.0.0.1:{proxy.port}", "localhost", api.port, TIMEOUT)
    assert sock is not None, r
    sock.close()
    atyp, host = handler.requests[-1]
    assert atyp in (1, 4) and ipaddress.ip_address(host).is_loopback
    assert r.detail["address_type"] in ("ipv4", "ipv6")


def test_socks5_refused_target(serve: Any) -> None:
    proxy = serve(Socks5Proxy())
    sock, r = socks5_connect(
        f"socks5h://127.0.0.1:{proxy.port}", "kai-probe.invalid", 443, TIMEOUT, remote_dns=True
    )
    assert sock is None
    assert r.detail["kind"] == probe.KIND_PROXY_STATUS and "host unreachable" in r.message


def test_socks5_auth(serve: Any, api: Server) -> None:
    proxy = serve(Socks5Proxy(auth=("kai", "pw")))
    base = f"127.0.0.1:{proxy.port}"

    sock, r = socks5_connect(f"socks5h://{base}", "localhost", api.port, TIMEOUT, remote_dns=True)
    assert sock is None and r.detail["kind"] == probe.KIND_PROXY_AUTH
    assert r.detail["auth_sent"] is False

    sock, r = socks5_connect(
        f"socks5h://kai:bad@{base}", "localhost", api.port, TIMEOUT, remote_dns=True
    )
    assert sock is None and r.detail["kind"] == probe.KIND_PROXY_AUTH
    assert "rejected" in r.message

    sock, r = socks5_connect(
        f"socks5h://kai:pw@{base}", "localhost", api.port, TIMEOUT, remote_dns=True
    )
    assert sock is not None, r
    sock.close()


def test_socks5_url_pointing_at_an_http_proxy(serve: Any) -> None:
    proxy = serve(answer_400)
    sock, r = socks5_connect(
        f"socks5h://127.0.0.1:{proxy.port}", "localhost", 443, TIMEOUT, remote_dns=True
    )
    assert sock is None
    assert r.detail["kind"] == probe.KIND_NOT_SOCKS
    assert "answered with HTTP" in r.message


# --- against a real mitmdump (optional) -----------------------------------------------------


def test_mitmproxy_interception_names_mitmproxy(
    api: Server, ca_a_file: str, tmp_path: Path, mitm_binary: Path
) -> None:
    port = free_port()
    confdir = tmp_path / "mitm"
    proc = subprocess.Popen(
        [
            str(mitm_binary),
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(port),
            "--set",
            f"confdir={confdir}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={ca_a_file}",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not tcp_connect("127.0.0.1", port, 0.5).ok:
            assert proc.poll() is None, "mitmdump exited"
            assert time.monotonic() < deadline, "mitmdump did not start"
            time.sleep(0.1)
        proxy_url = f"http://127.0.0.1:{port}"
        assert proxy_speaks_http(proxy_url, 2).ok

        # Trusting only the upstream's CA: mitmproxy's certificate is the one presented.
        sock, r = open_tunnel(proxy_url, "localhost", api.port, 2)
        assert sock is not None, r
        tls, t = tls_handshake(sock, "localhost", api.port, ca_a_file, 2)
        assert tls is None
        assert t.detail["kind"] == probe.KIND_UNTRUSTED
        assert t.message == f"certificate issued by mitmproxy is not trusted by {ca_a_file}"

        # Trusting mitmproxy's CA: the request goes through, and the API's 401 comes back.
        sock, r = open_tunnel(proxy_url, "localhost", api.port, 2)
        mitm_ca = str(confdir / "mitmproxy-ca-cert.pem")
        tls, t = tls_handshake(sock, "localhost", api.port, mitm_ca, 2)
        assert tls is not None, t
        with tls:
            h = http_request(tls, "localhost", "/", 2, port=api.port)
        assert h.detail["status"] == 401
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(confdir, ignore_errors=True)
