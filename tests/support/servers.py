"""Real servers on loopback for tests: an OpenAI-compatible HTTPS API, a peer that never
answers, a SOCKS5 proxy, and certificate files with chosen defects.

Everything here binds to 127.0.0.1 (and ::1 where it helps) only, and never connects
anywhere but loopback: the SOCKS5 server refuses any other destination without resolving
or dialling it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import ipaddress
import json
import selectors
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "HangingServer",
    "OpenAIUpstream",
    "RecordedRequest",
    "Socks5Connect",
    "Socks5Server",
    "StaticServer",
    "closed_port",
    "expired_ca_pem",
    "expiring_ca_pem",
    "leaf_cert_pem",
    "write_cert_pem",
]

LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"
# How long a server thread waits on a silent client before giving up; tests finish long before.
_IDLE_TIMEOUT = 30.0


def closed_port() -> int:
    """A loopback port that nothing listens on (bound, then released).

    Another process could grab it in between; on a test machine that is rare enough.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK_V4, 0))
        port: int = s.getsockname()[1]
    return port


def _bind_loopback(*, ipv6: bool, backlog: int = 128) -> list[socket.socket]:
    """Listen on 127.0.0.1 and, if wanted and possible, on ::1 with the same port.

    Both, because "localhost" resolves to ::1 first on many machines and a client that
    tries ::1 only (or first, with a slow fallback) must still find the server.
    """
    for _ in range(50):
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind((LOOPBACK_V4, 0))
        v4.listen(backlog)
        if not ipv6:
            return [v4]
        port = v4.getsockname()[1]
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            return [v4]
        try:
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind((LOOPBACK_V6, port))
            v6.listen(backlog)
        except OSError as exc:
            v6.close()
            if exc.errno == errno.EADDRINUSE:
                v4.close()
                continue
            return [v4]  # no IPv6 loopback on this machine
        return [v4, v6]
    raise RuntimeError("could not find a port free on both 127.0.0.1 and ::1")


def _shutdown_quietly(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops the SSL object under a
    # thread that may be reading from it; a plain shutdown just makes that read return.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _LoopbackServer:
    """Accept loop on loopback listeners; one thread per connection; reliable close."""

    ipv6_default: ClassVar[bool] = True
    thread_per_connection: ClassVar[bool] = True

    def __init__(self, *, ipv6: bool | None = None) -> None:
        self._ipv6 = self.ipv6_default if ipv6 is None else ipv6
        self._listeners: list[socket.socket] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self.port = 0
        self.accepted = 0

    @property
    def listens_on_ipv6(self) -> bool:
        return any(s.family == socket.AF_INET6 for s in self._listeners)

    def start(self) -> Self:
        self._listeners = _bind_loopback(ipv6=self._ipv6)
        self.port = self._listeners[0].getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"{type(self).__name__}-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        for s in self._listeners:
            s.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            _shutdown_quietly(c)
        for t in threads:
            t.join(5)
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Connection bookkeeping, so that close() can unblock every thread.
    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)
        if self._stopping.is_set():
            _shutdown_quietly(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            for s in self._listeners:
                sel.register(s, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    listener = key.fileobj
                    assert isinstance(listener, socket.socket)
                    try:
                        conn, addr = listener.accept()
                    except OSError:
                        continue
                    self.accepted += 1
                    self._track(conn)
                    if self.thread_per_connection:
                        t = threading.Thread(
                            target=self._run_connection,
                            args=(conn, addr),
                            name=f"{type(self).__name__}-conn",
                            daemon=True,
                        )
                        with self._lock:
                            self._threads.add(t)
                        t.start()

    def _run_connection(self, conn: socket.socket, addr: Any) -> None:
        try:
            self._handle(conn, addr)
        except OSError:
            # A client hanging up mid-way is normal in tests; the client's side reports it.
            # Anything else is a bug in the test server and reaches pytest's thread hook.
            pass
        finally:
            self._untrack(conn)
            _shutdown_quietly(conn)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        """Serve one connection; servers with thread_per_connection define it."""
        raise TypeError(f"{type(self).__name__} serves no connections itself")

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        """Copy both ways until both ends close (half-close passed on), idle or stopping."""
        a.setblocking(True)
        b.setblocking(True)
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            open_ends = 2
            while open_ends and not self._stopping.is_set():
                events = sel.select(timeout=_IDLE_TIMEOUT)
                if not events:
                    return
                for key, _ in events:
                    src = key.fileobj
                    assert isinstance(src, socket.socket)
                    data = src.recv(65536)
                    if data:
                        peer[src].sendall(data)
                    else:
                        # Half-close: pass EOF on, keep the other direction flowing.
                        sel.unregister(src)
                        with contextlib.suppress(OSError):
                            peer[src].shutdown(socket.SHUT_WR)
                        open_ends -= 1


# --------------------------------------------------------------------------- OpenAI-like API


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the upstream saw it (after any proxy rewrote it)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    client: tuple[str, int]
    tls: bool

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class _OpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kai-test-upstream/1"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    upstream: OpenAIUpstream  # set per connection

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean; requests are recorded instead

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        up = self.upstream
        up._record(
            RecordedRequest(
                method=self.command,
                path=path,
                headers=tuple(self.headers.items()),
                body=body,
                client=(str(self.client_address[0]), int(self.client_address[1])),
                tls=up.tls,
            )
        )
        if (
            up.require_api_key is not None
            and self.headers.get("Authorization") != f"Bearer {up.require_api_key}"
        ):
            self._send_json(401, _error("Incorrect API key provided.", "invalid_request_error"))
            return
        if self.command in ("GET", "HEAD") and path == "/v1/models":
            self._send_json(200, up.models_payload())
        elif self.command == "POST" and path == "/v1/chat/completions":
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                self._send_json(400, _error("request body is not JSON", "invalid_request_error"))
                return
            model = str(req.get("model") or up.model)
            if req.get("stream"):
                self._stream_completion(model)
            else:
                self._send_json(200, up.completion_payload(model))
        else:
            self._send_json(
                404, _error(f"Unknown request URL: {self.command} {path}", "invalid_request_error")
            )

    def _stream_completion(self, model: str) -> None:
        # Server-sent events ending at connection close: the simplest framing clients accept.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for chunk in self.upstream.completion_chunks(model):
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class OpenAIUpstream(_LoopbackServer):
    """An OpenAI-compatible API on https://localhost:PORT (or http:// with tls=False).

    Answers `GET /v1/models` and `POST /v1/chat/completions` (also `"stream": true`); anything
    else is a 404 JSON error. Every request is recorded in `.requests` before it is answered, so
    a client that got its response can assert on what the server saw.
    """

    def __init__(
        self,
        *,
        tls: bool = True,
        ca: trustme.CA | None = None,
        workdir: Path | None = None,
        require_api_key: str | None = None,
        reply: str = "pong",
        model: str = "kai-test-model",
        ipv6: bool | None = None,
    ) -> None:
        super().__init__(ipv6=ipv6)
        self.tls = tls
        self.ca = ca or trustme.CA()
        self.require_api_key = require_api_key
        self.reply = reply
        self.model = model
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="kai-upstream-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_pem_path = self.workdir / "upstream-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem_path))
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", LOOPBACK_V4, LOOPBACK_V6).configure_cert(self._server_ctx)
        self._requests: list[RecordedRequest] = []
        self._req_lock = threading.Lock()
        self.tls_errors: list[str] = []
        self._counter = 0
        self._handler_cls = type("_Handler", (_OpenAIHandler,), {"upstream": self})

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://localhost:{self.port}"

    @property
    def base_url(self) -> str:
        """What to give `openai.OpenAI(base_url=...)`."""
        return f"{self.url}/v1"

    def url_for(self, host: str) -> str:
        """The server's URL with another loopback spelling: "127.0.0.1" or "::1"."""
        h = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{h}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._req_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._req_lock:
            self._requests.clear()

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA (and nothing else)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_pem_path))
        return ctx

    def _record(self, req: RecordedRequest) -> None:
        with self._req_lock:
            self._requests.append(req)
            self._counter += 1

    def models_payload(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "kai-run-tests"}
            ],
        }

    def completion_payload(self, model: str) -> dict[str, Any]:
        # The fields the openai SDK's ChatCompletion model requires, plus usage.
        return {
            "id": f"chatcmpl-kai-{self._counter}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def completion_chunks(self, model: str) -> Iterator[dict[str, Any]]:
        base = {
            "id": f"chatcmpl-kai-{self._counter}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        deltas: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "content": ""}, None),
            ({"content": self.reply}, None),
            ({}, "stop"),
        ]
        for delta, finish in deltas:
            yield {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }

    def close(self) -> None:
        super().close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        conn.settimeout(_IDLE_TIMEOUT)
        sock: socket.socket = conn
        if self.tls:
            try:
                sock = self._server_ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                # Kept for tests of clients that (rightly) refuse this certificate.
                self.tls_errors.append(str(exc))
                return
            # wrap_socket took over the descriptor: close() must now shut down the wrapper.
            self._untrack(conn)
            self._track(sock)
        try:
            self._handler_cls(sock, addr, self)
        finally:
            self._untrack(sock)
            _shutdown_quietly(sock)


# --------------------------------------------------------------------------- hanging peer


class HangingServer(_LoopbackServer):
    """Accepts TCP connections on 127.0.0.1 and never sends a byte; sockets stay open until close.

    Stands in for a proxy or server that hangs, without any address outside loopback.
    """

    ipv6_default = False
    thread_per_connection = False  # accepted sockets just sit in the tracked set

    @property
    def host(self) -> str:
        return LOOPBACK_V4

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK_V4}:{self.port}"


# --------------------------------------------------------------------------- SOCKS5


@dataclass(frozen=True)
class Socks5Connect:
    """One CONNECT request: how the client named the destination, and whether it was served.

    `atyp` tells socks5 from socks5h: "domain" means the client let the proxy resolve the name
    (socks5h), "ipv4"/"ipv6" means it resolved the name itself (socks5).
    """

    atyp: str
    host: str
    port: int
    allowed: bool


_SOCKS_OK = 0x00
_SOCKS_NOT_ALLOWED = 0x02
_SOCKS_REFUSED = 0x05
_SOCKS_CMD_UNSUPPORTED = 0x07
_SOCKS_ATYP_UNSUPPORTED = 0x08


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("client closed during SOCKS handshake")
        buf += chunk
    return buf


def _loopback_targets(host: str) -> list[str] | None:
    """The loopback addresses to dial for `host`, or None when it is not loopback.

    "localhost" is mapped here rather than resolved, so no name ever goes to a resolver.
    """
    if host.lower().rstrip(".") == "localhost":
        return [LOOPBACK_V4, LOOPBACK_V6]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return [str(ip)] if ip.is_loopback else None


class Socks5Server(_LoopbackServer):
    """A SOCKS5 proxy on 127.0.0.1: no authentication, CONNECT only, loopback destinations only.

    Destinations may be given as a domain (only "localhost"), IPv4 or IPv6 address. Anything
    else gets reply 0x02 ("not allowed by ruleset") and is never resolved or dialled.
    """

    ipv6_default = False

    def __init__(self, *, ipv6: bool | None = None) -> None:
        super().__init__(ipv6=ipv6)
        self._connects: list[Socks5Connect] = []
        self._connects_lock = threading.Lock()

    @property
    def host(self) -> str:
        return LOOPBACK_V4

    @property
    def url(self) -> str:
        return f"socks5://{LOOPBACK_V4}:{self.port}"

    @property
    def url_h(self) -> str:
        """The same proxy as a socks5h URL (the client sends names, the proxy resolves them)."""
        return f"socks5h://{LOOPBACK_V4}:{self.port}"

    @property
    def connects(self) -> list[Socks5Connect]:
        with self._connects_lock:
            return list(self._connects)

    def _reply(self, conn: socket.socket, code: int) -> None:
        conn.sendall(bytes([5, code, 0, 1]) + socket.inet_aton("0.0.0.0") + b"\x00\x00")

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        conn.settimeout(_IDLE_TIMEOUT)
        ver, nmethods = _recv_exact(conn, 2)
        if ver != 5:
            return
        methods = _recv_exact(conn, nmethods)
        if 0 not in methods:
            conn.sendall(b"\x05\xff")
            return
        conn.sendall(b"\x05\x00")
        ver, cmd, _rsv, atyp = _recv_exact(conn, 4)
        if atyp == 1:
            kind, host = "ipv4", socket.inet_ntop(socket.AF_INET, _recv_exact(conn, 4))
        elif atyp == 4:
            kind, host = "ipv6", socket.inet_ntop(socket.AF_INET6, _recv_exact(conn, 16))
        elif atyp == 3:
            (length,) = _recv_exact(conn, 1)
            kind, host = "domain", _recv_exact(conn, length).decode("idna")
        else:
            self._reply(conn, _SOCKS_ATYP_UNSUPPORTED)
            return
        (port,) = struct.unpack("!H", _recv_exact(conn, 2))
        targets = _loopback_targets(host)
        with self._connects_lock:
            self._connects.append(Socks5Connect(kind, host, port, targets is not None))
        if cmd != 1:
            self._reply(conn, _SOCKS_CMD_UNSUPPORTED)
            return
        if targets is None:
            self._reply(conn, _SOCKS_NOT_ALLOWED)
            return
        remote = None
        for target in targets:
            try:
                remote = socket.create_connection((target, port), timeout=5)
                break
            except OSError:
                continue
        if remote is None:
            self._reply(conn, _SOCKS_REFUSED)
            return
        self._track(remote)
        try:
            self._reply(conn, _SOCKS_OK)
            self._relay(conn, remote)
        finally:
            self._untrack(remote)
            _shutdown_quietly(remote)


# --------------------------------------------------------------------------- certificate files


def write_cert_pem(
    path: Path | str,
    *,
    common_name: str,
    is_ca: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
    organization: str = "kai-run tests",
) -> Path:
    """Write one self-signed certificate (PEM) with the given validity and CA flag."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    out = Path(path)
    out.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def expired_ca_pem(path: Path | str, *, common_name: str = "Kai Test Expired CA") -> Path:
    """A CA certificate that expired yesterday."""
    now = _now()
    return write_cert_pem(
        path,
        common_name=common_name,
        is_ca=True,
        not_before=now - dt.timedelta(days=400),
        not_after=now - dt.timedelta(days=1),
    )


def expiring_ca_pem(
    path: Path | str, *, days: int = 10, common_name: str = "Kai Test Expiring CA"
) -> Path:
    """A CA certificate valid now that expires in `days` days."""
    now = _now()
    return write_cert_pem(
        path,
        common_name=common_name,
        is_ca=True,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=days),
    )


def leaf_cert_pem(path: Path | str, *, common_name: str = "leaf.kai-test.invalid") -> Path:
    """A valid certificate that is not a CA (BasicConstraints ca=False): wrong thing in a bundle."""
    now = _now()
    return write_cert_pem(
        path,
        common_name=common_name,
        is_ca=False,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=365),
    )


# --------------------------------------------------------------------------- static files


class _StaticHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kai-test-static/1"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    static: StaticServer  # set per server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        st = self.static
        with st._lock:
            st.hits[path] = st.hits.get(path, 0) + 1
            st.headers_seen.append(tuple(self.headers.items()))
        status, body, ctype = st.files.get(path, (404, b"not found\n", "text/plain"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class StaticServer(_LoopbackServer):
    """HTTP on 127.0.0.1 serving fixed files (a PAC file, say); counts GETs per path.

    `serve(path, body, status=200, content_type=...)` adds or replaces a file at any time;
    anything else is a 404. With `ca` (a trustme.CA) it serves HTTPS with a certificate for
    localhost and 127.0.0.1 issued by that CA.
    """

    ipv6_default = False

    def __init__(self, *, ca: trustme.CA | None = None) -> None:
        super().__init__()
        self.ca = ca
        self._server_ctx: ssl.SSLContext | None = None
        if ca is not None:
            self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("localhost", LOOPBACK_V4).configure_cert(self._server_ctx)
        self.files: dict[str, tuple[int, bytes, str]] = {}
        self.hits: dict[str, int] = {}
        self.headers_seen: list[tuple[tuple[str, str], ...]] = []
        self._handler_cls = type("_Handler", (_StaticHandler,), {"static": self})

    def serve(
        self,
        path: str,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = "application/x-ns-proxy-autoconfig",
    ) -> str:
        """Serve `body` at `path`; returns its URL."""
        data = body.encode() if isinstance(body, str) else body
        with self._lock:
            self.files[path] = (status, data, content_type)
        return self.url(path)

    def url(self, path: str) -> str:
        scheme = "https" if self._server_ctx is not None else "http"
        return f"{scheme}://{LOOPBACK_V4}:{self.port}{path}"

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        conn.settimeout(_IDLE_TIMEOUT)
        sock: socket.socket = conn
        if self._server_ctx is not None:
            try:
                sock = self._server_ctx.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                return  # a client that (rightly) refused the certificate
            self._untrack(conn)
            self._track(sock)
        try:
            self._handler_cls(sock, addr, self)
        finally:
            self._untrack(sock)
            _shutdown_quietly(sock)
