"""OAuth2 client credentials (RFC 6749 section 4.4) as a secret reference in a profile's `env`:

    OPENAI_API_KEY = { oauth2 = { token_url = "https://idp.corp.example/oauth2/token",
                                  client_id = "kai-ide", client_secret = { env = "KAI_CLIENT_SECRET" },
                                  scope = "llm.read", audience = "https://llm.corp.example" } }

kai-run posts `grant_type=client_credentials` to `token_url` and gives the child only the access
token: the client secret never reaches the child's environment. The request takes the route the
child itself would take with requests: the profile's proxy (with proxy_auth), its NO_PROXY and
its merged CA bundle, all read from the EnvPlan built so far (so a PAC-derived proxy or a
sidecar's proxy is used too); the parent's own variables are ignored (`trust_env=False`).

Client authentication: `client_auth = "basic"` (the default: RFC 6749 2.3.1 says servers MUST
support HTTP Basic, and requests-oauthlib and authlib default to it) sends
`Authorization: Basic base64(urlencode(id):urlencode(secret))`, as 2.3.1 prescribes; `"post"`
sends `client_id` and `client_secret` in the form body.

Tokens are cached in the user cache dir (`oauth2/`, dir 0700, files 0600, written atomically),
keyed by a sha256 over token_url, client_id, scope, audience, client_auth and a sha256 of the
client secret, so a changed secret (or scope) fetches a new token and the secret itself is never
stored. A token is reused until less than min(60 s, 10% of its lifetime) remains; a token
answered without `expires_in` is kept DEFAULT_LIFETIME seconds. A miss takes a per-entry lock
(POSIX flock), so concurrent launches make one request, and drops entries unused for a week. A
cache hit imports neither requests nor anything else heavy: it is on the exec path.

Nothing here prints. The client secret, the Authorization header and the token never appear in
an error message; an error body is shown only as a short excerpt with the secret scrubbed.
"""

from __future__ import annotations

import os
import time

from kai_launch import paths
from kai_launch.errors import SecretError
from kai_launch.proxyurl import redact_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import requests

    from kai_launch.secrets import SecretRef

KEYS = ("token_url", "client_id", "client_secret", "scope", "audience", "client_auth")
REQUIRED = ("token_url", "client_id", "client_secret")
CLIENT_AUTH = ("basic", "post")
MAX_LIFETIME = 24 * 3600.0
# A token answered without expires_in: RFC 6749 lets the server omit it ("the authorization
# server SHOULD provide the expiration time via other means"). Five minutes keeps repeated
# runs fast without handing a child a token that has long expired.
DEFAULT_LIFETIME = 300.0
REFRESH_MARGIN = 60.0  # refresh when less than min(this, 10% of the lifetime) remains
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 15.0
EXCERPT = 200  # characters of a non-JSON error body shown
CACHE_DIR = "oauth2"
STALE_AFTER = 7 * 86400.0  # a cache entry nobody used for a week is dropped (it is refetched)


class OAuth2Spec:
    """The oauth2 table as written (token_url unexpanded, client_id/secret maybe references)."""

    __slots__ = ("audience", "client_auth", "client_id", "client_secret", "scope", "token_url")

    def __init__(
        self,
        token_url: str,
        client_id: str | SecretRef,
        client_secret: str | SecretRef,
        *,
        scope: str | None = None,
        audience: str | None = None,
        client_auth: str = "basic",
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope  # space-separated, as sent
        self.audience = audience
        self.client_auth = client_auth

    @classmethod
    def from_toml(cls, table: Mapping[str, object], base_dir: str, where: str) -> OAuth2Spec:
        """From a table schema.check_oauth2 accepted. `where` names the variable (env.NAME)."""
        from kai_launch.schema import is_secret_ref
        from kai_launch.secrets import SecretRef

        def part(key: str) -> str | SecretRef:
            value = table[key]
            if is_secret_ref(value):
                assert isinstance(value, dict)
                return SecretRef.from_toml(value, base_dir, _sub_where(where, key))
            return str(value)

        scope = table.get("scope")
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        audience = table.get("audience")
        return cls(
            str(table["token_url"]),
            part("client_id"),
            part("client_secret"),
            scope=str(scope) if scope else None,
            audience=str(audience) if audience else None,
            client_auth=str(table.get("client_auth", "basic")),
        )

    def describe(self) -> str:
        """`client kai-ide at https://idp/token`: what show and doctor say; never the secret."""
        cid = (
            self.client_id if isinstance(self.client_id, str) else f"({self.client_id.describe()})"
        )
        return f"client {cid} at {redact_url(self.token_url)}"

    def to_toml(self) -> dict[str, object]:
        """The table as written, for `profiles show --reveal`."""

        def part(value: str | SecretRef) -> object:
            if isinstance(value, str):
                return value
            return {value.kind: value.arg}

        out: dict[str, object] = {
            "token_url": self.token_url,
            "client_id": part(self.client_id),
            "client_secret": part(self.client_secret),
        }
        if self.scope:
            out["scope"] = self.scope
        if self.audience:
            out["audience"] = self.audience
        out["client_auth"] = self.client_auth
        return out

    def _key(self) -> tuple[object, ...]:
        return (
            self.token_url,
            self.client_id,
            self.client_secret,
            self.scope,
            self.audience,
            self.client_auth,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OAuth2Spec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"OAuth2Spec({self.describe()})"  # never the client secret


def _sub_where(where: str, key: str) -> str:
    # "profile 'corp' (/p.toml), key 'env.X'" -> "..., key 'env.X.oauth2.client_secret'"
    if where.endswith("'") and ", key '" in where:
        return f"{where[:-1]}.oauth2.{key}'"
    return f"{where}, key 'oauth2.{key}'"


class Token:
    """A fetched (or cached) access token and what doctor reports about it."""

    __slots__ = ("cached", "expires_at", "obtained_at", "route", "token_type", "value")

    def __init__(
        self,
        value: str,
        token_type: str,
        expires_at: float,
        obtained_at: float,
        *,
        cached: bool,
        route: str,
    ) -> None:
        self.value = value
        self.token_type = token_type
        self.expires_at = expires_at
        self.obtained_at = obtained_at  # when the request was sent: lifetimes count from there
        self.cached = cached
        self.route = route  # "through proxy http://u:***@p:3128" / "directly" / "" (cached)

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at}, cached={self.cached})"  # never the value


# --- route: what requests would do for the child ---------------------------------------------


def route_for(url: str, child: Mapping[str, str]) -> tuple[str | None, str | bool]:
    """(proxy or None, verify) that requests, run under `child`, would use for `url`.

    requests reads `<scheme>_proxy` then ALL_PROXY, skips it when NO_PROXY matches, and trusts
    REQUESTS_CA_BUNDLE, then CURL_CA_BUNDLE, then certifi. doctor's probe_route applies the
    same rules without touching os.environ (requests' own helper swaps os.environ's no_proxy).
    """
    from kai_launch.checks import probe_route

    proxy = probe_route(url, child)
    verify: str | bool = child.get("REQUESTS_CA_BUNDLE") or child.get("CURL_CA_BUNDLE") or True
    return proxy, verify


def _via(proxy: str | None) -> str:
    return f"through proxy {redact_url(proxy)}" if proxy else "directly (no proxy)"


# --- resolution -------------------------------------------------------------------------------


def fetch_token(
    ref: SecretRef,
    environ: Mapping[str, str],
    child: Mapping[str, str],
    *,
    now: float | None = None,
    timeout: float | None = None,
) -> Token:
    """The access token for `ref` (kind "oauth2"): from the cache, else from its token_url.

    environ: the parent's environment (for ${VAR} and the nested secret references); child:
    the environment the child gets so far (its proxies, NO_PROXY and CA bundle variables).
    """
    from kai_launch.expand import expand_vars
    from kai_launch.secrets import resolve_secret

    spec = ref.arg
    assert isinstance(spec, OAuth2Spec)
    where = ref.where
    url = expand_vars(spec.token_url, environ, _sub_where(where, "token_url")).strip()
    if not url.lower().startswith(("http://", "https://")):
        raise SecretError(
            f"token_url '{redact_url(url)}' is not an http:// or https:// URL",
            _sub_where(where, "token_url"),
            'write e.g. token_url = "https://idp.example.com/oauth2/token"',
        )
    from kai_launch.schema import token_url_problem

    problem = token_url_problem(url)
    if problem is not None:
        raise SecretError(problem[0], _sub_where(where, "token_url"), problem[1])
    client_id = (
        spec.client_id
        if isinstance(spec.client_id, str)
        else resolve_secret(spec.client_id, environ)
    )
    secret = (
        spec.client_secret
        if isinstance(spec.client_secret, str)
        else resolve_secret(spec.client_secret, environ)
    )
    if not secret:
        raise SecretError(
            "the client secret is empty",
            _sub_where(where, "client_secret"),
            "an empty secret is almost always an unset variable or a failed secret command",
        )
    key = cache_key(url, client_id, secret, spec.scope, spec.audience, spec.client_auth)
    path = cache_path(key)
    now = time.time() if now is None else now
    hit = read_cache(path, now)
    if hit is not None:
        return hit
    with _locked(path):
        # Another run may have fetched it while this one waited for the lock.
        hit = read_cache(path, time.time())
        if hit is not None:
            return hit
        timeouts = (CONNECT_TIMEOUT, READ_TIMEOUT) if timeout is None else (timeout, timeout)
        token = _request(spec, url, client_id, secret, child, where, timeouts)
        write_cache(path, token)
        prune(os.path.dirname(path), time.time(), keep=path)
    return token


def cache_key(
    url: str,
    client_id: str,
    secret: str,
    scope: str | None,
    audience: str | None,
    client_auth: str,
) -> str:
    import hashlib
    import json

    secret_digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
    material = json.dumps([url, client_id, scope, audience, client_auth, secret_digest])
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def cache_dir() -> str:
    return os.path.join(paths.user_cache_dir(), CACHE_DIR)


def cache_path(key: str) -> str:
    return os.path.join(cache_dir(), key[:40] + ".json")


def still_fresh(expires_at: float, obtained_at: float, now: float) -> bool:
    """True while more than min(REFRESH_MARGIN, 10% of the lifetime) remains."""
    lifetime = max(expires_at - obtained_at, 0.0)
    margin = min(REFRESH_MARGIN, 0.1 * lifetime)
    # A clock that went backwards makes the lifetime a lie: fetch again.
    return obtained_at <= now + 5 and expires_at - now > margin


def read_cache(path: str, now: float) -> Token | None:
    """The cached token if it is still fresh; None when missing, stale or unreadable (a corrupt
    file is ignored here and replaced by the next write)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("access_token")
    expires_at = data.get("expires_at")
    obtained_at = data.get("obtained_at")
    token_type = data.get("token_type", "")
    if not (
        isinstance(value, str)
        and value
        and isinstance(expires_at, (int, float))
        and isinstance(obtained_at, (int, float))
        and isinstance(token_type, str)
    ):
        return None
    if not still_fresh(float(expires_at), float(obtained_at), now):
        return None
    return Token(value, token_type, float(expires_at), float(obtained_at), cached=True, route="")


def write_cache(path: str, token: Token) -> None:
    """Atomically (temp file + fsync + os.replace), 0600 in a 0700 dir. A cache that cannot be
    written costs a fetch next time, not this run: errors are swallowed."""
    import json

    from kai_launch.cachefile import write_quietly

    data = json.dumps(
        {
            "access_token": token.value,
            "token_type": token.token_type,
            "expires_at": token.expires_at,
            "obtained_at": token.obtained_at,
        }
    ).encode("utf-8")
    write_quietly(path, data)


def prune(directory: str, now: float, *, keep: str) -> None:
    """Drop what a rotated secret or a changed scope leaves behind: entries (and their locks)
    untouched for STALE_AFTER, and temp files of a run killed mid-write. Only after a fetch."""
    import contextlib

    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        limit = 3600.0 if name.endswith(".tmp") else STALE_AFTER
        with contextlib.suppress(OSError):
            if path not in (keep, keep + ".lock") and now - os.stat(path).st_mtime > limit:
                os.unlink(path)


def _locked(path: str) -> _Lock:
    return _Lock(path + ".lock")


class _Lock:
    """One fetch at a time per cache entry across processes (POSIX flock); elsewhere no lock,
    which costs at most a duplicate fetch: the file itself is always replaced atomically."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            self._close()

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


# --- the request --------------------------------------------------------------------------------


def _request(
    spec: OAuth2Spec,
    url: str,
    client_id: str,
    secret: str,
    child: Mapping[str, str],
    where: str,
    timeouts: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
) -> Token:
    import requests

    proxy, verify = route_for(url, child)
    via = _via(proxy)
    shown = redact_url(url)
    form = {"grant_type": "client_credentials"}
    if spec.scope:
        form["scope"] = spec.scope
    if spec.audience:
        form["audience"] = spec.audience
    headers = {"Accept": "application/json"}
    if spec.client_auth == "post":
        form["client_id"] = client_id
        form["client_secret"] = secret
    else:
        headers["Authorization"] = basic_authorization(client_id, secret)
    scrub = _scrubber(secret, headers.get("Authorization"))
    obtained_at = time.time()
    session = requests.Session()
    session.trust_env = False  # the parent's proxy and CA variables are not the child's
    try:
        response = session.post(
            url,
            data=form,
            headers=headers,
            proxies={"http": proxy, "https": proxy} if proxy else {},
            verify=verify,
            timeout=timeouts,
            allow_redirects=False,
        )
        body = response.content[:65536]
    except requests.RequestException as e:
        raise _network_error(e, shown, proxy, via, verify, where, scrub, timeouts) from None
    finally:
        session.close()
    return _parse(response, body, shown, via, where, scrub, obtained_at)


def basic_authorization(client_id: str, secret: str) -> str:
    """RFC 6749 2.3.1: both are form-urlencoded before they are joined and base64-encoded."""
    import base64
    from urllib.parse import quote

    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(raw.encode("utf-8")).decode("ascii")


def _scrubber(secret: str, authorization: str | None) -> Callable[[str], str]:
    """Removes what may never be shown from text a server sent back (it may echo the request)."""
    from urllib.parse import quote, quote_plus

    needles = {secret, quote(secret, safe=""), quote_plus(secret)}
    if authorization:
        needles.update({authorization, authorization.split(" ", 1)[-1]})
    ordered = sorted((n for n in needles if n), key=len, reverse=True)

    def scrub(text: str) -> str:
        for needle in ordered:
            text = text.replace(needle, "***")
        return text

    return scrub


def _excerpt(text: str, scrub: Callable[[str], str]) -> str:
    """A short, one-line, printable excerpt of a response body."""
    flat = " ".join(scrub(text).split())
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat[:EXCERPT] + ("..." if len(flat) > EXCERPT else "")


def _network_error(
    e: requests.RequestException,
    shown: str,
    proxy: str | None,
    via: str,
    verify: str | bool,
    where: str,
    scrub: Callable[[str], str],
    timeouts: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
) -> SecretError:
    import requests

    reason = _reason(e, scrub)
    check = "kai-run doctor" + (" (and the proxy's reachability)" if proxy else "")
    if isinstance(e, requests.exceptions.SSLError):
        trusted = verify if isinstance(verify, str) else "certifi's public roots"
        return SecretError(
            f"TLS verification failed for token endpoint {shown} {via}: {reason}",
            where,
            f"kai-run trusts {trusted} for it: add the CA that signs the endpoint's (or the "
            "proxy's) certificate to the profile's ca_bundle",
        )
    if isinstance(e, requests.exceptions.ProxyError):
        return SecretError(
            f"proxy {redact_url(proxy or '')} failed to reach token endpoint {shown}: {reason}",
            where,
            "check the proxy and proxy_auth (a 407 means the proxy wants credentials), or add the "
            f"token endpoint's host to no_proxy if it is reached directly; run {check}",
        )
    if isinstance(e, requests.exceptions.ConnectTimeout):
        what = f"could not connect to token endpoint {shown} {via} within {timeouts[0]:g} s"
    elif isinstance(e, requests.exceptions.ReadTimeout):
        import re

        # urllib3 reads a proxy's answer to CONNECT with the connect timeout, and says which.
        found = re.search(r"read timeout=([0-9.]+)", str(e))
        seconds = float(found.group(1)) if found else timeouts[1]
        what = f"token endpoint {shown}, reached {via}, did not answer within {seconds:g} s"
    else:
        what = ""
    if what:
        hint = f"check token_url, the proxy and no_proxy; run {check}"
        if proxy:
            hint += "; a proxy that never answers CONNECT looks the same"
        return SecretError(what, where, hint)
    if isinstance(e, requests.exceptions.InvalidSchema) and proxy and "socks" in proxy.lower():
        return SecretError(
            f"cannot reach token endpoint {shown} through SOCKS proxy {redact_url(proxy)}: "
            "requests needs PySocks for SOCKS proxies",
            where,
            "pip install 'requests[socks]' into kai-run's environment, or give the profile an "
            "http:// proxy",
        )
    return SecretError(
        f"cannot reach token endpoint {shown} {via}: {reason}",
        where,
        f"check token_url, the proxy and no_proxy; run {check}",
    )


def _reason(e: BaseException, scrub: Callable[[str], str]) -> str:
    """The innermost useful words of a requests/urllib3 exception, e.g. "Connection refused".

    urllib3 nests them: "...(Caused by NewConnectionError("...: [Errno 111] Connection refused"))".
    """
    import re

    text = str(e)
    for pattern, lead in (
        (r"\[Errno -?\d+\] ([^'\")]+)", ""),
        (r"\[SSL: [A-Z_]+\] ([^'\"(]+)", ""),
        (r"Tunnel connection failed: ([^'\")]+)", "the tunnel was refused: "),
    ):
        found = re.search(pattern, text)
        if found:
            return lead + _excerpt(found.group(1).strip(), scrub)
    if "Caused by" in text:
        text = text.rsplit("Caused by", 1)[1]
    return _excerpt(text.strip().rstrip(")'\""), scrub) or type(e).__name__


def _parse(
    response: requests.Response,
    body: bytes,
    shown: str,
    via: str,
    where: str,
    scrub: Callable[[str], str],
    obtained_at: float,
) -> Token:
    import json

    status = f"HTTP {response.status_code}" + (f" {response.reason}" if response.reason else "")
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if response.is_redirect or 300 <= response.status_code < 400:
        location = redact_url(response.headers.get("Location", "?"))
        raise SecretError(
            f"token endpoint {shown} answered {status}, a redirect to {scrub(location)}",
            where,
            "a token endpoint answers the POST itself: check token_url (an SSO portal or a "
            "proxy's login page redirects)",
        )
    # Some gateways answer an OAuth2 error with 200: the error code still says what is wrong.
    error_body = (
        isinstance(data, dict)
        and not data.get("access_token")
        and isinstance(data.get("error"), str)
    )
    if response.status_code >= 400 or not isinstance(data, dict) or error_body:
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            code = _excerpt(data["error"], scrub)
            description = data.get("error_description")
            detail = code + (
                f": {_excerpt(description, scrub)}" if isinstance(description, str) else ""
            )
            refused = (
                "the client credentials"
                if code in ("invalid_client", "unauthorized_client", "access_denied")
                else "the token request"
            )
            raise SecretError(
                f"token endpoint {shown} refused {refused}: {detail}",
                where,
                _ERROR_HINTS.get(code, _GENERIC_HINT),
            )
        excerpt = _excerpt(text, scrub)
        kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no type"
        said = f" ({kind}): {excerpt}" if excerpt else f" ({kind}, empty body)"
        if response.status_code < 400:
            raise SecretError(
                f"token endpoint {shown} answered {status} but not with a JSON object{said}",
                where,
                "check token_url: it should be the OAuth2 token endpoint, not a login page "
                f"or a proxy's block page (the request went {via})",
            )
        hint = (
            "check token_url"
            if response.status_code in (404, 405)
            else "the endpoint failed; try again, or ask its administrators"
            if response.status_code >= 500
            else _GENERIC_HINT
        )
        raise SecretError(f"token endpoint {shown} answered {status}{said}", where, hint)
    value = data.get("access_token")
    if not isinstance(value, str) or not value:
        keys = ", ".join(sorted(str(k) for k in data)[:8]) or "none"
        raise SecretError(
            f"token endpoint {shown} answered {status} without an access_token "
            f"(keys: {scrub(keys)})",
            where,
            "check token_url: an OAuth2 token endpoint answers "
            '{"access_token": "...", "token_type": "Bearer", "expires_in": 3600}',
        )
    token_type = data.get("token_type")
    lifetime = _lifetime(data.get("expires_in"))
    return Token(
        value,
        token_type if isinstance(token_type, str) else "",
        obtained_at + lifetime,
        obtained_at,
        cached=False,
        route=via,
    )


def _lifetime(raw: object) -> float:
    """expires_in in seconds (some servers send it as a string); the default when absent."""
    if isinstance(raw, bool):
        return DEFAULT_LIFETIME
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return DEFAULT_LIFETIME
    import math

    if isinstance(raw, (int, float)) and math.isfinite(raw):
        # A "never expires" answer is still re-fetched daily: a revoked client then shows up.
        return min(max(float(raw), 0.0), MAX_LIFETIME)
    return DEFAULT_LIFETIME


_GENERIC_HINT = (
    'check client_id and client_secret, client_auth ("basic", the default, sends them in an '
    'Authorization header; "post" in the form body), scope and audience'
)
_ERROR_HINTS = {
    "invalid_client": 'check client_id and client_secret, and client_auth: "basic" (the default) '
    'sends them in an Authorization header, "post" in the form body; servers accept one of them',
    "invalid_scope": "check scope: the client is not allowed (or the server does not know) it",
    "unauthorized_client": "the client may not use the client_credentials grant: ask the "
    "identity provider's administrators to allow it",
    "unsupported_grant_type": "this endpoint does not offer the client_credentials grant: check "
    "token_url",
    "invalid_request": 'check scope, audience and client_auth ("basic" or "post"): the '
    "server found the request malformed",
    "invalid_grant": "check scope and audience, and that the client is enabled",
    "access_denied": "the client was refused: check scope and audience, and ask the identity "
    "provider's administrators",
}
