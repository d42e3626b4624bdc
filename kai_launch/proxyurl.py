"""Proxy URLs: validation, credentials, redaction.

Written by hand rather than with urllib.parse, which alone costs a sizeable share of the exec
path's budget (bench/startup.py).
"""

from __future__ import annotations

from kai_launch.errors import ConfigError

SCHEMES = ("http", "https", "socks5", "socks5h")
WARN_SCHEMES = ("socks4", "socks4a")
DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "socks5": 1080,
    "socks5h": 1080,
    "socks4": 1080,
    "socks4a": 1080,
}

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class ProxyURL:
    """A parsed proxy URL. `host` keeps IPv6 brackets out; `port` is None when not written."""

    __slots__ = ("host", "password", "port", "rest", "scheme", "username")

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int | None,
        username: str | None = None,
        password: str | None = None,
        rest: str = "",
    ) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.username = username  # percent-encoded, as written in the URL
        self.password = password
        self.rest = rest  # path/query after the authority; proxies ignore it but we keep it

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.scheme]

    def netloc(self, *, redact: bool = False) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        hostport = f"{host}:{self.port}" if self.port is not None else host
        if self.username is None and self.password is None:
            return hostport
        user = self.username or ""
        if self.password is None:
            return f"{user}@{hostport}"
        return f"{user}:{'***' if redact else self.password}@{hostport}"

    def unparse(self, *, redact: bool = False) -> str:
        return f"{self.scheme}://{self.netloc(redact=redact)}{self.rest}"

    def with_credentials(self, username: str, password: str | None) -> ProxyURL:
        return ProxyURL(
            self.scheme,
            self.host,
            self.port,
            quote(username),
            None if password is None else quote(password),
            self.rest,
        )


def quote(text: str) -> str:
    """Percent-encode everything but RFC 3986 unreserved characters (like quote(safe=''))."""
    return "".join(
        c if c in _UNRESERVED else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in text
    )


def parse_proxy_url(url: str, where: str) -> tuple[ProxyURL, list[str]]:
    """Validate a proxy URL; returns it parsed and a list of warnings. Raises ConfigError."""
    warnings: list[str] = []
    example = "write e.g. http://proxy.example.com:3128"
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"proxy URL '{redact_url(url)}' has no scheme", where, f"{example} (add http://)"
        )
    scheme = scheme.lower()
    if scheme in WARN_SCHEMES:
        warnings.append(
            f"{scheme} proxy '{redact_url(url)}' ({where}): many clients (requests, httpx) "
            "do not support socks4; prefer socks5h"
        )
    elif scheme not in SCHEMES:
        raise ConfigError(
            f"proxy URL '{redact_url(url)}' has unsupported scheme '{scheme}'",
            where,
            "use one of http, https, socks5, socks5h",
        )
    cut = min(
        (i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest)
    )
    authority, tail = rest[:cut], rest[cut:]
    if "@" in tail:
        # `http://user:pa/ss@host`: a URL parser (and every client) reads host `user`, port `pa`.
        raise ConfigError(
            f"proxy URL '{redact_url(url)}' has a '/', '?' or '#' before its '@'",
            where,
            "percent-encode them in the user name or password (%2F, %3F, %23), or use proxy_auth",
        )
    userinfo, at, hostport = authority.rpartition("@")
    username = password = None
    if at:
        username, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ConfigError(f"proxy URL '{redact_url(url)}' has an unclosed '['", where, example)
        host, port_text = hostport[1:end], hostport[end + 1 :]
        if port_text and not port_text.startswith(":"):
            raise ConfigError(
                f"proxy URL '{redact_url(url)}' is malformed after ']'", where, example
            )
        port_text = port_text[1:]
    else:
        host, colon, port_text = hostport.partition(":")
        if colon and not port_text:
            raise ConfigError(f"proxy URL '{redact_url(url)}' has an empty port", where, example)
    if not host:
        raise ConfigError(f"proxy URL '{redact_url(url)}' has no host", where, example)
    port: int | None = None
    if port_text:
        if not port_text.isdecimal() or not 0 < int(port_text) < 65536:
            raise ConfigError(
                f"proxy URL '{redact_url(url)}' has a bad port '{port_text}'",
                where,
                "a port is a number from 1 to 65535",
            )
        port = int(port_text)
    if tail not in ("", "/"):
        warnings.append(f"proxy URL '{redact_url(url)}' ({where}) has a path; proxies ignore it")
    return ProxyURL(scheme, host, port, username, password, tail), warnings


def redact_url(url: str) -> str:
    """`scheme://user:***@host:port`: the password is hidden, the user name kept.

    Errs on the side of hiding: everything up to the last `@` counts as credentials, even where
    a URL parser would end the authority earlier at a `/`, `?` or `#` in the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    # A user name alone is often a token (`http://TOKEN@proxy`): it is hidden then.
    hidden = f"{user}:***@" if colon else "***@"
    return f"{scheme}{sep}{hidden}{rest[at + 1 :]}"


def redact_arg(arg: str) -> str:
    """One command-line argument with credentials hidden: a URL's password anywhere in it
    (`--mode=upstream:http://u:pw@host`) and mitmproxy's `proxyauth=user:pass`."""
    if "proxyauth=" in arg:
        head, _, value = arg.partition("proxyauth=")
        user, colon, _ = value.partition(":")
        return f"{head}proxyauth={user}:***" if colon else f"{head}proxyauth=***"
    return redact_url(arg) if "://" in arg and "@" in arg else arg
