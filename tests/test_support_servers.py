"""The test servers themselves work: each piece against real clients, loopback only."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import httpx2
import openai
import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID
from support.fixtures import MitmFactory
from support.mitm import (
    ADD_HEADER_ADDON,
    ADD_HEADER_DEFAULT_VALUE,
    ADD_HEADER_NAME,
    MitmDump,
    MitmError,
)
from support.servers import (
    HangingServer,
    OpenAIUpstream,
    Socks5Server,
    closed_port,
    expired_ca_pem,
    expiring_ca_pem,
    leaf_cert_pem,
)


def _session() -> requests.Session:
    # trust_env off: the developer's own proxy variables must not steer these requests.
    s = requests.Session()
    s.trust_env = False
    return s


def _connect_tunnel(
    proxy_port: int, host: str, port: int, auth: str | None = None
) -> tuple[int, bytes, socket.socket]:
    """Send CONNECT to a proxy by hand; returns (status, raw head, socket)."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
    if auth is not None:
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(auth.encode()).decode())
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1])
    return status, head, sock


def _https_get(sock: socket.socket, ctx: ssl.SSLContext, path: str) -> bytes:
    with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


# ----------------------------------------------------------------------------- upstream


def test_upstream_answers_like_openai_and_records(upstream: OpenAIUpstream) -> None:
    s = _session()
    ca = str(upstream.ca_pem_path)
    models = s.get(f"{upstream.base_url}/models", verify=ca, timeout=5)
    assert models.status_code == 200
    assert models.json()["data"][0]["id"] == upstream.model
    missing = s.post(f"{upstream.url}/v2/nothing", json={}, verify=ca, timeout=5)
    assert missing.status_code == 404
    assert "error" in missing.json()
    assert [(r.method, r.path) for r in upstream.requests] == [
        ("GET", "/v1/models"),
        ("POST", "/v2/nothing"),
    ]
    assert upstream.requests[0].header("host") == f"localhost:{upstream.port}"


def test_upstream_serves_every_loopback_spelling(upstream: OpenAIUpstream) -> None:
    hosts = ["localhost", "127.0.0.1"] + (["::1"] if upstream.listens_on_ipv6 else [])
    for host in hosts:
        r = _session().get(
            upstream.url_for(host) + "/v1/models", verify=str(upstream.ca_pem_path), timeout=5
        )
        assert r.status_code == 200, host


def test_plain_upstream(plain_upstream: OpenAIUpstream) -> None:
    assert plain_upstream.url.startswith("http://localhost:")
    r = _session().get(f"{plain_upstream.base_url}/models", timeout=5)
    assert r.status_code == 200
    assert plain_upstream.requests[0].tls is False


def test_upstream_rejects_wrong_api_key(tmp_path: Path) -> None:
    with OpenAIUpstream(workdir=tmp_path, require_api_key="right") as up:
        r = _session().get(f"{up.base_url}/models", verify=str(up.ca_pem_path), timeout=5)
        assert r.status_code == 401


def test_openai_sdk_talks_to_upstream(upstream: OpenAIUpstream) -> None:
    http_client = httpx2.Client(verify=upstream.client_ssl_context(), trust_env=False)
    client = openai.OpenAI(
        base_url=upstream.base_url,
        api_key="x",
        http_client=http_client,
        max_retries=0,
        # Strict: every field the SDK's models require must be present in the answers.
        _strict_response_validation=True,
    )
    completion = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "ping"}]
    )
    assert completion.choices[0].message.content == "pong"
    assert completion.model == "gpt-test"
    assert [m.id for m in client.models.list()] == [upstream.model]
    stream = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "ping"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "pong"
    first = upstream.requests[0]
    assert first.header("authorization") == "Bearer x"
    assert first.json()["messages"] == [{"role": "user", "content": "ping"}]


def test_upstream_records_rejected_handshakes(upstream: OpenAIUpstream) -> None:
    # A client that does not trust the upstream CA fails; the server keeps the reason.
    with pytest.raises(requests.exceptions.SSLError):
        _session().get(upstream.url, timeout=5)
    deadline = time.monotonic() + 2
    while not upstream.tls_errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.tls_errors
    assert upstream.requests == []


# ----------------------------------------------------------------------------- mitmdump


def test_mitmdump_injects_header_and_trusts_upstream(
    mitmdump: MitmFactory, upstream: OpenAIUpstream
) -> None:
    m = mitmdump(upstream_ca=upstream.ca_pem_path, addon=ADD_HEADER_ADDON)
    assert m.ca_cert_path.is_file()
    proxies = {"http": m.url, "https": m.url}
    r = _session().get(
        f"{upstream.base_url}/models", proxies=proxies, verify=str(m.ca_cert_path), timeout=10
    )
    assert r.status_code == 200
    assert upstream.requests[-1].header(ADD_HEADER_NAME) == ADD_HEADER_DEFAULT_VALUE

    # The openai SDK through the same proxy, as the end-to-end tests will do from a child.
    ctx = ssl.create_default_context(cafile=str(m.ca_cert_path))
    with httpx2.Client(proxy=m.url, verify=ctx, trust_env=False) as http_client:
        client = openai.OpenAI(
            base_url=upstream.base_url, api_key="x", http_client=http_client, max_retries=0
        )
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert out.choices[0].message.content == "pong"
    assert upstream.requests[-1].header(ADD_HEADER_NAME) == ADD_HEADER_DEFAULT_VALUE


def test_mitmdump_header_value_from_env_and_plain_http(
    mitmdump: MitmFactory, plain_upstream: OpenAIUpstream
) -> None:
    m = mitmdump(addon=ADD_HEADER_ADDON, env={"KAI_TEST_HEADER_VALUE": "from-env"})
    r = _session().get(f"{plain_upstream.base_url}/models", proxies={"http": m.url}, timeout=10)
    assert r.status_code == 200
    assert plain_upstream.requests[-1].header(ADD_HEADER_NAME) == "from-env"


def test_mitmdump_presents_its_own_ca(mitmdump: MitmFactory, upstream: OpenAIUpstream) -> None:
    m = mitmdump(upstream_ca=upstream.ca_pem_path)
    status, _, sock = _connect_tunnel(m.port, "localhost", upstream.port)
    assert status == 200
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    issuer = x509.load_der_x509_certificate(der).issuer
    assert issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "mitmproxy"
    # A client that trusts only the upstream's CA must fail through this proxy.
    with pytest.raises(requests.exceptions.SSLError):
        _session().get(
            upstream.url, proxies={"https": m.url}, verify=str(upstream.ca_pem_path), timeout=10
        )


def test_mitmdump_without_upstream_ca_refuses_upstream(
    mitmdump: MitmFactory, upstream: OpenAIUpstream
) -> None:
    # Proves `upstream_ca` is what makes the good case work (mitmdump does verify upstream).
    m = mitmdump()
    status, _, sock = _connect_tunnel(m.port, "localhost", upstream.port)
    assert status == 200
    ctx = ssl.create_default_context(cafile=str(m.ca_cert_path))
    answer = _https_get(sock, ctx, "/v1/models")
    # mitmproxy 11 finishes the client handshake anyway and answers 502 with the reason.
    assert answer.startswith(b"HTTP/1.1 502")
    assert b"Certificate verify failed" in answer
    assert upstream.requests == []


def test_mitmdump_proxyauth(mitmdump: MitmFactory, upstream: OpenAIUpstream) -> None:
    m = mitmdump(proxyauth="user:pass", upstream_ca=upstream.ca_pem_path)
    for auth in (None, "user:wrong"):
        status, head, sock = _connect_tunnel(m.port, "localhost", upstream.port, auth)
        sock.close()
        assert status == 407, auth
        assert b"proxy-authenticate" in head.lower()
    status, _, sock = _connect_tunnel(m.port, "localhost", upstream.port, "user:pass")
    sock.close()
    assert status == 200
    assert m.url_with_auth == f"http://user:pass@127.0.0.1:{m.port}"
    r = _session().get(
        f"{upstream.base_url}/models",
        proxies={"https": m.url_with_auth},
        verify=str(m.ca_cert_path),
        timeout=10,
    )
    assert r.status_code == 200


def test_mitmdump_refuses_non_loopback(mitmdump: MitmFactory) -> None:
    m = mitmdump()
    status, head, sock = _connect_tunnel(m.port, "api.example.invalid", 443)
    sock.close()
    assert status == 502
    assert b"x-kai-test-guard: refused" in head.lower()
    r = _session().get("http://api.example.invalid/v1", proxies={"http": m.url}, timeout=10)
    assert r.status_code == 502
    assert r.headers["X-Kai-Test-Guard"] == "refused"


def test_mitmdump_stop_leaves_no_process(mitm_binary: Path, tmp_path: Path) -> None:
    with MitmDump(mitm_binary, confdir=tmp_path / "c") as m:
        pid, was_running = m.pid, m.running
        assert pid is not None and was_running
        assert f"listening at 127.0.0.1:{m.port}" in m.log_text()
    assert not m.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", m.port), timeout=1).close()


def test_mitmdump_start_failure_shows_log(mitm_binary: Path, tmp_path: Path) -> None:
    m = MitmDump(mitm_binary, confdir=tmp_path / "c", addons=[tmp_path / "no-such-addon.py"])
    with pytest.raises(MitmError) as info:
        m.start()
    assert "no-such-addon.py" in str(info.value)
    assert not m.running


# ----------------------------------------------------------------------------- hanging / closed


def test_hanging_server_times_out_client(hanging_server: HangingServer) -> None:
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        _session().get(hanging_server.url, timeout=(2, 0.3))
    # As a proxy: the CONNECT never gets an answer either. (urllib3 bounds the wait for the
    # CONNECT answer with the *connect* timeout, hence 0.3 for both here.)
    with pytest.raises(requests.exceptions.RequestException):
        _session().get(
            "https://localhost:1/", proxies={"https": hanging_server.url}, timeout=(0.3, 0.3)
        )
    assert time.monotonic() - t0 < 3
    assert hanging_server.accepted == 2


def test_hanging_server_close_releases_port() -> None:
    with HangingServer() as server:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=1)
    # The server closed its side (FIN, or RST if close came before accept): no hang.
    conn.settimeout(2)
    with contextlib.suppress(ConnectionResetError):
        assert conn.recv(1) == b""
    conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1)


def test_closed_port_refuses_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port()), timeout=2)
    assert time.monotonic() - t0 < 1


# ----------------------------------------------------------------------------- SOCKS5


def _socks5_connect(proxy_port: int, atyp: int, host: str, port: int) -> tuple[int, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    if atyp == 1:
        addr = socket.inet_pton(socket.AF_INET, host)
    elif atyp == 4:
        addr = socket.inet_pton(socket.AF_INET6, host)
    else:
        addr = bytes([len(host)]) + host.encode()
    sock.sendall(bytes([5, 1, 0, atyp]) + addr + struct.pack("!H", port))
    reply = sock.recv(10)
    return reply[1], sock


@pytest.mark.parametrize(
    ("atyp", "host"), [(3, "localhost"), (1, "127.0.0.1"), (4, "::1")], ids=["domain", "v4", "v6"]
)
def test_socks5_carries_https(
    socks5_server: Socks5Server, upstream: OpenAIUpstream, atyp: int, host: str
) -> None:
    if atyp == 4 and not upstream.listens_on_ipv6:
        pytest.skip("no IPv6 loopback here")
    code, sock = _socks5_connect(socks5_server.port, atyp, host, upstream.port)
    assert code == 0
    answer = _https_get(sock, upstream.client_ssl_context(), "/v1/models")
    assert answer.startswith(b"HTTP/1.1 200")
    kind = {1: "ipv4", 3: "domain", 4: "ipv6"}[atyp]
    assert [(c.atyp, c.host, c.allowed) for c in socks5_server.connects] == [(kind, host, True)]


def test_socks5_refuses_other_destinations(socks5_server: Socks5Server) -> None:
    code, sock = _socks5_connect(socks5_server.port, 3, "api.example.invalid", 443)
    sock.close()
    assert code == 0x02
    assert socks5_server.connects[-1].allowed is False


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
@pytest.mark.parametrize(("flag", "kind"), [("--socks5-hostname", "domain"), ("--socks5", "ipv4")])
def test_socks5_with_curl(
    socks5_server: Socks5Server, upstream: OpenAIUpstream, flag: str, kind: str
) -> None:
    # socks5h vs socks5 as a real client does them: the name goes to the proxy, or an address.
    curl = shutil.which("curl")
    assert curl is not None
    out = subprocess.run(
        [
            curl, "-sS", "--max-time", "10", flag, f"127.0.0.1:{socks5_server.port}",
            "--cacert", str(upstream.ca_pem_path), f"{upstream.base_url}/models",
        ],
        capture_output=True, text=True, env={"PATH": os.environ.get("PATH", "")}, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert upstream.model in out.stdout
    assert socks5_server.connects[-1].atyp in ({kind, "ipv6"} if kind == "ipv4" else {kind})


# ----------------------------------------------------------------------------- certificate files


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _is_ca(cert: x509.Certificate) -> bool:
    return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)


def test_certificate_helpers(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = _load(expired_ca_pem(tmp_path / "expired.pem"))
    assert _is_ca(expired) and expired.not_valid_after_utc < now
    soon = _load(expiring_ca_pem(tmp_path / "soon.pem", days=10))
    assert _is_ca(soon)
    assert dt.timedelta(days=9) < soon.not_valid_after_utc - now <= dt.timedelta(days=10)
    leaf = _load(leaf_cert_pem(tmp_path / "leaf.pem"))
    assert not _is_ca(leaf) and leaf.not_valid_after_utc > now
    # Python's ssl accepts each as a trust file (the defects are for doctor to find, not ssl).
    for name in ("expired.pem", "soon.pem"):
        ssl.create_default_context(cafile=str(tmp_path / name))
