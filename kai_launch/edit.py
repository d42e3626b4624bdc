"""Editing profile files the way a careful person would, and checking them.

Every edit is one transaction on one file:
1. take an exclusive lock on `profiles.toml.lock` next to the file (fcntl.flock on POSIX,
   msvcrt.locking on Windows), so concurrent `kai-run profiles set` runs queue instead of losing
   each other's changes;
2. re-read the file under the lock and parse it with tomlkit, which keeps comments, blank lines,
   key order and quoting;
3. change only what was asked (new keys go inside the profile's own table, values keep the quoting
   and layout of the value they replace, so a `set` followed by the reverse `set` gives back the
   same bytes);
4. validate the rendered text exactly as the loader would (tomllib + schema.validate_document),
   plus `extends` resolution and proxy URL syntax; an edit that adds a problem is refused and the
   file is left byte-identical;
5. write atomically: a temp file in the same directory, fsync, os.replace, fsync of the directory.
   The file keeps its mode; a new user file is created 0600 (its directory 0700).

tomlkit keeps each comment with the table *above* it, while a person reads a comment block right
above a header as belonging to the table *below*. Inserting and removing tables therefore looks at
blank lines: comments glued to a header (no blank line between) move with it, comments after a blank
line stay where they are.

Nothing here prints: functions return result records; cli.py renders them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kai_launch import paths
from kai_launch.config import CONFIG_ENV, Config, ConfigFile, candidate_files, parse_toml
from kai_launch.errors import ConfigError, EditError, KaiRunError, ProfileError, did_you_mean
from kai_launch.schema import (
    PROFILE_FIELDS,
    Field,
    Where,
    check_secret_ref,
    check_value,
    field_for,
    is_secret_ref,
    valid_var_name,
    validate_document,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from tomlkit.container import Container
    from tomlkit.items import Table
    from tomlkit.toml_document import TOMLDocument

LOCK_TIMEOUT = 30.0
PROXY_KEYS = ("http_proxy", "https_proxy", "all_proxy")
# The variables `profiles add --from-env` reads. Lower case first: urllib, requests and curl prefer
# it when both spellings are set.
ENV_PROXY_VARIABLES = {
    "http_proxy": ("http_proxy", "HTTP_PROXY"),
    "https_proxy": ("https_proxy", "HTTPS_PROXY"),
    "all_proxy": ("all_proxy", "ALL_PROXY"),
}
ENV_NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")
# Node's variable holds only the extra CAs, the others usually a whole bundle: Node's first.
ENV_CA_VARIABLES = (
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "AWS_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
)
SECRET_HINT = "--secret-env VAR, --secret-file PATH or --secret-command CMD"


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditTarget:
    """The file an edit goes to, and every file read with it (for `extends` across files)."""

    path: str
    scope: str  # "user", "site" or "file" (named by --config / KAI_RUN_CONFIG)
    context: tuple[tuple[str, str], ...]  # (path, scope) of all files read, lowest first


@dataclass
class EditResult:
    path: str
    summary: str  # e.g. "set profiles.corp.https_proxy"
    changed: bool = True
    created: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PathInfo:
    path: str
    scope: str
    exists: bool
    why: str  # "--config", "KAI_RUN_CONFIG", "site file", "user file"


@dataclass(frozen=True)
class Finding:
    message: str
    hint: str | None = None

    @classmethod
    def of(cls, error: KaiRunError) -> Finding:
        return cls(error.message(), error.hint)


@dataclass(frozen=True)
class CheckedFile:
    path: str
    scope: str
    exists: bool
    profiles: int = 0
    valid: bool = True


@dataclass
class CheckResult:
    files: list[CheckedFile] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, finding: Finding) -> None:
        if finding not in self.problems:
            self.problems.append(finding)

    def warn(self, finding: Finding) -> None:
        if finding not in self.warnings:
            self.warnings.append(finding)


# --- which file ---------------------------------------------------------------------------------


def edit_target(
    explicit: str | None, environ: Mapping[str, str], *, site: bool = False
) -> EditTarget:
    """The file to edit: --config/-c, else KAI_RUN_CONFIG, else the user file; --site: the site file.

    The same precedence as the loader, so an edit lands in a file that is actually read.
    """
    if site and explicit:
        raise EditError(
            "--site and --config name different files", "command line", "give one of them"
        )
    if site:
        return EditTarget(paths.site_config_file(), "site", tuple(candidate_files(None, {})))
    files = candidate_files(explicit, environ)
    path, scope = files[-1]
    return EditTarget(path, scope, tuple(files))


def config_paths(explicit: str | None, environ: Mapping[str, str]) -> list[PathInfo]:
    """The files kai-run reads, lowest precedence first, and whether each exists."""
    out: list[PathInfo] = []
    for path, scope in candidate_files(explicit, environ):
        why = ("--config" if explicit else CONFIG_ENV) if scope == "file" else f"{scope} file"
        out.append(PathInfo(path, scope, os.path.isfile(path), why))
    return out


# --- operations ---------------------------------------------------------------------------------


def example_text() -> str:
    """The commented starter file (the same content as the repository's profiles.example.toml)."""
    from importlib import resources

    return resources.files("kai_launch").joinpath("data/profiles.example.toml").read_text("utf-8")


def init_file(target: EditTarget, *, force: bool = False) -> EditResult:
    """Write the commented starter file; refuse to overwrite an existing file without force."""

    def change(session: _Session) -> str:
        if session.existed and not force:
            raise EditError(
                "profile file already exists",
                target.path,
                "pass --force to replace it with the starter file",
            )
        session.replace_text(example_text())
        return "wrote the starter profile file"

    return _transaction(target, change, create=True, focus=_APPEND, check_semantics=False)


def add_profile(
    target: EditTarget,
    name: str,
    *,
    extends: str | None = None,
    description: str | None = None,
    http_proxy: str | None = None,
    https_proxy: str | None = None,
    proxy: str | None = None,
    no_proxy: list[str] | tuple[str, ...] = (),
    ca_bundle: list[str] | tuple[str, ...] = (),
    from_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> EditResult:
    """Add a profile. from_env: fill it from that environment's proxy and CA variables first;
    explicit options win. Paths given here are relative to `cwd` (a command line's paths are)."""
    _check_profile_name(name, target.path)
    body: dict[str, object] = {}
    warnings: list[str] = []
    if from_env is not None:
        body.update(profile_from_env(from_env, warnings))
    if extends is not None:
        body["extends"] = extends
    if description is not None:
        body["description"] = description
    if proxy is not None:
        body["http_proxy"] = body["https_proxy"] = proxy
    if http_proxy is not None:
        body["http_proxy"] = http_proxy
    if https_proxy is not None:
        body["https_proxy"] = https_proxy
    if no_proxy:
        merged = [*_as_list(body.get("no_proxy")), *no_proxy]
        body["no_proxy"] = list(dict.fromkeys(merged))
    if ca_bundle:
        items = [_cli_path(p, cwd) for p in ca_bundle]
        body["ca_bundle"] = list(dict.fromkeys([*_as_list(body.get("ca_bundle")), *items]))
    order = [f.name for f in PROFILE_FIELDS]
    body = {k: body[k] for k in order if k in body}

    def change(session: _Session) -> str:
        if name in _profile_bodies(session.data):
            raise EditError(
                f"profile '{name}' already exists",
                session.where(name),
                f"change it with `kai-run profiles set {name} KEY VALUE`, or pick another name",
            )
        for key, value in body.items():
            _check_setting(session, name, key, value)
        session.warnings.extend(warnings)
        session.warnings.extend(_secret_warnings(name, body, session.path))
        session.warnings.extend(_ca_warnings(body, session.base_dir))
        _shadow_note(session, name)
        session.append_text(_render_profile(name, body))
        session.expect_profile(name, body)
        return f"added profile '{name}'"

    return _transaction(target, change, create=True, focus=_APPEND)


def set_value(
    target: EditTarget,
    name: str,
    key: str,
    value: str | None,
    *,
    secret: tuple[str, str | list[str]] | None = None,
    cwd: str | None = None,
) -> EditResult:
    """Set one key of a profile, typed from the schema. secret: ("env"|"file"|"command", arg)
    stores a reference instead of a value."""

    def change(session: _Session) -> str:
        _profile_parts(session, name)
        parts, fld, kind = _key_info(session, name, key)
        old = _lookup_value(session.data, name, parts)
        if secret is not None:
            if kind not in ("secret", "envvar"):
                raise EditError(
                    f"'{key}' cannot hold a secret reference",
                    session.where(name, key),
                    "secret references are for proxy_auth.username, proxy_auth.password, "
                    "env.NAME and sidecar.env.NAME",
                )
            kind_name, arg = secret
            if kind_name == "file" and isinstance(arg, str):
                arg = _cli_path(arg, cwd)
            new: object = {kind_name: arg}
        elif value is None:
            raise EditError(
                f"no value given for '{key}'",
                "command line",
                f"write `kai-run profiles set {name} {key} VALUE`, or use {SECRET_HINT}",
            )
        else:
            new = convert_value(fld, kind, value, old, Where(session.path, name, key))
            if key == "ca_bundle" and isinstance(new, list):
                new = [_cli_path(p, cwd) for p in new]
            elif key == "ca_bundle" and isinstance(new, str):
                new = _cli_path(new, cwd)
        _check_setting(session, name, key, new)
        if old is not None and _same(old, new):
            return f"profiles.{name}.{key} already has that value"
        session.assign_profile(name, parts, new)
        session.expect_profile(name, _with(_profile_bodies(session.data)[name], parts, new))
        session.warnings.extend(_secret_warnings(name, {key: new}, session.path, dotted=True))
        if key == "ca_bundle":
            session.warnings.extend(_ca_warnings({key: new}, session.base_dir))
        return f"set profiles.{name}.{key}"

    return _transaction(target, change, create=False, focus=name)


def unset_value(target: EditTarget, name: str, key: str) -> EditResult:
    """Remove one key from a profile (an emptied env/proxy_auth/sidecar table goes too)."""

    def change(session: _Session) -> str:
        _profile_parts(session, name)
        parts = key.split(".")
        if _lookup_value(session.data, name, parts) is None:
            # An unknown key that is not in the file: say what is known, like the loader.
            if field_for(key) is None and not _is_var_key(parts):
                _key_info(session, name, key)
            raise EditError(
                f"profile '{name}' has no key '{key}'",
                session.where(name),
                "see `kai-run profiles show " + name + "`; inherited keys live in the parent",
            )
        session.assign_profile(name, parts, _DELETE)
        session.expect_profile(name, _with(_profile_bodies(session.data)[name], parts, _DELETE))
        return f"unset profiles.{name}.{key}"

    return _transaction(target, change, create=False, focus=name)


def remove_profile(target: EditTarget, name: str) -> EditResult:
    """Remove a profile; refused while other profiles extend it or it is the default."""

    def change(session: _Session) -> str:
        _profile_parts(session, name)
        users = _dependents(session, name)
        if users:
            raise EditError(
                f"profile '{name}' is extended by {', '.join(users)}",
                session.where(name),
                "change or remove those profiles' `extends` first",
            )
        if session.data.get("default_profile") == name:
            raise EditError(
                f"profile '{name}' is the default_profile",
                session.where(None, "default_profile"),
                "choose another default first: kai-run profiles default NAME",
            )
        _remove_profile_tables(session, name)
        session.expect_profile(name, None)
        return f"removed profile '{name}'"

    return _transaction(target, change, create=False, focus=name)


def rename_profile(target: EditTarget, old: str, new: str) -> EditResult:
    """Rename a profile and every `extends` and `default_profile` of this file that names it."""
    _check_profile_name(new, target.path)

    def change(session: _Session) -> str:
        _profile_parts(session, old)
        if old == new:
            return f"profile '{old}' already has that name"
        profiles = session.profiles()
        assert profiles is not None
        if _has(profiles, new):
            raise EditError(
                f"profile '{new}' already exists",
                session.where(new),
                "remove it first, or pick another name",
            )
        _rename_key(session, old, new)
        for pname, body in _profile_bodies(session.data).items():
            # `extends = "corp"` in corp itself names the profile it shadows in a lower file.
            if pname != old and body.get("extends") == old:
                session.assign_profile(pname, ["extends"], new)
        if session.data.get("default_profile") == old:
            _assign(session.doc, [session.doc], ["default_profile"], new)
        _shadow_note(session, new)
        session.expect = _renamed(session.data, old, new)
        return f"renamed profile '{old}' to '{new}'"

    return _transaction(target, change, create=False, focus=_FULL)


def _renamed(data: Mapping[str, Any], old: str, new: str) -> dict[str, Any]:
    out = dict(data)
    profiles: dict[str, Any] = {}
    for name, body in _profile_bodies(data).items():
        renamed = {**body, "extends": new} if name != old and body.get("extends") == old else body
        profiles[new if name == old else name] = renamed
    out["profiles"] = profiles
    if out.get("default_profile") == old:
        out["default_profile"] = new
    return out


def copy_profile(target: EditTarget, src: str, dst: str) -> EditResult:
    """Copy a profile's own settings (not its parents') to a new profile in the edited file.

    The source may come from any file that is read, e.g. a site profile copied into the user file.
    """
    _check_profile_name(dst, target.path)

    def change(session: _Session) -> str:
        if dst in _profile_bodies(session.data):
            raise EditError(
                f"profile '{dst}' already exists", session.where(dst), "pick another name"
            )
        body, base_dir = _source_profile(session, src)
        if base_dir != session.base_dir:
            body = _absolute_paths(body, base_dir)
        _shadow_note(session, dst)
        session.append_text(_render_profile(dst, body))
        session.expect_profile(dst, body)
        return f"copied profile '{src}' to '{dst}'"

    return _transaction(target, change, create=True, focus=_APPEND)


def set_default(target: EditTarget, name: str) -> EditResult:
    """Set `default_profile`; the profile may live in any file that is read."""

    def change(session: _Session) -> str:
        known = session.all_profile_names()
        if name not in known:
            raise _unknown_profile(name, session.path, known)
        if session.data.get("default_profile") == name:
            return f"default_profile is already '{name}'"
        _assign(session.doc, [session.doc], ["default_profile"], name)
        session.expect = {**session.data, "default_profile": name}
        return f"default_profile = '{name}'"

    return _transaction(target, change, create=True, focus=_TOP)


def profile_from_env(environ: Mapping[str, str], warnings: list[str]) -> dict[str, object]:
    """A profile body from the proxy and CA variables of `environ` (the shell that already works)."""
    body: dict[str, object] = {}
    for key, names in ENV_PROXY_VARIABLES.items():
        for var in names:
            value = environ.get(var, "").strip()
            if value:
                body[key] = value if "://" in value else f"http://{value}"
                break
    for var in ENV_NO_PROXY_VARIABLES:
        value = environ.get(var, "")
        if value.strip():
            entries = [e.strip() for e in value.split(",") if e.strip()]
            body["no_proxy"] = list(dict.fromkeys(entries))
            break
    own_cache = os.path.join(paths.user_cache_dir(), "")
    cas: list[str] = []
    seen: set[str] = set()
    whole_store = False
    for var in ENV_CA_VARIABLES:
        value = environ.get(var, "").strip()
        if not value:
            continue
        real = os.path.realpath(value)
        if real.startswith(own_cache):
            continue  # kai-run's own merged bundle: the profile that made it is the source
        # SSL_CERT_FILE and friends replace a client's whole trust store: the working shell
        # trusts exactly those files, so the profile does too (ca_mode = "replace").
        whole_store = whole_store or var != "NODE_EXTRA_CA_CERTS"
        if real not in seen:
            seen.add(real)
            cas.append(value)
    if cas:
        body["ca_bundle"] = cas
        if whole_store:
            body["ca_mode"] = "replace"
    if not body:
        warnings.append(
            "no proxy or CA variables (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE, SSL_CERT_FILE...) "
            "are set in this environment; the profile is empty"
        )
    parent = environ.get("KAI_RUN_PROFILE")
    if parent:
        warnings.append(
            f"note: this environment was made by kai-run profile '{parent}'; "
            f"`--extends {parent}` may be what you want"
        )
    return body


# --- typed values -------------------------------------------------------------------------------


def convert_value(fld: Field, kind: str, text: str, old: object, where: object) -> object:
    """A command-line string typed from the schema: true/false, numbers, lists, or a string.

    Lists accept JSON-ish `["a", "b"]` or a comma list; `command` (an argv) is split like a
    shell would (`"kai-rpc-server --log-level info"`) unless written as a list. `where` (a
    schema.Where or a string) is only turned into text for an error: it looks up a line number.
    """
    stripped = text.strip()
    if kind == "bool" or (kind == "proxy_or_bool" and stripped.lower() in ("true", "false")):
        if stripped.lower() not in ("true", "false"):
            raise EditError(f"expected true or false, got {text!r}", str(where))
        return stripped.lower() == "true"
    if kind == "number":
        try:
            number: int | float = (
                int(stripped) if re.fullmatch(r"[+-]?\d+", stripped) else float(stripped)
            )
        except ValueError:
            raise EditError(
                f"expected a number, got {text!r}", str(where), "write e.g. 15 or 2.5"
            ) from None
        return number
    if kind == "str_or_list":
        if stripped.startswith("["):
            return _list_value(stripped, where)
        if "," in text:
            return [p.strip() for p in text.split(",") if p.strip()]
        if not stripped:
            return []
        return stripped if isinstance(old, str) else [stripped]
    if kind in ("url_list", "name_list"):
        if stripped.startswith("["):
            return _list_value(stripped, where)
        return [p.strip() for p in text.split(",") if p.strip()]
    if kind == "argv":
        if stripped.startswith("["):
            return _list_value(stripped, where)
        import shlex

        try:
            return shlex.split(text)
        except ValueError as e:
            raise EditError(f"cannot split the command: {e}", str(where)) from None
    return text


def _list_value(text: str, where: object) -> list[str]:
    import json

    value: object
    try:
        value = json.loads(text)
    except ValueError:
        import tomllib

        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise EditError(
                f"not a list: {text}", str(where), 'write ["a", "b"] or a comma list a,b'
            ) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EditError(f"expected a list of strings, got {text}", str(where), 'write ["a", "b"]')
    return value


def _key_info(session: _Session, name: str, key: str) -> tuple[list[str], Field, str]:
    """(parts, Field, kind) of a dotted key; kind "envvar" for env.NAME and sidecar.env.NAME."""
    parts = key.split(".")
    fld = field_for(key)
    where = Where(session.path, name)  # str() reads the file for the line: only on error
    if fld is None:
        known = _known_keys()
        hint = did_you_mean(key, known) or "known keys: " + ", ".join(known)
        raise EditError(f"unknown key '{key}'", str(where), hint)
    if fld.kind == "env":
        rest = parts[parts.index("env") + 1 :]
        if not rest:
            raise EditError(
                f"'{key}' is a table of variables: set one of them",
                str(where),
                f"write {key}.NAME",
            )
        if len(rest) != 1 or not valid_var_name(rest[0]):
            raise EditError(
                f"invalid variable name '{'.'.join(rest)}'",
                session.where(name, key),
                "names are letters, digits and _, and do not start with a digit",
            )
        return parts, fld, "envvar"
    if fld.kind == "table":
        subs = ", ".join(f"{key}.{s.name}" for s in fld.subfields if s.kind != "env")
        raise EditError(f"'{key}' is a table: set one of its keys", str(where), f"keys: {subs}")
    return parts, fld, fld.kind


def _known_keys() -> list[str]:
    keys: list[str] = []
    for f in PROFILE_FIELDS:
        if f.kind == "env":
            keys.append(f"{f.name}.NAME")
        elif f.subfields:
            for s in f.subfields:
                keys.append(f"{f.name}.{s.name}" + (".NAME" if s.kind == "env" else ""))
        else:
            keys.append(f.name)
    return keys


def _is_var_key(parts: list[str]) -> bool:
    return parts[:1] == ["env"] or parts[:2] == ["sidecar", "env"]


def _check_setting(session: _Session, name: str, key: str, value: object) -> None:
    """Check one new value exactly as the loader would, with its file/profile/key in the message."""
    parts = key.split(".")
    where = Where(session.path, name, key)
    fld = field_for(key)
    assert fld is not None
    if fld.kind == "env" and len(parts) > parts.index("env") + 1:
        if not isinstance(value, (str, int, float)):
            check_secret_ref(value, where)
    else:
        check_value(fld, value, where)
    if fld.kind == "proxy" or (fld.kind == "proxy_or_bool" and isinstance(value, str)):
        assert isinstance(value, str)
        if "${" not in value:
            from kai_launch.proxyurl import parse_proxy_url

            try:
                _, warnings = parse_proxy_url(value, "\0")
            except ConfigError as e:
                raise ConfigError(e.what, str(where), e.hint) from None
            session.warnings.extend(w.replace("\0", str(where)) for w in warnings)


def _check_profile_name(name: str, path: str) -> None:
    if not name.strip():
        raise EditError("a profile name cannot be empty", path)
    if name != name.strip() or any(c in name for c in "\n\r\t"):
        raise EditError(
            f"profile name {name!r} has surrounding or control whitespace",
            path,
            "use letters, digits, - and _",
        )


def _same(old: object, new: object) -> bool:
    return type(old) is type(new) and old == new


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    assert isinstance(value, list)
    return [str(v) for v in value]


def _cli_path(path: str, cwd: str | None) -> str:
    """A path typed on a command line is relative to the current directory, not the file's."""
    if cwd is None or not path or path.startswith(("~", "$")) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(cwd, path))


# --- warnings -------------------------------------------------------------------------------------


def _looks_secret(name: str) -> bool:
    from kai_launch.environ import looks_secret

    return looks_secret(name)


def _url_has_credentials(url: str) -> bool:
    _, sep, rest = url.partition("://")
    if not sep:
        return False
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = authority.rpartition("@")
    return bool(at) and bool(userinfo) and "${" not in userinfo


def plaintext_secrets(body: Mapping[str, object]) -> list[str]:
    """Keys of one profile body that hold a secret in plain text (not a reference, not ${VAR})."""
    found: list[str] = []

    def plain(value: object) -> bool:
        return isinstance(value, str) and bool(value) and "${" not in value

    for key in (*PROXY_KEYS, "openai_proxy"):
        value = body.get(key)
        if isinstance(value, str) and _url_has_credentials(value):
            found.append(key)
    auth = body.get("proxy_auth")
    if isinstance(auth, dict) and plain(auth.get("password")):
        found.append("proxy_auth.password")
    for prefix, table in (("env", body.get("env")), ("sidecar.env", _sub(body, "sidecar", "env"))):
        if isinstance(table, dict):
            found.extend(f"{prefix}.{k}" for k, v in table.items() if _looks_secret(k) and plain(v))
    return found


def _sub(body: Mapping[str, object], *keys: str) -> object:
    value: object = body
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _secret_warnings(
    name: str, values: Mapping[str, object], path: str, *, dotted: bool = False
) -> list[str]:
    body: dict[str, object] = {}
    for key, value in values.items():
        if dotted and "." in key:
            # Rebuild {"env": {"X": value}} so one detector serves set, add and check.
            target = body
            *heads, last = key.split(".")
            for head in heads:
                target = target.setdefault(head, {})  # type: ignore[assignment]
            target[last] = value
        else:
            body[key] = value
    warnings: list[str] = []
    found = plaintext_secrets(body)
    urls = [k for k in found if k in (*PROXY_KEYS, "openai_proxy")]
    if urls:
        warnings.append(
            f"the proxy URL in profiles.{name}.{'/'.join(urls)} carries credentials in plain text "
            f"({path}); put the user name in proxy_auth.username and reference the password: "
            f"kai-run profiles set {name} proxy_auth.password --secret-env VAR"
        )
    for key in found:
        if key not in urls:
            warnings.append(
                f"profiles.{name}.{key} holds a secret in plain text ({path}); store a reference "
                f"instead: kai-run profiles set {name} {key} --secret-env VAR "
                "(or --secret-file PATH, --secret-command CMD)"
            )
    return warnings


def _ca_warnings(values: Mapping[str, object], base_dir: str) -> list[str]:
    """A CA file that is not there (yet) is said, not refused: it may be exported later."""
    from kai_launch.trust import pem_certificates

    warnings: list[str] = []
    for raw in _as_list(values.get("ca_bundle")):
        if "$" in raw:
            continue  # depends on the environment the profile runs in
        path = os.path.normpath(os.path.join(base_dir, os.path.expanduser(raw)))
        try:
            pem_certificates(path, "ca_bundle")
        except KaiRunError as e:
            warnings.append(f"{e.what} (yet): the profile fails until it does")
    return warnings


def _shadow_note(session: _Session, name: str) -> None:
    for path, scope in session.target.context:
        if path == session.path:
            continue
        other = session.other_profiles(path)
        if name in other:
            session.warnings.append(
                f"note: profile '{name}' also exists in the {scope} file {path}; "
                f"the one in {session.path} is used"
                if _later(session, path)
                else f"note: profile '{name}' also exists in the {scope} file {path}, which wins"
            )


def _later(session: _Session, other: str) -> bool:
    order = [p for p, _ in session.target.context]
    return order.index(session.path) > order.index(other) if other in order else True


# --- the transaction --------------------------------------------------------------------------------


class _Session:
    """One file being edited: its text, tomllib data, tomlkit document and what the edit says."""

    def __init__(
        self,
        target: EditTarget,
        text: str | None,
        focus: str,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.target = target
        self.path = target.path
        self.base_dir = os.path.dirname(target.path)
        self.existed = text is not None
        self.old_text = text or ""
        # Only a file written with CRLF throughout gets CRLF for new lines too.
        self.crlf = "\r\n" in self.old_text and "\n" not in self.old_text.replace("\r\n", "")
        self.data: dict[str, Any] = (
            data if data is not None else parse_toml(self.path, self.old_text)
        )
        self.prefix, window, self.suffix = _window(self.old_text, focus)
        self.windowed = bool(self.prefix or self.suffix)
        try:
            self.doc: TOMLDocument = _parse_doc(window, self.path)
        except EditError:
            if not self.windowed:
                raise
            self.prefix, self.suffix, self.windowed = "", "", False
            self.doc = _parse_doc(self.old_text, self.path)
        # What the file must say after the edit, when the operation knows: checked before writing.
        self.expect: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self._tail = ""
        self._replacement: str | None = None
        self._others: dict[str, dict[str, Any] | None] = {}

    def where(self, profile: str | None, key: str | None = None) -> str:
        return str(Where(self.path, profile, key))

    def expect_profile(self, name: str, body: dict[str, Any] | None) -> None:
        """The file's data after the edit: profile `name` becomes body (None: removed)."""
        expect = dict(self.data if self.expect is None else self.expect)
        profiles = dict(_profile_bodies(expect))
        if body is None:
            profiles.pop(name, None)
        else:
            profiles[name] = body
        expect["profiles"] = profiles
        self.expect = expect

    def profiles(self) -> list[Any] | None:
        """The parts of the `profiles` table, or None when the file has none."""
        found = _child([self.doc], "profiles")
        return None if found is None else _parts(found[1])

    def all_profile_names(self) -> list[str]:
        names = dict.fromkeys(_profile_bodies(self.data))
        for path, _ in self.target.context:
            if path != self.path:
                names.update(dict.fromkeys(self.other_profiles(path)))
        return list(names)

    def assign_profile(self, name: str, keys: list[str], value: Any) -> None:
        profiles = self.profiles()
        assert profiles is not None
        _assign(self.doc, profiles, [name, *keys], value, top=True)

    def other(self, path: str) -> dict[str, Any] | None:
        if path not in self._others:
            self._others[path] = _other_data(path)
        return self._others[path]

    def other_profiles(self, path: str) -> dict[str, Any]:
        return _profile_bodies(self.other(path) or {})

    def append_text(self, text: str) -> None:
        current = self.render_doc()
        sep = ""
        if current and not current.endswith("\n"):
            sep = "\n"
        if current.strip() and not (current + sep).endswith("\n\n"):
            sep += "\n"
        self._tail += sep + text

    def replace_text(self, text: str) -> None:
        self._replacement = text

    def render_doc(self) -> str:
        return self.prefix + self.doc.as_string() + self.suffix + self._tail

    def render(self) -> str:
        text = self._replacement if self._replacement is not None else self.render_doc()
        if self.crlf:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        return text


def _transaction(
    target: EditTarget,
    change: Callable[[_Session], str],
    *,
    create: bool,
    focus: str = "",
    check_semantics: bool = True,
) -> EditResult:
    """Lock, re-read, change, check, write. focus: the profile the edit is about (only its part of
    the file is parsed with tomlkit, which is slow on big files), _TOP, _APPEND or _FULL."""
    path = target.path
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        # Nothing to lock yet: a refused edit must not leave a new directory behind, so try it
        # on the empty file first (it explains itself: unknown profile, where it lives...).
        change(_Session(target, None, _FULL))
        if not create:
            raise _no_file(target)
        _make_dirs(directory, 0o755 if target.scope == "site" else 0o700, target)
    with _locked(path):
        text, st = _read(path)
        data = parse_toml(path, text or "")
        session = _Session(target, text, focus or _FULL, data)
        summary = change(session)
        new_text = session.render()
        if new_text == session.old_text and session.existed:
            return EditResult(path, summary, changed=False, warnings=session.warnings)
        new_data = _try_parse(path, new_text)
        if session.windowed and not _as_expected(session, new_data):
            # The window guessed wrong (an unusual layout): do it again on the whole file.
            session = _Session(target, text, _FULL, data)
            summary = change(session)
            new_text = session.render()
            new_data = _try_parse(path, new_text)
        if not _as_expected(session, new_data):
            raise EditError(
                "kai-run could not make this edit without changing something else",
                path,
                "the file is unchanged; edit it by hand (and please report this)",
            )
        if not session.existed and not create:
            raise _no_file(target)
        _validate(session, new_data, check_semantics=check_semantics)
        _write(target, new_text.encode("utf-8"), st)
    return EditResult(path, summary, created=not session.existed, warnings=session.warnings)


def _try_parse(path: str, text: str) -> dict[str, Any] | ConfigError:
    try:
        return parse_toml(path, text)
    except ConfigError as e:
        return e


def _as_expected(session: _Session, new_data: dict[str, Any] | ConfigError) -> bool:
    """The edited text says exactly what the operation meant (empty sub-tables aside)."""
    if session.expect is None:
        return True
    if isinstance(new_data, ConfigError):
        return not session.windowed  # let _validate explain why the whole file fails
    return _pruned(new_data) == _pruned(session.expect)


def _pruned(data: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    out["profiles"] = {
        name: _drop_empty(body) if isinstance(body, dict) else body
        for name, body in _profile_bodies(data).items()
    }
    return out


def _drop_empty(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in body.items():
        kept = _drop_empty(value) if isinstance(value, dict) and not is_secret_ref(value) else value
        if kept != {}:
            out[key] = kept
    return out


# --- parsing only the part of the file an edit is about -------------------------------------------

_FULL = "\0full"  # the whole file
_TOP = "\0top"  # the top-level keys before the first table (default_profile)
_APPEND = "\0append"  # nothing: the edit appends text (add, copy)


def _parse_doc(text: str, path: str) -> TOMLDocument:
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as e:
        raise EditError(f"tomlkit cannot read this file: {e}", path, "edit it by hand") from None
    if doc.as_string() != text:
        # Never write what tomlkit cannot reproduce: the promise is byte-for-byte.
        raise EditError(
            "this file cannot be edited without changing its layout", path, "edit it by hand"
        )
    return doc


def _window(text: str, focus: str) -> tuple[str, str, str]:
    """(before, window, after): the window holds every table of profile `focus` and the table
    before the first of them (whose end holds the comments that introduce it)."""
    if focus == _FULL:
        return "", text, ""
    if focus == _APPEND:
        return text, "", ""
    headers = _headers(text)
    if headers is None:
        return "", text, ""
    if focus == _TOP:
        cut = headers[0][0] if headers else len(text)
        return "", text[:cut], text[cut:]
    mine = [i for i, (_, path) in enumerate(headers) if path[:2] == ("profiles", focus)]
    if not mine or any(path == ("profiles",) for _, path in headers):
        return "", text, ""  # dotted keys or `[profiles]` with inline profiles: read it all
    first, last = mine[0], mine[-1]
    start = headers[first - 1][0] if first > 0 else 0
    end = headers[last + 1][0] if last + 1 < len(headers) else len(text)
    return text[:start], text[start:end], text[end:]


# What a header scan must step over: strings (a `[` inside them is no header), comments, brackets.
_TOKENS = re.compile(
    r'''"""(?:[^"\\]|\\.|"(?!""))*"{3,5}'''
    r"""|'''(?:[^']|'(?!''))*'{3,5}"""
    r'''|"(?:[^"\\\n]|\\.)*"'''
    r"""|'[^'\n]*'"""
    r"|#[^\n]*"
    r"|[\[\]{}\n]"
)


def _headers(text: str) -> list[tuple[int, tuple[str, ...]]] | None:
    """Where each `[table]` header line starts, and its key path; None when unsure (arrays of
    tables, something unexpected). Strings, comments and multi-line arrays are skipped over."""
    out: list[tuple[int, tuple[str, ...]]] = []
    depth = 0
    line_start = 0
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKENS.search(text, pos)
        if m is None:
            break
        token, at = m.group(), m.start()
        pos = m.end()
        if token == "\n":
            line_start = pos
        elif token == "[" and depth == 0 and not text[line_start:at].strip():
            end = text.find("\n", at)
            end = n if end < 0 else end
            path = _header_path(text[at:end])
            if path is None:
                return None
            out.append((line_start, path))
            pos = end
        elif token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
            if depth < 0:
                return None
        elif token[0] in "\"'" and (len(token) < 2 or token[-1] != token[0]):
            return None  # an unterminated string: not a file to guess about
    return out


_HEADER_PART = re.compile(r"""\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|'([^']*)')\s*""")


def _header_path(line: str) -> tuple[str, ...] | None:
    import json

    if line.startswith("[["):
        return None
    parts: list[str] = []
    i = 1
    while True:
        m = _HEADER_PART.match(line, i)
        if m is None:
            return None
        bare, basic, literal = m.groups()
        if basic is not None:
            try:
                basic = json.loads(f'"{basic}"')
            except ValueError:
                return None
        parts.append(bare if bare is not None else basic if basic is not None else literal)
        i = m.end()
        if line.startswith(".", i):
            i += 1
            continue
        if not line.startswith("]", i):
            return None
        rest = line[i + 1 :].strip()
        return tuple(parts) if not rest or rest.startswith("#") else None


def _no_file(target: EditTarget) -> KaiRunError:
    return ProfileError(
        "profile file not found",
        target.path,
        "create it with `kai-run init`, or add a profile with `kai-run profiles add NAME`",
    )


def _make_dirs(directory: str, mode: int, target: EditTarget) -> None:
    try:
        os.makedirs(directory, mode=mode, exist_ok=True)
    except OSError as e:
        raise EditError(
            f"cannot create directory {directory}: {e.strerror}",
            target.path,
            "run as a user who may write there (the site file usually needs root), or use --config",
        ) from None


def _read(path: str) -> tuple[str | None, os.stat_result | None]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
            st = os.fstat(f.fileno())
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise ConfigError(f"cannot read profile file: {e.strerror}", path) from None
    try:
        return raw.decode("utf-8"), st
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"profile file is not UTF-8 (byte {e.start})", path, "save the file as UTF-8"
        ) from None


def _validate(
    session: _Session, new_data: dict[str, Any] | ConfigError, *, check_semantics: bool
) -> None:
    """Refuse the edit when the result would fail where the original did not."""
    path = session.path
    if isinstance(new_data, ConfigError):
        raise EditError(
            f"the edit would make the file invalid ({new_data.what})",
            path,
            "edit this part of the file by hand",
        )
    try:
        validate_document(new_data, path)
    except ConfigError as new_error:
        try:
            validate_document(session.data, path)
        except ConfigError as old_error:
            if old_error.message() == new_error.message():
                return  # a problem that was already there, not one this edit adds
        raise
    if not check_semantics:
        return
    try:
        validate_document(session.data, path)
    except ConfigError:
        before = {}  # the file was broken before: only what the edit leaves counts
    else:
        before = _semantic_problems(session, session.data)
    after = _semantic_problems(session, new_data)
    for key, error in after.items():
        if key not in before or before[key].message() != error.message():
            raise error


def _semantic_problems(session: _Session, data: dict[str, Any]) -> dict[str, KaiRunError]:
    """What the loader would refuse only when a profile is used: extends, proxy URLs, default."""
    from kai_launch.profiles import resolve_profile
    from kai_launch.proxyurl import parse_proxy_url

    files: list[ConfigFile] = []
    for path, scope in session.target.context:
        if path == session.path:
            files.append(ConfigFile(path, scope, data, exists=True))
        else:
            other = session.other(path)
            if other is not None:
                files.append(ConfigFile(path, scope, other, exists=True))
    if session.path not in [f.path for f in files]:
        files.append(ConfigFile(session.path, session.target.scope, data, exists=True))
    problems: dict[str, KaiRunError] = {}
    for index, cfile in enumerate(files):
        view = Config(files[: index + 1])
        for name in cfile.profiles:
            try:
                resolve_profile(view, name)
            except KaiRunError as e:
                problems[f"{cfile.path}\0{name}"] = e
    mine = next(f for f in files if f.path == session.path)
    for name, body in mine.profiles.items():
        for key in (*PROXY_KEYS, "openai_proxy"):
            value = body.get(key)
            if isinstance(value, str) and "${" not in value:
                try:
                    parse_proxy_url(value, "")
                except KaiRunError as e:
                    # The line lookup reads the file: only for the error that is shown.
                    where = str(Where(session.path, name, key))
                    problems[f"{name}\0{key}"] = ConfigError(e.what, where, e.hint)
    default = mine.data.get("default_profile")
    if isinstance(default, str) and not any(default in f.profiles for f in files):
        known = Config(files).profile_names()
        problems["\0default"] = _unknown_profile(default, session.path, known)
    return problems


def _unknown_profile(name: str, path: str, known: list[str]) -> KaiRunError:
    hint = did_you_mean(name, known)
    listed = (
        f"known profiles: {', '.join(known)}"
        if known
        else "no profiles are defined yet: add one with `kai-run profiles add NAME`, "
        "or start from the example with `kai-run init`"
    )
    return ProfileError(
        f"unknown profile '{name}'",
        path,
        f"{hint[:-1]}; {listed}" if hint else listed,
    )


def _other_data(path: str) -> dict[str, Any] | None:
    """Another file of the configuration, read as the loader does; None if missing or broken
    (a broken site file must not stop someone from editing their own file)."""
    from kai_launch.config import read_file

    try:
        return read_file(path, required=False)
    except KaiRunError:
        return None


def _profile_bodies(data: Mapping[str, Any]) -> dict[str, Any]:
    profiles = data.get("profiles", {})
    return profiles if isinstance(profiles, dict) else {}


# --- locking and writing ----------------------------------------------------------------------------


class _locked:
    """An exclusive lock on `<file>.lock`. The lock file stays: deleting it would let two
    processes lock two different files of the same name."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path) + ".lock"
        self.fd = -1

    def __enter__(self) -> None:
        import time

        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise EditError(
                f"cannot create the lock file: {e.strerror}",
                self.path,
                "check that you may write to that directory",
            ) from None
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.002
        while not _try_lock(self.fd):
            if time.monotonic() > deadline:
                os.close(self.fd)
                raise EditError(
                    f"another kai-run has been editing this file for {LOCK_TIMEOUT:g} s",
                    self.path[: -len(".lock")],
                    "wait for it to finish, or end it",
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def __exit__(self, *exc: object) -> None:
        _unlock(self.fd)
        os.close(self.fd)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def _write(target: EditTarget, data: bytes, st: os.stat_result | None) -> None:
    """Atomically replace the file: the old content or the new, never a mix or nothing."""
    import tempfile

    # Edit the file a symlink points to (a dotfiles checkout), not the link itself.
    path = os.path.realpath(target.path)
    directory = os.path.dirname(path)
    # A site file is for everyone to read; a user file may hold a plaintext secret.
    mode = st.st_mode & 0o7777 if st is not None else (0o644 if target.scope == "site" else 0o600)
    if st is not None and _changed_since(path, st):
        raise EditError(
            "the file was changed by another program while kai-run was editing it",
            target.path,
            "run the command again",
        )
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory
        )
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sys.platform != "win32":
                os.fchmod(f.fileno(), mode)
                if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                    with contextlib.suppress(OSError):  # root editing the site file keeps its owner
                        os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = ""
    except OSError as e:
        raise EditError(
            f"cannot write the profile file: {e.strerror}",
            target.path,
            "check the permissions and free space of its directory; the file is unchanged",
        ) from None
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    if sys.platform != "win32":
        try:
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass  # some file systems cannot fsync a directory; the rename itself is done


def _changed_since(path: str, st: os.stat_result) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    return (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns)


# --- rendering new values in the style of the old ones ---------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_text(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _basic(name)


def _basic(text: str) -> str:
    import tomlkit

    return tomlkit.string(text).as_string()


def _literal_ok(text: str) -> bool:
    return "'" not in text and not any(ord(c) < 32 or ord(c) == 127 for c in text if c != "\t")


def _canonical(value: object) -> str:
    """How kai-run writes a new value: `"x"`, `["a", "b"]`, `{ env = "NAME" }`, true, 15."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value:
            return _multiline(value)
        return _basic(value)
    if isinstance(value, list):
        return "[" + ", ".join(_canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return (
            "{ " + ", ".join(f"{_key_text(k)} = {_canonical(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {type(value).__name__}")


def _multiline(value: str) -> str:
    """A string with newlines as a \"\"\" block (readable), if that round-trips; else escaped."""
    import tomllib

    body = value.replace("\\", "\\\\").replace('"""', '""\\"')
    body = "".join(c if c in "\n\t" or ord(c) >= 32 else f"\\u{ord(c):04x}" for c in body)
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    candidate = f'"""\n{body}"""'
    try:
        if tomllib.loads(f"v = {candidate}")["v"] == value:
            return candidate
    except tomllib.TOMLDecodeError:
        pass
    return _basic(value)


def _styled(old: Any, value: object) -> str:
    """The text for `value` replacing the tomlkit item `old`, in old's style where it can be."""
    from tomlkit.items import Array, InlineTable, String, StringType

    if isinstance(value, str) and isinstance(old, String):
        if old.type is StringType.SLL and _literal_ok(value):
            return f"'{value}'"
        if old.type in (StringType.MLB, StringType.MLL) and "\n" in value:
            return _multiline(value)
        return _basic(value)
    if isinstance(value, list) and isinstance(old, Array):
        return _restyle_array(old, [str(v) for v in value])
    if isinstance(value, dict) and isinstance(old, InlineTable):
        return _restyle_inline(old, value)
    return _canonical(value)


class _Unit:
    """One element of an array as written: indent/comment lines before it, the element, and what
    follows it up to the end of its line (comma, comment)."""

    __slots__ = ("after", "lead", "text", "value")

    def __init__(self, lead: str, text: str, after: str, value: object) -> None:
        self.lead = lead
        self.text = text
        self.after = after
        self.value = value


def _restyle_array(old: Any, values: list[str]) -> str:
    """Edit an array of strings in place: kept elements keep their text, comments and layout;
    new ones copy their neighbours' indentation and quoting. So removing what was added gives
    back the original bytes."""
    import difflib

    from tomlkit.items import Comment, Null, String, StringType, Whitespace

    tokens: list[tuple[str, bool, int]] = []  # (text, is_value, comma offset or -1)
    olds: list[Any] = []
    for tok in old._iter_items():
        if isinstance(tok, (Whitespace, Comment, Null)):
            text = tok.as_string()
            comma = text.find(",") if isinstance(tok, Whitespace) else -1
            tokens.append((text, False, comma))
        elif isinstance(tok, String):
            tokens.append((tok.as_string(), True, -1))
            olds.append(tok)
        else:
            return _canonical(values)  # not an array of strings: nothing to preserve
    if not olds:
        return _canonical(values)
    # Split into: opening, then per element (lead, text, after), then closing.
    seps: list[tuple[str, int]] = [("", -1)]
    elements: list[str] = []
    for text, is_value, comma in tokens:
        if is_value:
            elements.append(text)
            seps.append(("", -1))
        else:
            sep, at = seps[-1]
            seps[-1] = (sep + text, len(sep) + comma if comma >= 0 and at < 0 else at)
    multiline = "\n" in old.as_string()

    def split_after(sep: str, comma: int) -> tuple[str, str]:
        start = comma + 1 if comma >= 0 else 0
        newline = sep.find("\n", start)
        if comma < 0 and newline < 0:
            return "", sep
        cut = newline + 1 if newline >= 0 else comma + 1
        return sep[:cut], sep[cut:]

    first_sep, _ = seps[0]
    newline = first_sep.find("\n")
    opening, lead = (
        (first_sep[: newline + 1], first_sep[newline + 1 :]) if newline >= 0 else ("", first_sep)
    )
    units: list[_Unit] = []
    for i, text in enumerate(elements):
        after, next_lead = split_after(*seps[i + 1])
        units.append(_Unit(lead, text, after, olds[i].value))
        lead = next_lead
    closing = lead
    trailing_comma = "," in units[-1].after.split("#", 1)[0]

    def last_line(s: str) -> str:
        return s.rpartition("\n")[2]

    def comment_lines(s: str) -> str:
        head, nl, _ = s.rpartition("\n")
        return head + nl

    lead_first = last_line(units[0].lead)
    lead_other = last_line(units[1].lead) if len(units) > 1 else (lead_first if multiline else " ")
    literal = all(o.type is StringType.SLL for o in olds)
    comma_after = ",\n" if multiline else ","
    last_after = comma_after if trailing_comma else ("\n" if multiline else "")

    def element(value: str) -> str:
        return f"'{value}'" if literal and _literal_ok(value) else _basic(value)

    new_units: list[_Unit] = []
    matcher = difflib.SequenceMatcher(None, [u.value for u in units], values, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            new_units.extend(units[i1:i2])
            continue
        for j in range(j1, j2):
            if tag == "replace" and j - j1 < i2 - i1:
                base = units[i1 + j - j1]
                new_units.append(_Unit(base.lead, element(values[j]), base.after, values[j]))
            else:
                new_units.append(_Unit(lead_other, element(values[j]), comma_after, values[j]))
    for k, unit in enumerate(new_units):
        if k == 0 and last_line(unit.lead) != lead_first:
            unit.lead = comment_lines(unit.lead) + lead_first
        elif k > 0 and unit is units[0]:
            unit.lead = comment_lines(unit.lead) + lead_other
        want_comma = k < len(new_units) - 1 or trailing_comma
        code, hash_, comment = unit.after.partition("#")
        has_comma = "," in code
        if want_comma and not has_comma:
            unit.after = "," + unit.after if unit.after or not multiline else comma_after
        elif not want_comma and has_comma:
            i = code.index(",")
            unit.after = code[:i].rstrip(" ") + code[i + 1 :] + hash_ + comment
        if k == len(new_units) - 1 and unit.after == "" and multiline and unit not in units:
            unit.after = last_after
    text = "[" + opening + "".join(u.lead + u.text + u.after for u in new_units) + closing + "]"
    return text if _parses_to(text, values) else _canonical(values)


def _restyle_inline(old: Any, value: dict[str, Any]) -> str:
    """An inline table with one key changed: the other entries keep their text."""
    written = old.as_string()
    spaced = written.startswith("{ ") or written == "{}"
    entries: list[str] = []
    kept: set[str] = set()
    for key, item in old.value.body:
        if key is None or key.key not in value:
            continue
        kept.add(key.key)
        new = value[key.key]
        text = item.as_string() if _same(item.unwrap(), new) else _styled(item, new)
        entries.append((key.as_string() + key.sep + text).strip())
    for name, new in value.items():
        if name not in kept:
            entries.append(f"{_key_text(name)} = {_canonical(new)}")
    if not entries:
        return "{}"
    inner = ", ".join(entries)
    text = "{ " + inner + " }" if spaced else "{" + inner + "}"
    return text if _parses_to(text, value) else _canonical(value)


def _parses_to(text: str, value: object) -> bool:
    import tomllib

    try:
        return bool(tomllib.loads(f"v = {text}")["v"] == value)
    except tomllib.TOMLDecodeError:
        return False


def _parse_item(text: str) -> Any:
    """A tomlkit item for `text` (a TOML value), parsed so that it renders exactly as written."""
    import tomlkit

    return tomlkit.parse(f"v = {text}").item("v")


# --- finding and changing things in a tomlkit document ---------------------------------------------

_DELETE: Any = object()


def _parts(item: Any) -> list[Any]:
    """The real tables one logical table is written as: itself, or the fragments of a table whose
    sub-tables appear further down the file (tomlkit's OutOfOrderTableProxy)."""
    from tomlkit.container import OutOfOrderTableProxy

    if isinstance(item, OutOfOrderTableProxy):
        return list(item._tables)
    return [item]


def _container(part: Any) -> Container:
    from tomlkit.container import Container

    return part if isinstance(part, Container) else part.value


def _child(parts: list[Any], key: str) -> tuple[Any, Any] | None:
    for part in parts:
        container = _container(part)
        if key in container:
            return part, container.item(key)
    return None


def _has(parts: list[Any], key: str) -> bool:
    return _child(parts, key) is not None


def _profile_parts(session: _Session, name: str) -> list[Any]:
    profiles = session.profiles()
    found = _child(profiles, name) if profiles is not None else None
    if found is None:
        others = [
            (path, scope)
            for path, scope in session.target.context
            if path != session.path and name in session.other_profiles(path)
        ]
        if others:
            path, scope = others[-1]
            flag = "--site" if scope == "site" else f"--config {path}"
            raise ProfileError(
                f"profile '{name}' is not in this file",
                session.path,
                f"it is in the {scope} file {path}: edit it there with {flag}, or refine it here "
                f"with `kai-run profiles add {name} --extends {name}`",
            )
        raise _unknown_profile(name, session.path, list(_profile_bodies(session.data)))
    return _parts(found[1])


def _lookup_value(data: Mapping[str, Any], name: str, parts: list[str]) -> object:
    value: object = _profile_bodies(data).get(name)
    for part in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _assign(doc: Any, node: list[Any], keys: list[str], value: Any, *, top: bool = False) -> None:
    """Set (or with _DELETE remove) node[keys...] = value, creating tables where needed.

    top: node is the `profiles` table and keys[0] a profile, which is never removed for being empty.
    """
    from tomlkit.items import InlineTable, Table

    key = keys[0]
    found = _child(node, key)
    if len(keys) == 1:
        if found is None:
            if value is not _DELETE:
                _insert_value(_value_part(node), key, _canonical(value))
            return
        part, old = found
        if value is _DELETE:
            _container(part).remove(key)
        else:
            _replace_value(part, key, _styled(old, value))
        return
    if found is None:
        if value is not _DELETE:
            _insert_table(_table_part(node), key, keys[1:], value)
        return
    part, child = found
    if isinstance(child, InlineTable):
        # `env = { A = "1" }` or a whole profile written inline: rewrite that one value.
        new = _with(child.unwrap(), keys[1:], value)
        if not new and not top:
            _container(part).remove(key)
        else:
            _replace_value(part, key, _styled(child, new))
        return
    children = _parts(child)
    if not all(isinstance(c, Table) for c in children):
        raise EditError(f"'{key}' is not a table in this file", None, "edit it by hand")
    _assign(doc, children, keys[1:], value)
    if value is _DELETE and not top:
        for table in children:
            if _is_empty(table):
                _remove_table(doc, table)


def _with(mapping: dict[str, Any], keys: list[str], value: Any) -> dict[str, Any]:
    out = dict(mapping)
    if len(keys) == 1:
        if value is _DELETE:
            out.pop(keys[0], None)
        else:
            out[keys[0]] = value
        return out
    inner = out.get(keys[0])
    inner = _with(inner if isinstance(inner, dict) else {}, keys[1:], value)
    if inner:
        out[keys[0]] = inner
    else:
        out.pop(keys[0], None)
    return out


def _value_part(node: list[Any]) -> Any:
    """The part of a (possibly fragmented) table where a new plain value belongs."""
    from tomlkit.items import InlineTable, Table

    for part in node:
        if isinstance(part, InlineTable):
            raise EditError("cannot add a key to an inline table here", None, "edit it by hand")
        if not isinstance(part, Table) or not part.is_super_table():
            return part
    return node[0]


def _table_part(node: list[Any]) -> Any:
    from tomlkit.items import Table

    for part in node:
        if isinstance(part, Table) and not part.is_super_table():
            return part
    part = node[0]
    if not isinstance(part, Table):
        raise EditError(
            "this profile is not written as a [profiles.NAME] table",
            None,
            "rewrite it as a [profiles.NAME] table, or edit it by hand",
        )
    return part


def _is_blank(item: Any) -> bool:
    from tomlkit.items import Whitespace

    return isinstance(item, Whitespace) and "\n" in item.as_string()


def _kv_region(container: Container) -> tuple[int, int]:
    """(index after the last key/value, index of the first sub-table or the end of the body)."""
    from tomlkit.items import AoT, Null, Table

    body = container.body
    end = len(body)
    last = -1
    for i, (k, v) in enumerate(body):
        if isinstance(v, (Table, AoT)) and k is not None and not k.is_dotted():
            end = i
            break
        if k is not None and not isinstance(v, Null):
            last = i
    return last + 1, end


def _after_attached(container: Container, start: int, end: int) -> int:
    """Skip comments glued under the last key (a commented-out option) when a blank line ends
    them; comments glued to the next header instead belong to that header."""
    from tomlkit.items import Comment, Null

    body = container.body
    i = start
    while i < end and isinstance(body[i][1], (Comment, Null)):
        i += 1
    if i < end and _is_blank(body[i][1]):
        return i
    return start


def _insert_value(part: Any, key: str, text: str) -> None:
    from tomlkit.container import Container
    from tomlkit.items import SingleKey, Whitespace

    container = _container(part)
    start, end = _kv_region(container)
    index = _after_attached(container, start, end)
    item = _parse_item(text)
    if isinstance(part, Container) and start == 0:
        # The first top-level key (default_profile): after the file's opening comment block and
        # its blank line, set apart by a blank line from the first table's comments.
        body = container.body
        if index < end and _is_blank(body[index][1]):
            index += 1
        item.trivia.trail = "\n"
        _insert_keyless(container, index, Whitespace("\n"))
        _insert(container, index, SingleKey(key), item)
        return
    new_key = SingleKey(key)
    sibling = _last_kv(container, start)
    if sibling is not None:
        sib_key, sib_item = sibling
        item.trivia.indent = sib_item.trivia.indent
        # Copy the sibling's spacing around `=` (tomlkit keeps the space before it in the key).
        written = sib_key.as_string()
        spacing = written[len(written.rstrip()) :] + sib_key.sep
        if spacing.strip() == "=":
            new_key.sep = spacing
    item.trivia.trail = "\n"
    _insert(container, index, new_key, item)


def _last_kv(container: Container, before: int) -> tuple[Any, Any] | None:
    from tomlkit.items import Null, Table

    for k, v in reversed(container.body[:before]):
        if k is not None and not isinstance(v, (Null, Table)):
            return k, v
    return None


def _insert(container: Container, index: int, key: Any, item: Any) -> None:
    if index >= len(container.body):
        previous = container.body[-1][1] if container.body else None
        if (
            previous is not None
            and not _is_blank(previous)
            and hasattr(previous, "trivia")
            and "\n" not in previous.trivia.trail
        ):
            previous.trivia.trail += "\n"
        container._raw_append(key, item)
    else:
        container._insert_at(index, key, item)


def _insert_table(part: Any, key: str, keys: list[str], value: Any) -> None:
    """Create `[<part>.key]` holding keys=value inside the profile's own block of the file: before
    its first sub-table (and the comments glued to that one's header), or after its keys (before a
    blank line and whatever comments introduce the next profile)."""
    from tomlkit.items import Comment, Null, SingleKey, Whitespace

    container = _container(part)
    body = container.body
    start, end = _kv_region(container)
    table = _build_table(keys, value)
    if end < len(body):
        index = end
        while index > start and isinstance(body[index - 1][1], (Comment, Null)):
            index -= 1
        previous = body[index - 1][1] if index else None
        table.trivia.indent = "" if previous is not None and _is_blank(previous) else "\n"
        _innermost(table).value._raw_append(None, Whitespace("\n"))
    else:
        index = _after_attached(container, start, end)
        table.trivia.indent = "\n"
    _insert(container, index, SingleKey(key), table)


def _build_table(keys: list[str], value: Any) -> Table:
    """A new table for keys=value: `[a]` + `X = v`, or for two keys a super table `a` holding
    `[a.b]` + `X = v` (sidecar.env.X): the implicit parent needs no header of its own."""
    import tomlkit
    from tomlkit.items import SingleKey

    table = tomlkit.table()
    if len(keys) == 1:
        item = _parse_item(_canonical(value))
        item.trivia.trail = "\n"
        table.value._raw_append(SingleKey(keys[0]), item)
        return table
    inner = _build_table(keys[1:], value)
    outer = tomlkit.table(is_super_table=True)
    outer.value._raw_append(SingleKey(keys[0]), inner)
    return outer


def _innermost(table: Table) -> Table:
    from tomlkit.items import Table

    while table.is_super_table():
        inner = next(v for _, v in table.value.body if isinstance(v, Table))
        table = inner
    return table


def _replace_value(part: Any, key: str, text: str) -> None:
    container = _container(part)
    # tomlkit copies the old item's indent, comment and line ending onto the new one.
    container[key] = _parse_item(text)


def _is_empty(table: Table) -> bool:
    """No keys, no sub-tables, and no comments of its own (comments after a blank line at its end
    introduce whatever follows, so they do not count)."""
    from tomlkit.items import Comment, Null

    seen_blank = False
    for k, v in table.value.body:
        if isinstance(v, Null):
            continue
        if k is not None:
            return False
        if _is_blank(v):
            seen_blank = True
        elif isinstance(v, Comment) and not seen_blank:
            return False
    return True


class _Entry:
    """One thing the document renders, in order: a header line or a leaf (key, comment, blank)."""

    __slots__ = ("container", "header", "index", "item", "owners")

    def __init__(
        self, container: Container, index: int, item: Any, header: bool, owners: tuple[int, ...]
    ) -> None:
        self.container = container
        self.index = index
        self.item = item
        self.header = header
        self.owners = owners  # id() of every table this entry is inside


def _flatten(doc: Any) -> list[_Entry]:
    from tomlkit.container import _emits_header
    from tomlkit.items import Null, Table

    out: list[_Entry] = []

    def walk(container: Container, owners: tuple[int, ...]) -> None:
        for i, (k, v) in enumerate(container.body):
            if isinstance(v, Null):
                continue
            if isinstance(v, Table) and k is not None and not k.is_dotted():
                inner = (*owners, id(v))
                if _emits_header(k, v):
                    out.append(_Entry(container, i, v, True, inner))
                walk(v.value, inner)
            else:
                out.append(_Entry(container, i, v, False, owners))

    walk(_container(doc), ())
    return out


def _remove_table(doc: Any, table: Any) -> None:
    """Remove a table and its sub-tables with the comments glued above its header, keeping the
    comments that introduce what follows it (tomlkit stores those inside the removed table)."""
    from tomlkit.items import Comment, Null, Whitespace

    flat = _flatten(doc)
    mine = [i for i, e in enumerate(flat) if id(table) in e.owners]
    owner = _owner(doc, table)
    if owner is None:
        return
    parent, index = owner
    if not mine:
        parent._remove_at(index)
        return
    first, last = mine[0], mine[-1]
    lead: list[_Entry] = []
    j = first - 1
    while j >= 0 and not flat[j].header and isinstance(flat[j].item, Comment):
        lead.append(flat[j])
        j -= 1
    while j >= 0 and not flat[j].header and isinstance(flat[j].item, Whitespace):
        lead.append(flat[j])
        j -= 1
    run: list[_Entry] = []
    k = last
    while k > first and not flat[k].header and isinstance(flat[k].item, (Comment, Whitespace)):
        run.insert(0, flat[k])
        k -= 1
    blank = next((n for n, e in enumerate(run) if _is_blank(e.item)), None)
    keep = run if blank is None else run[blank:]
    kept_text = "".join(e.item.as_string() for e in keep)
    for e in lead:
        e.container.body[e.index] = (None, Null())
    parent._remove_at(index)
    if not kept_text:
        return
    if lead:
        slot = lead[-1]
        slot.container.body[slot.index] = (None, Whitespace(kept_text))
    elif j >= 0:
        _append_after(flat[j].item, kept_text)
    else:
        _insert_keyless(_container(doc), 0, Whitespace(kept_text))


def _append_after(item: Any, text: str) -> None:
    """Add text right after what `item` renders (a dotted `a.b = 1` renders its last key)."""
    from tomlkit.items import Null, Table

    while isinstance(item, Table) and item.is_super_table():
        item = next(v for _, v in reversed(item.value.body) if not isinstance(v, Null))
    item.trivia.trail += text


def _owner(doc: Any, table: Any) -> tuple[Container, int] | None:
    """The container holding `table` and its index there."""
    from tomlkit.items import Table

    def search(container: Container) -> tuple[Container, int] | None:
        for i, (_, v) in enumerate(container.body):
            if v is table:
                return container, i
            if isinstance(v, Table):
                found = search(v.value)
                if found is not None:
                    return found
        return None

    return search(_container(doc))


def _insert_keyless(container: Container, index: int, item: Any) -> None:
    for key, where in list(container._map.items()):
        if isinstance(where, tuple):
            container._map[key] = tuple(w + 1 if w >= index else w for w in where)
        elif where >= index:
            container._map[key] = where + 1
    container._body.insert(index, (None, item))


def _remove_profile_tables(session: _Session, name: str) -> None:
    from tomlkit.items import Table

    while True:
        profiles = session.profiles()
        assert profiles is not None
        found = _child(profiles, name)
        if found is None:
            return
        part, item = found
        tables = [t for t in _parts(item) if isinstance(t, Table)]
        if not tables:
            _container(part).remove(name)  # `name = { ... }` under [profiles]
            return
        _remove_table(session.doc, tables[0])


def _rename_key(session: _Session, old: str, new: str) -> None:
    from tomlkit.items import SingleKey, Table

    profiles = session.profiles()
    assert profiles is not None
    found = _child(profiles, old)
    assert found is not None
    part, _ = found
    container = _container(part)
    old_key = next(k for k in container._map if k.key == old)
    if old_key.is_dotted():
        raise EditError(
            f"profile '{old}' is written with dotted keys",
            session.where(old),
            "rewrite it as a [profiles.NAME] table, or rename it by hand",
        )
    new_key = SingleKey(new)
    new_key.sep = old_key.sep
    where = container._map.pop(old_key)
    value = dict.__getitem__(container, old)
    for i in where if isinstance(where, tuple) else (where,):
        _, item = container.body[i]
        container.body[i] = (new_key, item)
        if isinstance(item, Table):
            item.name = new
            # Sub-table headers are re-derived from the keys: [profiles.new.env]
            item.invalidate_display_name()
    container._map[new_key] = where
    dict.__delitem__(container, old)
    dict.__setitem__(container, new, value)


def _dependents(session: _Session, name: str) -> list[str]:
    """Profiles of this file that extend `name` (another file's are caught by the resolution
    check, which names them)."""
    return [
        f"'{p}'"
        for p, body in _profile_bodies(session.data).items()
        if p != name and body.get("extends") == name
    ]


def _source_profile(session: _Session, name: str) -> tuple[dict[str, Any], str]:
    """A profile's own body and the directory its relative paths are relative to."""
    bodies = _profile_bodies(session.data)
    candidates: list[tuple[dict[str, Any], str]] = []
    for path, _ in session.target.context:
        if path == session.path:
            if name in bodies:
                candidates.append((bodies[name], session.base_dir))
        else:
            other = session.other_profiles(path)
            if name in other:
                candidates.append((other[name], os.path.dirname(path)))
    if not candidates:
        raise _unknown_profile(name, session.path, session.all_profile_names())
    return candidates[-1]


def _absolute_paths(body: dict[str, Any], base_dir: str) -> dict[str, Any]:
    """Relative paths mean "next to the file": copied into another file they must say where."""

    def fix(raw: str) -> str:
        if raw.startswith(("~", "$")) or os.path.isabs(raw):
            return raw
        return os.path.normpath(os.path.join(base_dir, raw))

    out = dict(body)
    if "ca_bundle" in out:
        value = out["ca_bundle"]
        out["ca_bundle"] = fix(value) if isinstance(value, str) else [fix(v) for v in value]
    for table_key in ("env", "proxy_auth"):
        table = out.get(table_key)
        if isinstance(table, dict):
            out[table_key] = {
                k: {"file": fix(v["file"])} if is_secret_ref(v) and "file" in v else v
                for k, v in table.items()
            }
    return out


def _render_profile(name: str, body: Mapping[str, Any]) -> str:
    """A new profile as kai-run writes it: keys in schema order, tables after."""
    prefix = f"profiles.{_key_text(name)}"
    lines = [f"[{prefix}]\n"]
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in body.items():
        if isinstance(value, dict) and not is_secret_ref(value):
            tables.append((key, value))
        else:
            lines.append(f"{_key_text(key)} = {_canonical(value)}\n")
    for key, table in tables:
        lines.append(_render_table(f"{prefix}.{_key_text(key)}", table))
    return "".join(lines)


def _render_table(header: str, table: dict[str, Any]) -> str:
    plain = {k: v for k, v in table.items() if not isinstance(v, dict) or is_secret_ref(v)}
    nested = {k: v for k, v in table.items() if k not in plain}
    text = ""
    if plain or not nested:
        text = f"\n[{header}]\n" + "".join(
            f"{_key_text(k)} = {_canonical(v)}\n" for k, v in plain.items()
        )
    for key, value in nested.items():
        text += _render_table(f"{header}.{_key_text(key)}", value)
    return text


# --- config check ----------------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\{([^}:]*)(:-[^}]*)?\}")


def check_config(explicit: str | None, environ: Mapping[str, str]) -> CheckResult:
    """Validate every profile of every file that is read, without running secret commands.

    Problems: what makes the loader or a profile fail here. Warnings: what may fail elsewhere
    (unset variables, missing secret files) and plaintext secrets in a file others can read.
    """
    result = CheckResult()
    files: list[ConfigFile] = []
    for path, scope in candidate_files(explicit, environ):
        if not os.path.exists(path):
            if scope == "file":
                raise ConfigError(
                    "profile file not found",
                    path,
                    f"check the path given to --config or {CONFIG_ENV}",
                )
            result.files.append(CheckedFile(path, scope, exists=False))
            continue
        try:
            data = parse_toml(path)
            validate_document(data, path)
        except ConfigError as e:
            result.problem(Finding.of(e))
            result.files.append(CheckedFile(path, scope, exists=True, valid=False))
            continue
        cfile = ConfigFile(path, scope, data, exists=True)
        files.append(cfile)
        result.files.append(CheckedFile(path, scope, exists=True, profiles=len(cfile.profiles)))
    for index, cfile in enumerate(files):
        view = Config(files[: index + 1])
        for name, body in cfile.profiles.items():
            _check_profile(view, cfile, name, body, environ, result)
        default = cfile.data.get("default_profile")
        if isinstance(default, str) and default not in Config(files).profile_names():
            result.problem(
                Finding.of(
                    _unknown_profile(
                        default,
                        str(Where(cfile.path, None, "default_profile")),
                        Config(files).profile_names(),
                    )
                )
            )
        _check_file_secrets(cfile, result)
        _check_leftovers(cfile.path, result)
    if not any(f.exists for f in result.files):
        result.warn(Finding("no profile file exists yet", "create one with `kai-run init`"))
    return result


def _check_profile(
    view: Config,
    cfile: ConfigFile,
    name: str,
    body: dict[str, Any],
    environ: Mapping[str, str],
    result: CheckResult,
) -> None:
    from kai_launch.environ import build_plan
    from kai_launch.expand import expand_path, expand_vars
    from kai_launch.profiles import resolve_profile
    from kai_launch.proxyurl import parse_proxy_url
    from kai_launch.trust import pem_certificates

    before = len(result.problems)
    unset = sorted(_unset_vars(body, environ))
    if unset:
        result.warn(
            Finding(
                f"profile '{name}' uses {', '.join('${' + v + '}' for v in unset)}, not set here; "
                f"values using them were not checked ({cfile.path})",
                "set them when checking, or give defaults: ${NAME:-default}",
            )
        )

    def skipped(text: str) -> bool:
        return any(v in unset for v, _ in _VAR_REF.findall(text.replace("$$", "")))

    try:
        profile = resolve_profile(view, name)
    except KaiRunError as e:
        result.problem(Finding.of(e))
        return
    for key in (*PROXY_KEYS, "openai_proxy"):
        value = body.get(key)
        if not isinstance(value, str) or skipped(value):
            continue
        where = str(Where(cfile.path, name, key))
        try:
            _, warnings = parse_proxy_url(expand_vars(value, environ, where), where)
        except KaiRunError as e:
            result.problem(Finding.of(e))
            continue
        for w in warnings:
            result.warn(Finding(w))
    for raw in _as_list(body.get("ca_bundle")):
        if skipped(raw):
            continue
        where = str(Where(cfile.path, name, "ca_bundle"))
        try:
            pem_certificates(expand_path(raw, cfile.base_dir, environ, where), where)
        except KaiRunError as e:
            result.problem(Finding.of(e))
    for key, ref in _secret_refs(body):
        where = str(Where(cfile.path, name, key))
        _check_ref(ref, cfile.base_dir, where, environ, result, skipped)
    if len(result.problems) > before or unset:
        return
    try:
        plan = build_plan(profile, environ, resolve_secrets=False, bundles=False)
    except KaiRunError as e:
        result.problem(Finding.of(e))
        return
    for w in plan.warnings:
        if not w.startswith("note:"):
            result.warn(Finding(w))


def _check_ref(
    ref: dict[str, Any],
    base_dir: str,
    where: str,
    environ: Mapping[str, str],
    result: CheckResult,
    skipped: Callable[[str], bool],
) -> None:
    """A reference's target, looked at but never used: no secret command runs."""
    import shutil

    from kai_launch.expand import expand_path

    kind, arg = next(iter(ref.items()))
    if kind == "env" and arg not in environ:
        result.warn(Finding(f"secret variable {arg} is not set here ({where})"))
    elif kind == "file" and not skipped(arg):
        try:
            path = expand_path(arg, base_dir, environ, where)
        except KaiRunError as e:
            result.problem(Finding.of(e))
            return
        if not os.path.isfile(path):
            result.warn(Finding(f"secret file {path} does not exist here ({where})"))
    elif kind == "command" and shutil.which(arg[0], path=environ.get("PATH")) is None:
        result.warn(Finding(f"secret command {arg[0]} is not on PATH here ({where})"))


def _secret_refs(body: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for prefix, table in (
        ("proxy_auth", body.get("proxy_auth")),
        ("env", body.get("env")),
        ("sidecar.env", _sub(body, "sidecar", "env")),
    ):
        if isinstance(table, dict):
            for key, value in table.items():
                if is_secret_ref(value):
                    yield f"{prefix}.{key}", value


def _unset_vars(body: Mapping[str, Any], environ: Mapping[str, str]) -> set[str]:
    found: set[str] = set()

    def scan(value: object) -> None:
        if isinstance(value, str):
            for name, default in _VAR_REF.findall(value.replace("$$", "")):
                if not default and name not in environ:
                    found.add(name)
        elif isinstance(value, list):
            for v in value:
                scan(v)
        elif isinstance(value, dict) and not is_secret_ref(value):
            for v in value.values():
                scan(v)

    scan(body)
    return found


def _check_file_secrets(cfile: ConfigFile, result: CheckResult) -> None:
    if sys.platform == "win32":
        return
    keys = [
        f"{name}.{key}" for name, body in cfile.profiles.items() for key in plaintext_secrets(body)
    ]
    if not keys:
        return
    try:
        mode = os.stat(cfile.path).st_mode & 0o777
    except OSError:
        return
    if mode & 0o044:
        result.warn(
            Finding(
                f"{cfile.path} holds plaintext secrets ({', '.join(keys)}) and is readable by "
                f"group or others (mode {mode:04o})",
                f"chmod 600 {cfile.path}, or replace them with references ({SECRET_HINT})",
            )
        )


def _check_leftovers(path: str, result: CheckResult) -> None:
    """Temp files of an edit that was killed between writing and renaming: harmless, but noted."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    stale = sorted(n for n in names if n.startswith(f".{base}.") and n.endswith(".tmp"))
    if stale:
        result.warn(
            Finding(
                f"{len(stale)} leftover temp file(s) of an interrupted edit next to {path}: "
                + ", ".join(stale),
                "they are not read; delete them",
            )
        )
