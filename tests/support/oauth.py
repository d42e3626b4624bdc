"""Loopback servers for the OAuth2 tests: a token endpoint and a minimal HTTP proxy that counts.

- `TokenServer`: an OAuth2 token endpoint (RFC 6749 4.4) on http(s)://localhost:PORT/token,
  certificate from a trustme CA with extra names (a `.invalid` name reached through the proxy).
  It records every request (headers, form) and answers according to `mode`.
- `CountingProxy`: an HTTP proxy on 127.0.0.1 (CONNECT and absolute-form requests) that records
  what it was asked for and maps names under `.invalid` to 127.0.0.1, so that a client can be
  made to go through it although kai-run always puts localhost in NO_PROXY. Any other name is
  refused without being resolved; nothing leaves loopback.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

from support.servers import LOOPBACK_V4, _LoopbackServer, _shutdown_quietly

_IDLE = 30.0


@dataclass(frozen=True)
class TokenRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    form: dict[str, str]

    def basic(self) -> tuple[str, str] | None:
        """(client_id, secret) from an Authorization: Basic header, form-url-decoded."""
        value = self.headers.get("authorization", "")
        if not value.startswith("Basic "):
            return None
        raw = base64.b64decode(value[6:]).decode()
        user, _, pw = raw.partition(":")
        return unquote(user), unquote(pw)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("client closed before the end of the head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class TokenServer(_LoopbackServer):
    """Modes: "ok" (a token when the credentials match), "error" (always a 401 invalid_client
    JSON), "invalid_scope" (400), "redirect" (302 to a login page), "html500" (a 500 HTML page
    echoing the request), "no_token" (200 without a token)."""

    def __init__(
        self,
        *,
        tls: bool = False,
        ca: trustme.CA | None = None,
        names: tuple[str, ...] = (),
        client_id: str = "kai-ide",
        client_secret: str = "s3cr3t+/=&x",
        expires_in: object = 3600,
    ) -> None:
        super().__init__(ipv6=False)
        self.tls = tls
        self.ca = ca or trustme.CA()
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.mode = "ok"
        self.requests: list[TokenRequest] = []
        self.issued: list[str] = []
        self._lock_r = threading.Lock()
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", LOOPBACK_V4, *names).configure_cert(self._ctx)

    def url(self, host: str = "localhost") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/token"

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        conn.settimeout(_IDLE)
        sock: socket.socket = conn
        if self.tls:
            sock = self._ctx.wrap_socket(conn, server_side=True)
            self._untrack(conn)
            self._track(sock)
        try:
            self._serve(sock)
        finally:
            self._untrack(sock)
            _shutdown_quietly(sock)

    def _serve(self, sock: socket.socket) -> None:
        head, rest = _read_head(sock)
        line, headers = _headers(head)
        method, target, _ = line.split(" ", 2)
        length = int(headers.get("content-length") or 0)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        body = rest[:length].decode()
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        req = TokenRequest(method, urlsplit(target).path or target, headers, form)
        with self._lock_r:
            self.requests.append(req)
        status, payload, ctype = self._answer(req, body)
        data = payload.encode()
        sock.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )

    def _answer(self, req: TokenRequest, body: str) -> tuple[str, str, str]:
        if self.mode == "html500":
            page = f"<html><body><h1>Internal error</h1><pre>{body}</pre></body></html>"
            return "500 Internal Server Error", page, "text/html"
        if self.mode == "error":
            return "401 Unauthorized", _json_error(), "application/json"
        if self.mode == "invalid_scope":
            body = {"error": "invalid_scope", "error_description": "scope 'x' is not allowed"}
            return "400 Bad Request", json.dumps(body), "application/json"
        if self.mode == "error_200":  # some gateways put an OAuth2 error in a 200
            return "200 OK", _json_error(), "application/json"
        if self.mode == "redirect":
            return "302 Found\r\nLocation: https://sso.kai-oauth.invalid/login", "", "text/plain"
        creds = req.basic() or (req.form.get("client_id"), req.form.get("client_secret"))
        if (
            req.method != "POST"
            or req.form.get("grant_type") != "client_credentials"
            or creds != (self.client_id, self.client_secret)
        ):
            return "401 Unauthorized", _json_error(), "application/json"
        if self.mode == "no_token":
            return "200 OK", json.dumps({"token_type": "Bearer"}), "application/json"
        token = f"tok-{len(self.issued) + 1}-{base64.b32encode(req.path.encode()).decode()[:4]}"
        self.issued.append(token)
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return "200 OK", json.dumps(answer), "application/json"


def _json_error() -> str:
    return json.dumps(
        {"error": "invalid_client", "error_description": "Client authentication failed"}
    )


class CountingProxy(_LoopbackServer):
    """An HTTP proxy that records (method, host, port) and serves only loopback (or `.invalid`
    names, mapped to 127.0.0.1). proxy_auth=(user, password) makes it demand Basic credentials."""

    def __init__(self, *, proxy_auth: tuple[str, str] | None = None) -> None:
        super().__init__(ipv6=False)
        self.proxy_auth = proxy_auth
        self.seen: list[tuple[str, str, int]] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK_V4}:{self.port}"

    def _target(self, host: str) -> str | None:
        host = host.strip("[]").lower().rstrip(".")
        if host.endswith(".invalid") or host in ("localhost", "127.0.0.1"):
            return LOOPBACK_V4
        return None

    def _handle(self, conn: socket.socket, addr: Any) -> None:
        conn.settimeout(_IDLE)
        head, rest = _read_head(conn)
        line, headers = _headers(head)
        method, target, version = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            port = int(port_text)
        else:
            parts = urlsplit(target)
            host, port = parts.hostname or "", parts.port or 80
        self.seen.append((method, host, port))
        if self.proxy_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.proxy_auth).encode()).decode()
            if headers.get("proxy-authorization") != expected:
                conn.sendall(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="kai"\r\nContent-Length: 0\r\n\r\n'
                )
                return
        ip = self._target(host)
        if ip is None:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        remote = socket.create_connection((ip, port), timeout=5)
        self._track(remote)
        try:
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    remote.sendall(rest)
            else:
                parts = urlsplit(target)
                path = parts.path + (f"?{parts.query}" if parts.query else "")
                kept = [
                    h
                    for h in head.decode("latin-1").split("\r\n")[1:]
                    if not h.lower().startswith(("proxy-", "connection:"))
                ]
                new_head = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
                remote.sendall(new_head.encode("latin-1") + b"\r\n\r\n" + rest)
            self._relay(conn, remote)
        finally:
            self._untrack(remote)
            _shutdown_quietly(remote)
