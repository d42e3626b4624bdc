"""One network step at a time: resolve, connect, tunnel, TLS handshake, HTTP request.

These are the building blocks of `kai-run doctor`. Each public function does one step, never
raises for a network problem, and returns a `ProbeResult` whose `detail["kind"]` says what kind of
failure it was (one of the `KIND_*` constants), so that the caller can choose the hint.

Rules every function here follows:
- One `timeout` bounds the whole step, including every read: a peer that accepts and never
  answers (or drips a byte at a time) fails after about `timeout` seconds. Each step that opens a
  connection on its own (for example `tls_handshake` without a socket) gives that connection its
  own `timeout` too, as the doctor spec asks for one timeout "per network step".
- A target reached through a proxy is never resolved locally (only `socks5://`, which means
  "resolve locally", does): corporate machines often cannot resolve outside names, and a local
  lookup would leak the name to the local resolver.
- No global state: every call builds its own sockets and SSL contexts, so callers may run many
  probes at once in threads.
- Credentials from a proxy URL go to the proxy only; they never appear in a message or `detail`.
- Only the standard library is imported at module level; naming the issuer of a certificate the
  server presented needs `kai_launch.certinfo` (cryptography), imported only on that path.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

USER_AGENT: Final = "kai-run-doctor"

# Failure kinds, in `ProbeResult.detail["kind"]`.
KIND_BAD_URL: Final = "bad_url"
KIND_UNSUPPORTED: Final = "unsupported"
KIND_DNS: Final = "dns"
KIND_TIMEOUT: Final = "timeout"
KIND_REFUSED: Final = "refused"
KIND_CLOSED: Final = "closed"  # the peer closed or reset the connection mid-step
KIND_NETWORK: Final = "network"  # any other OS-level error (unreachable network...)
KIND_NOT_HTTP: Final = "not_http"  # something answered, but not HTTP
KIND_NOT_SOCKS: Final = "not_socks"
KIND_PROXY_AUTH: Final = "proxy_auth"  # 407, or SOCKS authentication refused
KIND_PROXY_STATUS: Final = "proxy_status"  # the proxy refused the tunnel (403, 502...)
KIND_CA_FILE: Final = "ca_file"  # the CA file itself cannot be loaded
KIND_UNTRUSTED: Final = "untrusted"  # chain does not lead to a CA in the bundle
KIND_SELF_SIGNED: Final = "self_signed"
KIND_EXPIRED: Final = "expired"
KIND_NOT_YET_VALID: Final = "not_yet_valid"
KIND_HOSTNAME: Final = "hostname_mismatch"
KIND_VERIFY: Final = "verify_failed"  # any other verification error
KIND_TLS: Final = "tls"  # handshake failed for a reason other than verification

# OpenSSL X509_V_ERR_* codes, from SSLCertVerificationError.verify_code.
_VERIFY_KINDS: Final = {
    2: KIND_UNTRUSTED,  # unable to get issuer certificate
    9: KIND_NOT_YET_VALID,
    10: KIND_EXPIRED,
    18: KIND_SELF_SIGNED,  # depth zero self-signed: the leaf signed itself
    19: KIND_UNTRUSTED,  # self-signed certificate in chain: server sent a root we don't trust
    20: KIND_UNTRUSTED,  # unable to get local issuer certificate (the usual mitmproxy case)
    21: KIND_UNTRUSTED,  # unable to verify the first certificate
    62: KIND_HOSTNAME,
    64: KIND_HOSTNAME,  # IP address mismatch (target given as an IP literal)
}

_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
_STATUS_LINE: Final = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: ([^\r\n]*))?")
_HEAD_LIMIT: Final = 64 * 1024


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one step. `detail` is JSON-friendly; on failure it holds `kind`."""

    ok: bool
    message: str
    duration_ms: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProxyURL:
    """A proxy URL split into parts; user and password are percent-decoded."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        """`host:port` for messages (never the credentials)."""
        return _hostport(self.host, self.port)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None


def parse_proxy_url(url: str) -> ProxyURL:
    """Split a proxy URL. A URL without a scheme is `http://`, as requests, httpx and curl read it.

    The default port is the scheme's (80 for http, as urllib3 and httpx use; curl would use
    1080), 1080 for SOCKS. Raises ValueError with a message fit for the user.
    """
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported proxy scheme {scheme!r}")
    if not parts.hostname:
        raise ValueError("proxy URL has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as e:  # out of range or not a number
        raise ValueError(f"proxy URL has a bad port: {e}") from None
    return ProxyURL(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


# --- small helpers --------------------------------------------------------------------------


class _Deadline:
    """The end of a step; every blocking call gets what is left of it as its socket timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.start = time.monotonic()
        self.end = self.start + timeout

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    def arm(self, sock: socket.socket) -> None:
        sock.settimeout(self.left())

    def ms(self) -> float:
        return round((time.monotonic() - self.start) * 1000, 1)


class _Fail(Exception):
    """A classified failure inside a step; becomes a ProbeResult at the public boundary."""

    def __init__(self, kind: str, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ascii_host(host: str) -> str:
    # Request lines and SOCKS domain names are ASCII: an internationalised name goes in its
    # IDNA (punycode) form, as every HTTP client sends it.
    try:
        return host.encode("ascii").decode()
    except UnicodeEncodeError:
        return host.encode("idna").decode("ascii")


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"


def _os_failure(e: OSError, what: str, timeout: float) -> _Fail:
    """Classify a socket-level error that happened while doing `what`."""
    if isinstance(e, TimeoutError):
        return _Fail(KIND_TIMEOUT, f"{what}: no answer within {_fmt_s(timeout)}")
    if isinstance(e, ConnectionRefusedError):
        return _Fail(KIND_REFUSED, f"{what}: connection refused")
    if isinstance(e, socket.gaierror):
        return _Fail(KIND_DNS, f"{what}: name does not resolve ({e.strerror})")
    if isinstance(e, ConnectionError | ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return _Fail(KIND_CLOSED, f"{what}: connection closed by the peer")
    return _Fail(KIND_NETWORK, f"{what}: {e.strerror or e}")


def _result(ok: bool, message: str, deadline: _Deadline, **detail: Any) -> ProbeResult:
    return ProbeResult(ok=ok, message=message, duration_ms=deadline.ms(), detail=detail)


def _failed(fail: _Fail, deadline: _Deadline, **detail: Any) -> ProbeResult:
    return _result(False, fail.message, deadline, **{**detail, **fail.detail, "kind": fail.kind})


def _getaddrinfo(host: str, port: int, deadline: _Deadline) -> list[Any]:
    """getaddrinfo bounded by the deadline.

    getaddrinfo has no timeout of its own, so it runs in a daemon thread that is abandoned when
    the deadline passes (it cannot be cancelled; daemon, so that it never holds up exit; not an
    executor, whose threads are joined at exit). IP literals skip the thread.
    """
    if is_ip(host):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    box: list[tuple[list[Any] | None, OSError | None]] = []

    def work() -> None:
        try:
            box.append((socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), None))
        except OSError as e:
            box.append((None, e))

    thread = threading.Thread(target=work, name=f"kai-resolve-{host}", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if not box:
        raise TimeoutError
    infos, error = box[0]
    if error is not None:
        raise error
    assert infos is not None
    return infos


def _connect(host: str, port: int, deadline: _Deadline) -> socket.socket:
    """TCP-connect to the first address of `host` that accepts, within the deadline."""
    last: OSError | None = None
    for family, type_, proto, _, addr in _getaddrinfo(host, port, deadline):
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(deadline.left())
            sock.connect(addr)
        except OSError as e:
            sock.close()
            last = e
            continue
        return sock
    raise last or OSError(f"no address for {host}")


def _read_head(sock: socket.socket, deadline: _Deadline) -> bytes:
    """Read up to the end of an HTTP response head (or until the peer closes)."""
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < _HEAD_LIMIT:
        deadline.arm(sock)
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def _recv_exact(sock: socket.socket, n: int, deadline: _Deadline) -> bytes:
    buf = b""
    while len(buf) < n:
        deadline.arm(sock)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("connection closed by the peer")
        buf += chunk
    return buf


def _not_http_note(data: bytes) -> str:
    if data[:1] in (b"\x15", b"\x16") and data[1:2] == b"\x03":
        return "it answered with TLS: should the URL be https://?"
    if data[:1] == b"\x05":
        return "it answered like a SOCKS5 proxy: should the URL be socks5h://?"
    return f"first bytes {data[:16]!r}"


@dataclass(frozen=True)
class _Response:
    status: int
    reason: str
    headers: dict[str, list[str]]

    def first(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def _parse_head(data: bytes, who: str) -> _Response:
    if not data:
        raise _Fail(KIND_CLOSED, f"{who} closed the connection without answering")
    match = _STATUS_LINE.match(data)
    if not match:
        raise _Fail(KIND_NOT_HTTP, f"{who} did not answer with HTTP ({_not_http_note(data)})")
    headers: dict[str, list[str]] = {}
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            key = name.strip().decode("latin-1").lower()
            headers.setdefault(key, []).append(value.strip().decode("latin-1"))
    reason = (match.group(2) or b"").decode("latin-1").strip()
    return _Response(int(match.group(1)), reason, headers)


def _basic_auth(proxy: ProxyURL) -> str:
    # Latin-1 when possible, as requests and urllib3 encode it; UTF-8 otherwise (RFC 7617).
    raw = f"{proxy.username}:{proxy.password or ''}"
    try:
        data = raw.encode("latin-1")
    except UnicodeEncodeError:
        data = raw.encode("utf-8")
    return "Basic " + base64.b64encode(data).decode("ascii")


def _auth_schemes(resp: _Response) -> list[str]:
    return [v.split(None, 1)[0] for v in resp.headers.get("proxy-authenticate", []) if v.strip()]


def _proxy_auth_failure(resp: _Response, proxy: ProxyURL, *, auth_sent: bool) -> _Fail:
    schemes = _auth_schemes(resp)
    if not auth_sent:
        message = f"proxy {proxy.address} requires authentication (407); no credentials were sent"
    else:
        message = f"proxy {proxy.address} rejected the credentials (407)"
        if schemes and not any(s.lower() == "basic" for s in schemes):
            message += f"; it asks for {', '.join(schemes)}, which kai-run cannot send"
    return _Fail(KIND_PROXY_AUTH, message, status=407, auth_sent=auth_sent, auth_schemes=schemes)


def _parse_proxy(proxy_url: str, schemes: tuple[str, ...]) -> ProxyURL:
    try:
        proxy = parse_proxy_url(proxy_url)
    except ValueError as e:
        raise _Fail(KIND_BAD_URL, f"bad proxy URL: {e}") from None
    if proxy.scheme not in schemes:
        # An https:// proxy needs TLS to the proxy and then TLS inside that tunnel, which the
        # stdlib ssl module only does through memory BIOs; not probed for now.
        raise _Fail(
            KIND_UNSUPPORTED,
            f"{proxy.scheme}:// proxies are not probed by this step ({proxy.address})",
        )
    return proxy


# --- public steps ---------------------------------------------------------------------------


def resolve(host: str, port: int, timeout: float) -> ProbeResult:
    """Resolve `host` with the system resolver. detail: `addresses` (unique, resolver order)."""
    deadline = _Deadline(timeout)
    try:
        infos = _getaddrinfo(host, port, deadline)
    except OSError as e:
        return _failed(_os_failure(e, f"DNS lookup of {host}", timeout), deadline, host=host)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    shown = ", ".join(addresses[:3]) + (", ..." if len(addresses) > 3 else "")
    return _result(True, f"{host} resolves to {shown}", deadline, host=host, addresses=addresses)


def open_direct(host: str, port: int, timeout: float) -> tuple[socket.socket | None, ProbeResult]:
    """Connect straight to `host:port` (a target that bypasses the proxy, or the proxy itself).

    On success the caller owns the socket. detail: `address` (the IP that answered), `port`.
    """
    deadline = _Deadline(timeout)
    what = f"TCP connect to {_hostport(host, port)}"
    try:
        sock = _connect(host, port, deadline)
    except OSError as e:
        return None, _failed(_os_failure(e, what, timeout), deadline, host=host, port=port)
    address = str(sock.getpeername()[0])
    ms = deadline.ms()
    return sock, ProbeResult(
        True,
        f"{what} ({address}) in {ms:.0f} ms",
        ms,
        {"host": host, "port": port, "address": address},
    )


def tcp_connect(host: str, port: int, timeout: float) -> ProbeResult:
    """Open and close a TCP connection; `duration_ms` is the connect time."""
    sock, result = open_direct(host, port, timeout)
    if sock is not None:
        sock.close()
    return result


def _proxy_request(
    proxy: ProxyURL,
    request_target: str,
    host_header: str,
    deadline: _Deadline,
    *,
    auth: bool,
    page_for: tuple[int, ...] = (),
) -> tuple[_Response, bytes]:
    """GET through the proxy; the page is read too (up to PAGE_LIMIT) when the status is in
    `page_for`, since an error page written by the proxy itself says why."""
    try:
        sock = _connect(proxy.host, proxy.port, deadline)
    except OSError as e:
        raise _os_failure(e, f"connect to proxy {proxy.address}", deadline.timeout) from None
    with sock:
        lines = [
            f"GET {request_target} HTTP/1.1",
            f"Host: {host_header}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            "Connection: close",
        ]
        if auth and proxy.has_credentials:
            lines.append(f"Proxy-Authorization: {_basic_auth(proxy)}")
        try:
            deadline.arm(sock)
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
            data = _read_head(sock, deadline)
        except OSError as e:
            raise _os_failure(e, f"proxy {proxy.address}", deadline.timeout) from None
        resp = _parse_head(data, f"proxy {proxy.address}")
        body = b""
        if resp.status in page_for:
            body = _read_page(sock, data.partition(b"\r\n\r\n")[2], resp, deadline)
    return resp, body


PAGE_LIMIT: Final = 16 * 1024  # error pages are small; the reason is near the top


def _read_page(sock: socket.socket, body: bytes, resp: _Response, deadline: _Deadline) -> bytes:
    length = resp.first("content-length")
    want = min(int(length), PAGE_LIMIT) if length and length.isdecimal() else PAGE_LIMIT
    try:
        while len(body) < want:
            deadline.arm(sock)
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
    except OSError:
        pass  # out of time, or the proxy hung up: judge by what arrived
    if "chunked" in (resp.first("transfer-encoding") or "").lower():
        body = _dechunk(body)
    return body[:PAGE_LIMIT]


def _dechunk(data: bytes) -> bytes:
    """The payload of a chunked body, as far as it arrived (best effort: it is only read)."""
    out = b""
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return out or data
        if not sep or size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def proxy_speaks_http(proxy_url: str, timeout: float) -> ProbeResult:
    """Check that an HTTP proxy answers HTTP, without sending traffic anywhere else.

    The probe is `GET http://<proxy host>:<port>/` in absolute form: the exact request form
    clients use through a proxy (so it exercises the proxy's real parser), and its only target
    is the proxy itself (no outside name, no CONNECT). Proxies answer that with a page, a 4xx, or
    a 502 (mitmproxy: "Request destination unknown"); any status line counts. No credentials
    are sent: a 407 here only means "speaks HTTP and wants auth" (`detail["status"]`); the
    auth check is `open_tunnel`'s. `detail`: `status`, `reason`, `server`.
    """
    deadline = _Deadline(timeout)
    try:
        proxy = _parse_proxy(proxy_url, ("http",))
    except _Fail as f:
        return _failed(f, deadline)
    try:
        target = f"http://{_hostport(_ascii_host(proxy.host), proxy.port)}/"
        resp, _ = _proxy_request(proxy, target, proxy.address, deadline, auth=False)
    except _Fail as f:
        return _failed(f, deadline, proxy=proxy.address)
    detail = {"proxy": proxy.address, "status": resp.status, "reason": resp.reason}
    if server := resp.first("server"):
        detail["server"] = server
    status = f"{resp.status} {resp.reason}".strip()
    return _result(True, f"proxy {proxy.address} speaks HTTP ({status})", deadline, **detail)


# Statuses a proxy writes itself when it cannot reach, or refuses, a target.
ERROR_PAGE_STATUSES: Final = (403, 502, 503, 504)


def http_via_proxy(proxy_url: str, url: str, timeout: float) -> ProbeResult:
    """A plain `http://` URL through an HTTP proxy: `GET <url>` in absolute form, as clients
    send it, with Proxy-Authorization when the proxy URL has credentials. The proxy resolves
    the target; nothing is resolved here but the proxy's own name.

    ok for any status except 407 (classified as in `open_tunnel`). A 403/502/503/504 may come
    from the proxy itself (it cannot reach or refuses the target): for those, `detail` also has
    `headers` and `page` (the start of the body) so that a caller can tell who wrote it.
    """
    deadline = _Deadline(timeout)
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        return _failed(_Fail(KIND_BAD_URL, f"not an http:// URL: {url}"), deadline)
    authority = _ascii_host(parts.hostname)
    if ":" in authority:
        authority = f"[{authority}]"
    if parts.port:
        authority += f":{parts.port}"
    request_target = f"http://{authority}{parts.path or '/'}" + (
        f"?{parts.query}" if parts.query else ""
    )
    base: dict[str, Any] = {"target": authority, "auth_sent": False}
    try:
        proxy = _parse_proxy(proxy_url, ("http",))
        base.update(proxy=proxy.address, auth_sent=proxy.has_credentials)
        resp, page = _proxy_request(
            proxy, request_target, authority, deadline, auth=True, page_for=ERROR_PAGE_STATUSES
        )
        if resp.status == 407:
            raise _proxy_auth_failure(resp, proxy, auth_sent=proxy.has_credentials)
    except _Fail as f:
        return _failed(f, deadline, **base)
    detail = {**base, "status": resp.status, "reason": resp.reason}
    if server := resp.first("server"):
        detail["server"] = server
    if resp.status in ERROR_PAGE_STATUSES:
        detail["headers"] = resp.headers
        detail["page"] = page
    status = f"{resp.status} {resp.reason}".strip()
    message = f"HTTP {status} for {authority} through proxy {proxy.address} (reachable)"
    return _result(True, message, deadline, **detail)


def open_tunnel(
    proxy_url: str, target_host: str, target_port: int, timeout: float
) -> tuple[socket.socket | None, ProbeResult]:
    """`CONNECT target_host:target_port` through an HTTP proxy; the proxy resolves the target.

    Sends `Proxy-Authorization: Basic` when the URL has credentials. On success the caller owns
    the tunnel socket. Failures: `detail["kind"]` is proxy_auth (with `status`=407,
    `auth_sent`, `auth_schemes` from Proxy-Authenticate), proxy_status (`status`, `reason`),
    timeout, refused, closed, not_http, dns (of the proxy's own name), bad_url, unsupported.
    """
    deadline = _Deadline(timeout)
    target = _hostport(_ascii_host(target_host), target_port)
    base: dict[str, Any] = {"target": target, "auth_sent": False}
    try:
        proxy = _parse_proxy(proxy_url, ("http",))
    except _Fail as f:
        return None, _failed(f, deadline, **base)
    base.update(proxy=proxy.address, auth_sent=proxy.has_credentials)
    try:
        sock = _connect(proxy.host, proxy.port, deadline)
    except OSError as e:
        what = f"connect to proxy {proxy.address}"
        return None, _failed(_os_failure(e, what, timeout), deadline, stage="connect", **base)
    try:
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: {USER_AGENT}"]
        if proxy.has_credentials:
            lines.append(f"Proxy-Authorization: {_basic_auth(proxy)}")
        try:
            deadline.arm(sock)
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
            data = _read_head(sock, deadline)
        except OSError as e:
            what = f"proxy {proxy.address} (CONNECT {target})"
            raise _os_failure(e, what, timeout) from None
        resp = _parse_head(data, f"proxy {proxy.address}")
        if resp.status == 407:
            raise _proxy_auth_failure(resp, proxy, auth_sent=proxy.has_credentials)
        if not 200 <= resp.status < 300:
            why = " (the proxy could not reach it)" if resp.status in (502, 503, 504) else ""
            raise _Fail(
                KIND_PROXY_STATUS,
                f"proxy {proxy.address} answered {resp.status} {resp.reason} to CONNECT "
                f"{target}{why}".replace("  ", " "),
                status=resp.status,
                reason=resp.reason,
            )
    except _Fail as f:
        sock.close()
        return None, _failed(f, deadline, stage="connect_request", **base)
    ms = deadline.ms()
    return sock, ProbeResult(
        True,
        f"tunnel to {target} through proxy {proxy.address} in {ms:.0f} ms",
        ms,
        {**base, "status": resp.status},
    )


_SOCKS_REPLIES: Final = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused by the target",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


def socks5_connect(
    proxy_url: str,
    target_host: str,
    target_port: int,
    timeout: float,
    *,
    remote_dns: bool,
) -> tuple[socket.socket | None, ProbeResult]:
    """SOCKS5 CONNECT (RFC 1928), with username/password auth (RFC 1929) when the URL has them.

    `remote_dns=True` (socks5h) sends the target's name and lets the proxy resolve it;
    `remote_dns=False` (socks5) resolves it here, within the same deadline, and sends an IP,
    which is what clients do for socks5://. detail: `address_type` sent (domain/ipv4/ipv6),
    `auth_sent`, `reply` (the SOCKS reply code) when one came.
    """
    deadline = _Deadline(timeout)
    base: dict[str, Any] = {
        "target": _hostport(target_host, target_port),
        "remote_dns": remote_dns,
        "auth_sent": False,
    }
    try:
        proxy = _parse_proxy(proxy_url, ("socks5", "socks5h"))
    except _Fail as f:
        return None, _failed(f, deadline, **base)
    base.update(proxy=proxy.address, auth_sent=proxy.has_credentials)
    try:
        sock = _connect(proxy.host, proxy.port, deadline)
    except OSError as e:
        what = f"connect to SOCKS proxy {proxy.address}"
        return None, _failed(_os_failure(e, what, timeout), deadline, stage="connect", **base)
    try:
        try:
            base["address_type"] = _socks5_handshake(
                sock, proxy, target_host, target_port, deadline, remote_dns=remote_dns
            )
        except OSError as e:
            raise _os_failure(e, f"SOCKS proxy {proxy.address}", timeout) from None
    except _Fail as f:
        sock.close()
        return None, _failed(f, deadline, stage="socks", **base)
    ms = deadline.ms()
    return sock, ProbeResult(
        True,
        f"SOCKS5 tunnel to {base['target']} through {proxy.address} in {ms:.0f} ms",
        ms,
        {**base, "reply": 0},
    )


def _socks5_handshake(
    sock: socket.socket,
    proxy: ProxyURL,
    host: str,
    port: int,
    deadline: _Deadline,
    *,
    remote_dns: bool,
) -> str:
    who = f"SOCKS proxy {proxy.address}"
    methods = b"\x00\x02" if proxy.has_credentials else b"\x00"
    deadline.arm(sock)
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    version, method = _recv_exact(sock, 2, deadline)
    if version != 5:
        raw = bytes([version, method])
        raise _Fail(KIND_NOT_SOCKS, f"{who} did not answer with SOCKS5 ({_not_socks_note(raw)})")
    if method == 0xFF:
        if proxy.has_credentials:
            raise _Fail(KIND_PROXY_AUTH, f"{who} accepts none of the offered auth methods")
        raise _Fail(KIND_PROXY_AUTH, f"{who} requires authentication; no credentials were sent")
    if method == 0x02:
        if not proxy.has_credentials:
            raise _Fail(KIND_NOT_SOCKS, f"{who} chose an auth method that was not offered")
        user = (proxy.username or "").encode("utf-8")
        password = (proxy.password or "").encode("utf-8")
        if len(user) > 255 or len(password) > 255:
            raise _Fail(KIND_BAD_URL, "SOCKS username and password are limited to 255 bytes")
        deadline.arm(sock)
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        _, status = _recv_exact(sock, 2, deadline)
        if status != 0:
            raise _Fail(KIND_PROXY_AUTH, f"{who} rejected the username/password")
    elif method != 0x00:
        raise _Fail(KIND_NOT_SOCKS, f"{who} chose unknown auth method {method}")

    if not is_ip(host) and not remote_dns:
        try:
            host = str(_getaddrinfo(host, port, deadline)[0][4][0])
        except OSError as e:
            what = f"DNS lookup of {host} (socks5:// resolves locally)"
            raise _os_failure(e, what, deadline.timeout) from None
    if is_ip(host):
        ip = ipaddress.ip_address(host)
        address_type = "ipv4" if ip.version == 4 else "ipv6"
        addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    else:
        name = _ascii_host(host).encode("ascii")
        if len(name) > 255:
            raise _Fail(KIND_BAD_URL, "host name too long for SOCKS5")
        address_type = "domain"
        addr = b"\x03" + bytes([len(name)]) + name
    deadline.arm(sock)
    sock.sendall(b"\x05\x01\x00" + addr + port.to_bytes(2, "big"))
    version, reply, _, atyp = _recv_exact(sock, 4, deadline)
    if version != 5:
        raise _Fail(KIND_NOT_SOCKS, f"{who} sent a malformed reply")
    if reply != 0:
        why = _SOCKS_REPLIES.get(reply, f"reply code {reply}")
        raise _Fail(
            KIND_PROXY_STATUS, f"{who} could not connect to {host}:{port}: {why}", reply=reply
        )
    # Consume the bound address so that the tunnel starts clean.
    if atyp == 1:
        _recv_exact(sock, 4 + 2, deadline)
    elif atyp == 4:
        _recv_exact(sock, 16 + 2, deadline)
    elif atyp == 3:
        (length,) = _recv_exact(sock, 1, deadline)
        _recv_exact(sock, length + 2, deadline)
    else:
        raise _Fail(KIND_NOT_SOCKS, f"{who} sent an unknown address type {atyp}")
    return address_type


def _not_socks_note(data: bytes) -> str:
    if data.startswith(b"HT"):
        return "it answered with HTTP: should the URL be http://?"
    return _not_http_note(data)


def open_route(
    proxy_url: str | None, host: str, port: int, timeout: float
) -> tuple[socket.socket | None, ProbeResult]:
    """A connection to `host:port` the way a client with this proxy setting would open it:
    direct when `proxy_url` is None or empty, else through the proxy (http, socks5, socks5h).
    Handy as the `reopen` callable of `tls_handshake`.
    """
    if not proxy_url:
        return open_direct(host, port, timeout)
    scheme = proxy_url.split("://", 1)[0].lower() if "://" in proxy_url else "http"
    if scheme in ("socks5", "socks5h"):
        remote = scheme == "socks5h"
        return socks5_connect(proxy_url, host, port, timeout, remote_dns=remote)
    return open_tunnel(proxy_url, host, port, timeout)


# --- TLS ------------------------------------------------------------------------------------


def _unverified_chain(ssock: ssl.SSLSocket) -> list[bytes]:
    """The chain the server sent, even after verification failed, when Python exposes it:
    public `get_unverified_chain()` since 3.13 (DER bytes), the `_sslobj` method on 3.10-3.12.
    """
    try:
        public = getattr(ssock, "get_unverified_chain", None)
        if public is not None:
            return [bytes(der) for der in public() or []]
        import _ssl

        chain = ssock._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
        return [cert.public_bytes(_ssl.ENCODING_DER) for cert in chain or []]
    except Exception:
        return []  # private API gone or changed: the caller falls back to a second handshake


def _fetch_presented_chain(
    reopen: Callable[[], socket.socket | None], host: str, timeout: float
) -> list[bytes]:
    """A second handshake that verifies nothing, only to see what the server presents."""
    try:
        sock = reopen()
    except OSError:
        return []
    if sock is None:
        return []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = _Deadline(timeout)
    try:
        with ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False) as ssock:
            deadline.arm(ssock)
            ssock.do_handshake()
            chain = _unverified_chain(ssock)
            if not chain:
                leaf = ssock.getpeercert(binary_form=True)
                chain = [leaf] if leaf else []
            return chain
    except OSError:
        sock.close()
        return []


def _describe_chain(chain: list[bytes]) -> list[Any]:
    try:
        from kai_launch.certinfo import describe_der

        return [describe_der(der) for der in chain]
    except Exception:
        # Naming the issuer is a courtesy; without cryptography (or with a certificate it
        # cannot parse) the verification failure is still reported.
        return []


def _verify_failure(
    e: ssl.SSLCertVerificationError, host: str, port: int, ca_label: str, chain: list[Any]
) -> _Fail:
    code = e.verify_code
    kind = _VERIFY_KINDS.get(code, KIND_VERIFY)
    detail: dict[str, Any] = {"verify_code": code, "verify_message": e.verify_message}
    leaf = chain[0] if chain else None
    if leaf is not None:
        detail.update(
            subject=leaf.subject,
            subject_short=leaf.subject_short,
            issuer=leaf.issuer,
            issuer_short=leaf.issuer_short,
            not_after=leaf.not_after.isoformat(),
            names=list(leaf.names),
            chain=[c.subject_short for c in chain],
        )
    issuer = leaf.issuer_short if leaf is not None else "an unknown issuer"
    target = _hostport(host, port)
    if kind == KIND_UNTRUSTED:
        message = f"certificate issued by {issuer} is not trusted by {ca_label}"
    elif kind == KIND_SELF_SIGNED:
        name = leaf.subject_short if leaf is not None else host
        message = f"certificate of {target} is self-signed ({name}) and not in {ca_label}"
    elif kind in (KIND_EXPIRED, KIND_NOT_YET_VALID):
        word = "expired" if kind == KIND_EXPIRED else "is not yet valid"
        bad = next(
            (c for c in chain if (c.is_expired() if kind == KIND_EXPIRED else c.not_yet_valid())),
            None,
        )
        if bad is None:
            message = f"a certificate presented by {target} {word}"
        else:
            when = (bad.not_after if kind == KIND_EXPIRED else bad.not_before).date()
            which = "certificate" if bad is leaf else "CA certificate"
            since = "on" if kind == KIND_EXPIRED else "until"
            message = (
                f"{which} {bad.subject_short} {word} ({since} {when}), issued by {bad.issuer_short}"
            )
            detail["bad_certificate"] = bad.subject
    elif kind == KIND_HOSTNAME:
        names = ", ".join(leaf.names[:5]) if leaf is not None and leaf.names else "other names"
        message = f"certificate of {target} is for {names}, not {host}"
    else:
        message = f"certificate of {target} failed verification: {e.verify_message}"
    return _Fail(kind, message, **detail)


def tls_handshake(
    sock: socket.socket | None,
    host: str,
    port: int,
    ca_file: str | None,
    timeout: float,
    *,
    reopen: Callable[[], socket.socket | None] | None = None,
) -> tuple[ssl.SSLSocket | None, ProbeResult]:
    """TLS handshake with SNI `host`, verified against exactly `ca_file` (None: OpenSSL's
    default paths), as a client given SSL_CERT_FILE=ca_file would verify it.

    `sock` is a connected socket (a tunnel) or None to connect directly to `host:port` first
    (that connect is its own step with its own `timeout`). The socket is consumed: on success
    the returned SSLSocket owns it, on failure it is closed.

    On a verification failure the presented chain is read from the failed handshake when
    Python exposes it, else by a second, unverified handshake over `reopen()` (for example
    `lambda: open_route(proxy, host, port, t)[0]`; defaults to a direct connection when `sock`
    was None). `detail` then names the leaf's `subject`/`issuer` (and `*_short`), `chain`,
    `verify_code`; `kind` is untrusted, self_signed, expired, not_yet_valid,
    hostname_mismatch or verify_failed. On success `detail` has `tls_version` and the leaf's
    `subject_short`, `issuer_short`, `not_after`, `days_left`.
    """
    ca_label = ca_file or "the system trust store"
    base: dict[str, Any] = {"target": _hostport(host, port), "ca_file": ca_file}
    deadline = _Deadline(timeout)
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        if sock is not None:
            sock.close()
        why = "not found" if isinstance(e, FileNotFoundError) else "holds no usable certificate"
        if not isinstance(e, FileNotFoundError | ssl.SSLError):
            why = f"cannot be read ({e.strerror or e})"
        return None, _failed(_Fail(KIND_CA_FILE, f"CA file {ca_file} {why}"), deadline, **base)
    if sock is None:
        sock, connected = open_direct(host, port, timeout)
        if sock is None:
            return None, connected
        deadline = _Deadline(timeout)
        if reopen is None:
            reopen = lambda: open_direct(host, port, timeout)[0]  # noqa: E731

    ssock = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    try:
        deadline.arm(ssock)
        ssock.do_handshake()
    except ssl.SSLCertVerificationError as e:
        chain = _unverified_chain(ssock)
        ssock.close()
        if not chain and reopen is not None:
            chain = _fetch_presented_chain(reopen, host, timeout)
        fail = _verify_failure(e, host, port, ca_label, _describe_chain(chain))
        return None, _failed(fail, deadline, **base)
    except ssl.SSLError as e:
        ssock.close()
        if isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            fail = _Fail(
                KIND_CLOSED, f"{base['target']} closed the connection during the TLS handshake"
            )
        elif e.reason == "WRONG_VERSION_NUMBER":
            fail = _Fail(KIND_TLS, f"{base['target']} did not answer with TLS (plain HTTP port?)")
        else:
            fail = _Fail(KIND_TLS, f"TLS handshake with {base['target']} failed: {e.reason or e}")
        return None, _failed(fail, deadline, **base)
    except OSError as e:
        ssock.close()
        fail = _os_failure(e, f"TLS handshake with {base['target']}", timeout)
        return None, _failed(fail, deadline, **base)

    detail = {**base, "tls_version": ssock.version()}
    detail.update(_peer_summary(ssock))
    ms = deadline.ms()
    message = f"TLS to {base['target']} verified with {ca_label} in {ms:.0f} ms"
    return ssock, ProbeResult(True, message, ms, detail)


def _peer_summary(ssock: ssl.SSLSocket) -> dict[str, Any]:
    """Names and expiry of the verified leaf, in the same short forms as a failure reports."""
    leaf = _describe_chain([der]) if (der := ssock.getpeercert(binary_form=True)) else []
    if leaf:
        return {
            "subject_short": leaf[0].subject_short,
            "issuer_short": leaf[0].issuer_short,
            "not_after": leaf[0].not_after.isoformat(),
            "days_left": round(leaf[0].days_left(), 1),
        }
    # Without cryptography: the stdlib's parsed form of a verified certificate.
    peer = ssock.getpeercert() or {}

    def cn(name: Any) -> str:
        values = dict(pair for rdn in name or () for pair in rdn)
        return str(values.get("commonName") or values.get("organizationName") or "")

    out: dict[str, Any] = {
        "subject_short": cn(peer.get("subject")),
        "issuer_short": cn(peer.get("issuer")),
    }
    if isinstance(not_after := peer.get("notAfter"), str):
        seconds = ssl.cert_time_to_seconds(not_after)
        out["not_after"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))
        out["days_left"] = round((seconds - time.time()) / 86400, 1)
    return out


# --- HTTP -----------------------------------------------------------------------------------


def http_request(
    sock: socket.socket,
    host: str,
    path: str,
    timeout: float,
    *,
    port: int | None = None,
    method: str = "HEAD",
    headers: dict[str, str] | None = None,
) -> ProbeResult:
    """Send one request on an open connection (TLS or plain) and read the status line.

    Any HTTP status counts as reachable (a 401 from an API means the API answered). HEAD by
    default: no body to wait for; some servers answer HEAD with 405, which still counts. The
    socket is not closed. `port` goes into the Host header (default: 443 for an SSLSocket,
    else 80). detail: `status`, `reason`, `server`.
    """
    deadline = _Deadline(timeout)
    # The Host header carries the port only when it is not the scheme's default, as clients do.
    default_port = 443 if isinstance(sock, ssl.SSLSocket) else 80
    name = _ascii_host(host)
    name = f"[{name}]" if ":" in name else name
    authority = name if port in (None, default_port) else f"{name}:{port}"
    lines = [
        f"{method} {path or '/'} HTTP/1.1",
        f"Host: {authority}",
        f"User-Agent: {USER_AGENT}",
        "Accept: */*",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    who = authority
    try:
        try:
            deadline.arm(sock)
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            data = _read_head(sock, deadline)
        except OSError as e:
            raise _os_failure(e, f"HTTP {method} {who}{path}", timeout) from None
        resp = _parse_head(data, who)
    except _Fail as f:
        return _failed(f, deadline, target=authority, path=path)
    detail: dict[str, Any] = {
        "target": authority,
        "path": path,
        "status": resp.status,
        "reason": resp.reason,
    }
    if server := resp.first("server"):
        detail["server"] = server
    status = f"{resp.status} {resp.reason}".strip()
    return _result(True, f"HTTP {status} from {who} (reachable)", deadline, **detail)
