"""The profile file's schema, as data, and the one validator every reader and editor uses.

Validation happens once, when a file is loaded (and before an edit is written); the rest of the
code trusts the shapes checked here. Checks that depend on the parent environment (`${VAR}`
expansion, proxy URL syntax after expansion, files on disk) happen when a profile is used.
"""

from __future__ import annotations

from kai_launch.errors import ConfigError, did_you_mean

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SECRET_KINDS = ("env", "file", "command", "oauth2")


class Field:
    """One key of a profile: its kind (how it is checked), how `extends` merges it, and its doc."""

    __slots__ = ("choices", "doc", "kind", "merge", "name", "subfields")

    def __init__(
        self,
        name: str,
        kind: str,
        doc: str,
        *,
        merge: str = "replace",
        choices: tuple[str, ...] = (),
        subfields: tuple[Field, ...] = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self.doc = doc
        self.merge = merge
        self.choices = choices
        self.subfields = subfields


# Kinds: str, proxy (a proxy URL), bool, proxy_or_bool, choice, str_or_list (a string is one item),
# argv (non-empty list of strings), url_list, name_list (variable names), secret (string or
# secret reference), env (table of variable -> value or reference), number, hostport, table.
PROXY_AUTH_FIELDS = (
    Field("username", "secret", "user name put into every proxy URL (percent-encoded)"),
    Field("password", "secret", "password put into every proxy URL (percent-encoded)"),
)

SIDECAR_FIELDS = (
    Field("command", "argv", "the sidecar's argv, no shell; `~` and ${VAR} are expanded"),
    Field("ready", "hostport", "host:port that accepts TCP once the sidecar serves"),
    Field("ready_timeout", "number", "seconds to wait for `ready` (default 15)"),
    Field("ready_file", "str", "a file that must exist before the sidecar counts as ready"),
    Field("grace_period", "number", "seconds between SIGTERM and SIGKILL at stop (default 5)"),
    Field("env", "env", "extra variables for the sidecar only"),
)

PROFILE_FIELDS: tuple[Field, ...] = (
    Field("extends", "str", "name of one parent profile"),
    Field("description", "str", "one line shown by `profiles list`"),
    Field("http_proxy", "proxy", "proxy for http:// URLs (HTTP_PROXY and http_proxy)"),
    Field("https_proxy", "proxy", "proxy for https:// URLs (HTTPS_PROXY and https_proxy)"),
    Field("all_proxy", "proxy", "fallback proxy for any scheme (ALL_PROXY and all_proxy)"),
    Field(
        "no_proxy", "str_or_list", "hosts reached directly (NO_PROXY and no_proxy)", merge="concat"
    ),
    Field("ca_bundle", "str_or_list", "PEM files of extra CAs to trust", merge="concat"),
    Field(
        "ca_mode",
        "choice",
        "append: public roots (certifi) + ca_bundle; replace: only ca_bundle; "
        "system: the operating system's trust store + ca_bundle",
        choices=("append", "replace", "system"),
    ),
    Field("insecure", "bool", "turn TLS verification off where variables can (loud warning)"),
    Field("openai_proxy", "proxy_or_bool", "true: OPENAI_PROXY = https_proxy; or a proxy URL"),
    Field(
        "jvm",
        "bool",
        "true: proxies, NO_PROXY and a truststore as -D options in JAVA_TOOL_OPTIONS and MAVEN_OPTS",
    ),
    Field("command", "argv", "command run when none follows `--`"),
    Field("check_urls", "url_list", "endpoints `kai-run doctor` tests"),
    Field(
        "pac_url",
        "pac",
        "PAC file (http://, https:// or file:) evaluated for check_urls to pick the proxy",
    ),
    Field("unset", "name_list", "variables removed from the child's environment", merge="concat"),
    Field(
        "proxy_auth",
        "table",
        "credentials for the proxies",
        merge="table",
        subfields=PROXY_AUTH_FIELDS,
    ),
    Field("env", "env", "any variables for the child", merge="table"),
    Field(
        "sidecar", "table", "a proxy kai-run starts, watches and stops", subfields=SIDECAR_FIELDS
    ),
)

TOP_LEVEL_KEYS = ("default_profile", "profiles")

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in PROFILE_FIELDS}


def field_for(dotted: str) -> Field | None:
    """The Field for `https_proxy`, `proxy_auth.username`, `sidecar.ready`; None for unknown keys.

    `env.NAME` and `sidecar.env.NAME` have no Field of their own: their parent `env` answers.
    """
    parts = dotted.split(".")
    fields = PROFILE_FIELDS
    found: Field | None = None
    for part in parts:
        found = next((f for f in fields if f.name == part), None)
        if found is None:
            return None
        if found.kind == "env":
            return found
        fields = found.subfields
    return found


def valid_var_name(name: str) -> bool:
    """POSIX shells' rule for names they can export: [A-Za-z_][A-Za-z0-9_]*."""
    return bool(name) and name.isascii() and name.isidentifier()


def is_secret_ref(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SECRET_KINDS


class Where:
    """Where a value sits, for error messages: file, profile, dotted key; line found on demand."""

    __slots__ = ("key", "path", "profile")

    def __init__(self, path: str, profile: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.profile = profile
        self.key = key

    def sub(self, key: str) -> Where:
        return Where(self.path, self.profile, f"{self.key}.{key}" if self.key else key)

    def __str__(self) -> str:
        parts = [self.path]
        line = locate_line(self.path, self.profile, self.key)
        if line:
            parts[0] += f", line {line}"
        if self.profile is not None:
            parts.append(f"profile '{self.profile}'")
        if self.key:
            parts.append(f"key '{self.key}'")
        return ", ".join(parts)


def _type_name(value: object) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _fail(where: Where, what: str, hint: str | None = None) -> ConfigError:
    return ConfigError(what, str(where), hint)


def validate_document(data: Mapping[str, object], path: str) -> None:
    """Check a parsed profile file against the schema; raise ConfigError at the first problem."""
    top = Where(path)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = did_you_mean(key, TOP_LEVEL_KEYS) or "top-level keys: default_profile, profiles"
            raise _fail(Where(path, None, key), f"unknown top-level key '{key}'", hint)
    default = data.get("default_profile")
    if default is not None and not isinstance(default, str):
        raise _fail(
            top.sub("default_profile"),
            f"default_profile must be a string, not {_type_name(default)}",
            'write default_profile = "NAME"',
        )
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise _fail(
            top.sub("profiles"),
            "profiles must be a table",
            "write each profile as a table: [profiles.NAME]",
        )
    for name, body in profiles.items():
        where = Where(path, name)
        if not name.strip():
            raise _fail(where, "a profile name cannot be empty")
        if not isinstance(body, dict):
            raise _fail(
                where,
                f"profile '{name}' must be a table, not {_type_name(body)}",
                f"write it as [profiles.{name}]",
            )
        validate_fields(body, PROFILE_FIELDS, where)


def validate_fields(body: Mapping[str, object], fields: tuple[Field, ...], where: Where) -> None:
    names = [f.name for f in fields]
    for key, value in body.items():
        field = next((f for f in fields if f.name == key), None)
        if field is None:
            hint = did_you_mean(key, names) or "known keys: " + ", ".join(names)
            raise _fail(where.sub(key), f"unknown key '{key}'", hint)
        check_value(field, value, where.sub(key))


def check_value(field: Field, value: object, where: Where) -> None:
    """Check one value against its Field's kind (shape only; no environment, no disk)."""
    try:
        _check_value(field, value, where)
    except ConfigError as e:
        if e.hint is None:
            e.hint = f"{field.name} is {_EXPECTED.get(field.kind, 'described in the README')}: {field.doc}"
        raise


_EXPECTED = {
    "str": "a string",
    "proxy": 'a proxy URL such as "http://proxy.example.com:3128"',
    "hostport": 'a "host:port" string',
    "bool": "true or false",
    "proxy_or_bool": "true, false or a proxy URL",
    "choice": "one of a fixed set of words",
    "number": "a number of seconds",
    "str_or_list": 'a string or a list of strings, e.g. ["a", "b"]',
    "argv": 'a list of strings, e.g. ["kai-rpc-server", "--log-level", "info"]',
    "url_list": 'a list of URLs, e.g. ["https://api.openai.com/v1/models"]',
    "name_list": 'a list of variable names, e.g. ["AWS_PROFILE"]',
    "secret": 'a string or a secret reference such as { env = "NAME" }',
    "env": 'a table of variables, e.g. { NAME = "value" }',
    "table": "a table",
    "pac": 'an http://, https:// or file: URL, e.g. "http://wpad.corp.example/proxy.pac"',
}


def _check_value(field: Field, value: object, where: Where) -> None:
    kind = field.kind
    if kind in ("str", "proxy", "hostport"):
        if not isinstance(value, str):
            raise _fail(where, f"expected a string, got {_type_name(value)}")
        if kind == "hostport":
            _check_hostport(value, where)
    elif kind == "pac":
        _check_pac_url(value, where)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _fail(where, f"expected true or false, got {_type_name(value)}")
    elif kind == "proxy_or_bool":
        if not isinstance(value, (bool, str)):
            raise _fail(where, f"expected true, false or a proxy URL, got {_type_name(value)}")
    elif kind == "choice":
        if value not in field.choices:
            hint = did_you_mean(str(value), field.choices) or "one of: " + ", ".join(field.choices)
            raise _fail(where, f"expected one of {', '.join(field.choices)}, got {value!r}", hint)
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise _fail(where, f"expected a positive number of seconds, got {value!r}")
    elif kind == "str_or_list":
        items = [value] if isinstance(value, str) else value
        _check_str_list(items, where)
    elif kind in ("argv", "url_list", "name_list"):
        _check_str_list(value, where)
        assert isinstance(value, list)
        if kind == "argv" and (not value or not value[0]):
            raise _fail(where, "the command cannot be empty", 'write e.g. ["kai-rpc-server"]')
        if kind == "url_list":
            for url in value:
                if not url.startswith(("http://", "https://")):
                    raise _fail(where, f"'{url}' is not an http:// or https:// URL")
        if kind == "name_list":
            for name in value:
                _check_var_name(name, where)
    elif kind == "secret":
        if not isinstance(value, str):
            check_secret_ref(value, where)
    elif kind == "env":
        if not isinstance(value, dict):
            raise _fail(where, f"expected a table of variables, got {_type_name(value)}")
        for name, item in value.items():
            _check_var_name(name, where.sub(name))
            if isinstance(item, (str, int, float)):  # bool is an int: "true"/"false"
                continue
            check_secret_ref(item, where.sub(name))
    elif kind == "table":
        if not isinstance(value, dict):
            raise _fail(where, f"expected a table, got {_type_name(value)}")
        validate_fields(value, field.subfields, where)


def check_secret_ref(value: object, where: Where, *, nested: bool = False) -> None:
    """nested: a reference inside an oauth2 table (client_id, client_secret)."""
    example = '{ env = "NAME" }, { file = "PATH" } or { command = ["prog", "arg"] }'
    if not isinstance(value, dict):
        raise _fail(
            where,
            f"expected a string or a secret reference, got {_type_name(value)}",
            f"a secret reference is {example}",
        )
    if len(value) != 1:
        raise _fail(
            where, "a secret reference has exactly one of env, file, command", f"write {example}"
        )
    kind, arg = next(iter(value.items()))
    if kind not in SECRET_KINDS:
        raise _fail(
            where,
            f"unknown secret reference '{kind}'",
            did_you_mean(kind, SECRET_KINDS) or f"write {example}",
        )
    if kind == "oauth2":
        # Only the profile's own env: the token is fetched through the profile's proxy and CA
        # bundle, which proxy_auth helps build and which the sidecar's env does not get.
        if nested or (where.key or "").split(".")[0] != "env":
            raise _fail(
                where.sub("oauth2"),
                "an oauth2 reference is only allowed in the profile's env table",
                "the token is fetched through the profile's proxy and CA bundle: put it in "
                "env.NAME; here use { env = ... }, { file = ... } or { command = [...] }",
            )
        check_oauth2(arg, where.sub("oauth2"))
        return
    if kind == "command":
        _check_str_list(arg, where.sub("command"))
        if not arg:
            raise _fail(where.sub("command"), "the command cannot be empty")
    elif not isinstance(arg, str):
        raise _fail(
            where.sub(kind), f"expected a string, got {_type_name(arg)}", f"write {example}"
        )
    elif not arg:
        raise _fail(
            where.sub(kind), f"the {kind} of a secret reference cannot be empty", f"write {example}"
        )
    elif kind == "env":
        _check_var_name(arg, where.sub(kind))


_OAUTH2_EXAMPLE = (
    '{ oauth2 = { token_url = "https://idp.example.com/oauth2/token", client_id = "kai", '
    'client_secret = { env = "KAI_CLIENT_SECRET" } } }'
)


def token_url_problem(url: str) -> tuple[str, str] | None:
    """(what, hint) when a token URL carries credentials or a fragment, else None."""
    authority = url.partition("://")[2]
    for stop in "/?#":
        authority = authority.partition(stop)[0]
    if "@" in authority:
        # requests would send them as the Basic credentials, in place of the client's own.
        return (
            "token_url must not hold credentials (user:password@)",
            "the client id and secret go in client_id and client_secret",
        )
    if "#" in url:
        return ("token_url must not have a #fragment (RFC 6749 3.2)", "remove the #... part")
    return None


def check_oauth2(value: object, where: Where) -> None:
    """The table of an `{ oauth2 = {...} }` reference (shape only; token_url's ${VAR} later)."""
    try:
        _check_oauth2(value, where)
    except ConfigError as e:
        if e.hint is None:
            e.hint = f"an oauth2 reference is {_OAUTH2_EXAMPLE}"
        raise


def _check_oauth2(value: object, where: Where) -> None:
    from kai_launch.oauth2 import CLIENT_AUTH, KEYS, REQUIRED

    if not isinstance(value, dict):
        raise _fail(
            where,
            f"expected a table with token_url, client_id and client_secret, got {_type_name(value)}",
            f"write {_OAUTH2_EXAMPLE}",
        )
    for key in value:
        if key not in KEYS:
            raise _fail(
                where.sub(key),
                f"unknown oauth2 key '{key}'",
                did_you_mean(key, KEYS) or "oauth2 keys: " + ", ".join(KEYS),
            )
    for key in REQUIRED:
        if key not in value:
            raise _fail(where, f"the oauth2 reference has no {key}", f"write {_OAUTH2_EXAMPLE}")
    url = value["token_url"]
    if not isinstance(url, str):
        raise _fail(where.sub("token_url"), f"expected a URL string, got {_type_name(url)}")
    if not url.startswith("${") and not url.lower().startswith(("http://", "https://")):
        raise _fail(
            where.sub("token_url"),
            f"token_url '{url}' is not an http:// or https:// URL",
            'write e.g. token_url = "https://idp.example.com/oauth2/token"',
        )
    problem = token_url_problem(url)
    if problem is not None:
        raise _fail(where.sub("token_url"), *problem)
    for key in ("client_id", "client_secret"):
        item = value[key]
        if isinstance(item, str):
            if not item:
                raise _fail(
                    where.sub(key),
                    f"{key} cannot be empty",
                    f'write a string, or a reference such as {key} = {{ env = "NAME" }}',
                )
            continue
        check_secret_ref(item, where.sub(key), nested=True)
    scope = value.get("scope")
    if scope is not None:
        if isinstance(scope, list):
            _check_str_list(scope, where.sub("scope"))
            if not all(s.strip() for s in scope):
                raise _fail(where.sub("scope"), "a scope in the list is empty")
        elif not isinstance(scope, str):
            raise _fail(
                where.sub("scope"),
                f"expected a string or a list of strings, got {_type_name(scope)}",
                'write scope = "a b" or scope = ["a", "b"]',
            )
    audience = value.get("audience")
    if audience is not None and not isinstance(audience, str):
        raise _fail(where.sub("audience"), f"expected a string, got {_type_name(audience)}")
    auth = value.get("client_auth")
    if auth is not None and auth not in CLIENT_AUTH:
        raise _fail(
            where.sub("client_auth"),
            f"expected one of basic, post, got {auth!r}",
            did_you_mean(str(auth), CLIENT_AUTH)
            or '"basic" (HTTP Basic, the default) or "post" (client_id/client_secret in the body)',
        )


def _check_str_list(value: object, where: Where) -> None:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list of strings, got {_type_name(value)}")
    for item in value:
        if not isinstance(item, str):
            raise _fail(where, f"expected a list of strings, found {_type_name(item)} {item!r}")


def _check_var_name(name: str, where: Where) -> None:
    if not valid_var_name(name):
        raise _fail(
            where,
            f"invalid variable name '{name}'",
            "names are letters, digits and _, and do not start with a digit",
        )


def _check_pac_url(value: object, where: Where) -> None:
    if not isinstance(value, str):
        raise _fail(where, f"expected a string, got {_type_name(value)}")
    lower = value.lower()
    hint = (
        'write "http://wpad.corp.example/proxy.pac", "file:///etc/proxy.pac" or '
        '"file:proxy.pac" (relative to this file)'
    )
    if lower.startswith(("http://", "https://")):
        if not value.split("://", 1)[1].split("/", 1)[0]:
            raise _fail(where, f"PAC URL '{value}' has no host", hint)
        return
    if lower.startswith("file:"):
        if not value[5:].lstrip("/"):
            raise _fail(where, f"PAC URL '{value}' names no file", hint)
        return
    scheme = value.split(":", 1)[0] if ":" in value else ""
    what = f"scheme '{scheme}:'" if scheme else "no scheme"
    raise _fail(where, f"PAC URL '{value}' has {what}: expected http://, https:// or file:", hint)


def _check_hostport(value: str, where: Where) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise _fail(where, f"'{value}' is not host:port", 'write e.g. "127.0.0.1:8080"')


# --- finding the line of a key, for error messages only -------------------------------------


def locate_line(path: str, profile: str | None, key: str | None) -> int | None:
    """Best-effort line number of `key` in profile `profile` of the TOML file at `path`."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    key_parts = key.split(".") if key else []
    table: list[str] = []
    want_table = (["profiles", profile] if profile is not None else []) + key_parts[:-1]
    best: int | None = None
    for number, raw in enumerate(lines, 1):
        line = _strip_comment(raw).strip()
        if line.startswith("["):
            table = _split_dotted(line.strip("[]").strip())
            if profile is not None and table == ["profiles", profile] and best is None:
                best = number  # at least the profile's header
            if table == ["profiles", profile, *key_parts] and key_parts:
                return number
            continue
        if "=" not in line or line.startswith("#"):
            continue
        lhs = _split_dotted(line.split("=", 1)[0].strip())
        full = table + lhs
        if not key_parts and profile is None:
            continue
        target = want_table + key_parts[-1:]
        if full == target or (key_parts and full[: len(target)] == target):
            return number
        # `X = { oauth2 = { token_url = ... } }`: the line of env.X holds env.X.oauth2.*
        if (
            profile is not None
            and len(key_parts) > 2
            and full == ["profiles", profile, *key_parts[:2]]
        ):
            return number
        # a dotted or inline-table form such as `env.X = ...` or `env = { X = ... }`
        if profile is not None and key_parts and full[:3] == ["profiles", profile, key_parts[0]]:
            best = number
    if profile is None and key_parts:
        for number, raw in enumerate(lines, 1):
            if raw.strip().startswith(key_parts[0]):
                return number
    return best


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` inside quotes is kept)."""
    quote = ""
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i]
    return line


def _split_dotted(text: str) -> list[str]:
    parts: list[str] = []
    for raw in text.split("."):
        part = raw.strip()
        if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return parts
