"""Editing profile files the way a careful person would, and checking them.

Every edit is one transaction on one file:
1. take an exclusive lock on `profiles.toml.lock` next to the file (fcntl.flock on POSIX,
   msvcrt.locking on Windows), so concurrent `kai-run profiles set` runs queue instead of losing
   each other's changes;
2. re-read the file under the lock and parse the part the edit is about with tomlkit, which keeps
   comments, blank lines, key order and quoting (tomledit.py);
3. change only what was asked (new keys go inside the profile's own table, values keep the quoting
   and layout of the value they replace, so a `set` followed by the reverse `set` gives back the
   same bytes);
4. check the result: the edited part says exactly what was meant, the whole new text parses
   (tomllib, once), and what the edit can affect passes the loader's checks -- the schema for the
   changed profiles, `extends` resolution for them and every profile that extends them, proxy
   URL syntax. An edit that adds a problem is refused and the file is left byte-identical; a
   problem that was already there elsewhere does not block it;
5. write atomically: a temp file in the same directory, fsync, os.replace, fsync of the directory.
   The file keeps its mode; a new user file is created 0600 (its directory 0700).

Nothing here prints: functions return result records; cli.py renders them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kai_launch import paths, tomledit
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
        if session.existed:
            # --force must not cost anyone years of profiles: the old file stays next to it.
            import shutil

            shutil.copy2(target.path, target.path + ".bak")
            session.replace_text(example_text())
            return f"wrote the starter profile file (the old one is {target.path}.bak)"
        session.replace_text(example_text())
        return "wrote the starter profile file"

    return _transaction(target, change, create=True, focus=tomledit.APPEND, check_semantics=False)


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
    _check_profile_name(name)
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

    return _transaction(target, change, create=True, focus=tomledit.APPEND)


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
        old = _lookup_value(session.local, name, parts)
        if secret is not None:
            if kind not in ("secret", "envvar"):
                raise EditError(
                    f"'{key}' cannot hold a secret reference",
                    session.where(name, key),
                    "secret references are for proxy_auth.username, proxy_auth.password, "
                    "env.NAME and sidecar.env.NAME",
                )
            kind_name, arg = secret
            _check_secret_option(kind_name, arg)
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
            elif key == "pac_url" and isinstance(new, str) and new.lower().startswith("file:"):
                new = "file:" + _cli_path(new[5:], cwd) if new[5:6] != "/" else new
        _check_setting(session, name, key, new)
        if old is not None and tomledit.same_value(old, new):
            return f"profiles.{name}.{key} already has that value"
        session.assign_profile(name, parts, new)
        body = _profile_bodies(session.local)[name]
        session.expect_profile(name, tomledit.with_value(body, parts, new))
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
        if _lookup_value(session.local, name, parts) is None:
            # An unknown key that is not in the file: say what is known, like the loader.
            if field_for(key) is None and not _is_var_key(parts):
                _key_info(session, name, key)
            raise EditError(
                f"profile '{name}' has no key '{key}'",
                session.where(name),
                "see `kai-run profiles show " + name + "`; inherited keys live in the parent",
            )
        session.assign_profile(name, parts, tomledit.DELETE)
        body = _profile_bodies(session.local)[name]
        session.expect_profile(name, tomledit.with_value(body, parts, tomledit.DELETE))
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
        tomledit.remove_named(session.doc, lambda: session.profiles() or [], name)
        session.expect_profile(name, None)
        return f"removed profile '{name}'"

    return _transaction(target, change, create=False, focus=name)


def rename_profile(target: EditTarget, old: str, new: str) -> EditResult:
    """Rename a profile and every `extends` and `default_profile` of this file that names it."""
    _check_profile_name(new)

    def change(session: _Session) -> str:
        _profile_parts(session, old)
        if old == new:
            return f"profile '{old}' already has that name"
        profiles = session.profiles()
        assert profiles is not None
        if tomledit.has_key(profiles, new):
            raise EditError(
                f"profile '{new}' already exists",
                session.where(new),
                "remove it first, or pick another name",
            )
        tomledit.rename_key(profiles, old, new, session.where(old))
        for pname, body in _profile_bodies(session.data).items():
            # `extends = "corp"` in corp itself names the profile it shadows in a lower file.
            if pname != old and body.get("extends") == old:
                session.assign_profile(pname, ["extends"], new)
        if session.data.get("default_profile") == old:
            tomledit.assign(session.doc, [session.doc], ["default_profile"], new)
        _shadow_note(session, new)
        session.expect = _renamed(session.local, old, new)
        return f"renamed profile '{old}' to '{new}'"

    return _transaction(target, change, create=False, focus=tomledit.FULL)


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
    _check_profile_name(dst)

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

    return _transaction(target, change, create=True, focus=tomledit.APPEND)


def set_default(target: EditTarget, name: str) -> EditResult:
    """Set `default_profile`; the profile may live in any file that is read."""

    def change(session: _Session) -> str:
        known = session.all_profile_names()
        if name not in known:
            raise _unknown_profile(name, session.path, known)
        if session.local.get("default_profile") == name:
            return f"default_profile is already '{name}'"
        tomledit.assign(session.doc, [session.doc], ["default_profile"], name)
        session.expect = {**session.local, "default_profile": name}
        return f"default_profile = '{name}'"

    return _transaction(target, change, create=True, focus=tomledit.TOP)


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
    whole_store = os_store = False
    from kai_launch.systemca import BUNDLE_FILES

    system_files = {os.path.realpath(p) for p in BUNDLE_FILES if os.path.isfile(p)}
    for var in ENV_CA_VARIABLES:
        value = environ.get(var, "").strip()
        if not value:
            continue
        real = os.path.realpath(value)
        if real.startswith(own_cache):
            continue  # kai-run's own merged bundle: the profile that made it is the source
        if real in system_files:
            # The distribution's bundle: ca_mode = "system" follows it (and its updates, and
            # works on the teammate's machine whose distribution keeps it elsewhere).
            os_store = True
            continue
        # SSL_CERT_FILE and friends replace a client's whole trust store: the working shell
        # trusts exactly those files, so the profile does too (ca_mode = "replace").
        whole_store = whole_store or var != "NODE_EXTRA_CA_CERTS"
        if real not in seen:
            seen.add(real)
            cas.append(value)
    if cas:
        body["ca_bundle"] = cas
    if os_store:
        body["ca_mode"] = "system"
    elif cas and whole_store:
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
            raise EditError(
                f"expected true or false, got {text!r}",
                str(where),
                f"{fld.name} is true or false: {fld.doc}",
            )
        return stripped.lower() == "true"
    if kind == "number":
        number: int | float | None = None
        if re.fullmatch(r"[+-]?\d+", stripped):
            number = int(stripped)
        elif _FLOAT.fullmatch(stripped):
            number = float(stripped)
        if number is None:
            raise EditError(f"expected a number, got {text!r}", str(where), "write e.g. 15 or 2.5")
        return number
    if kind == "envvar":
        return _typed_like(text, old)
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
            raise EditError(
                f"cannot split the command: {e}",
                str(where),
                'close the quotes, or write it as a list: ["prog", "arg one"]',
            ) from None
    return text


_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _typed_like(text: str, old: object) -> object:
    """A variable's new value keeps the TOML type of the value it replaces when the text is of
    that type (`X = 1` set to 2 stays a number), so a set and its reverse give back the same file.
    Anything else, and every new variable, is a string."""
    stripped = text.strip()
    if isinstance(old, bool):
        if stripped.lower() in ("true", "false"):
            return stripped.lower() == "true"
    elif isinstance(old, int):
        if re.fullmatch(r"[+-]?\d+", stripped):
            return int(stripped)
    elif isinstance(old, float) and _FLOAT.fullmatch(stripped):
        return float(stripped)
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


_PROFILE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_NAME_HINT = (
    "use letters, digits, '.', '-' and '_': names are typed on command lines and in KAI_RUN_PROFILE"
)


def _check_profile_name(name: str) -> None:
    """The name of a profile kai-run creates (add, copy, rename). TOML allows any quoted key,
    but a name has to survive a shell and an environment variable unquoted."""
    if not name:
        raise EditError("a profile name cannot be empty", "command line", _NAME_HINT)
    if not _PROFILE_NAME.fullmatch(name):
        bad = ", ".join(repr(c) for c in dict.fromkeys(name) if not _PROFILE_NAME.fullmatch(c))
        raise EditError(f"profile name {name!r} contains {bad}", "command line", _NAME_HINT)


def _check_secret_option(kind: str, arg: str | list[str]) -> None:
    """A reference as given on the command line, named by its option (not by the key it makes)."""
    option = f"--secret-{kind}"
    if not arg:
        raise EditError(f"{option} needs a value", "command line", f"e.g. {SECRET_HINT}")
    if kind == "env" and isinstance(arg, str) and not valid_var_name(arg):
        raise EditError(
            f"invalid variable name {arg!r} given to {option}",
            "command line",
            "names are letters, digits and _, and do not start with a digit",
        )


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
    env = body.get("env")
    if isinstance(env, dict):
        found.extend(
            f"env.{k}.oauth2.client_secret"
            for k, v in env.items()
            if isinstance(v, dict)
            and isinstance(v.get("oauth2"), dict)
            and plain(v["oauth2"].get("client_secret"))
        )
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
        if key.endswith(".oauth2.client_secret"):
            warnings.append(
                f"profiles.{name}.{key} holds the OAuth2 client secret in plain text ({path}); "
                'store a reference instead: client_secret = { env = "VAR" } (or { file = "PATH" }, '
                '{ command = ["prog", "arg"] })'
            )
        elif key not in urls:
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
    """One file being edited: its text, the tomlkit document of the part the edit is about (the
    window), the data before the edit and what the edit says."""

    def __init__(self, target: EditTarget, text: str | None, focus: str) -> None:
        self.target = target
        self.path = target.path
        self.base_dir = os.path.dirname(target.path)
        self.existed = text is not None
        self.old_text = text or ""
        # Only a file written with CRLF throughout gets CRLF for new lines too.
        self.crlf = "\r\n" in self.old_text and "\n" not in self.old_text.replace("\r\n", "")
        self._data: dict[str, Any] | None = None
        self.prefix, window, self.suffix = tomledit.split_window(self.old_text, focus)
        self.windowed = bool(self.prefix or self.suffix)
        if self.windowed:
            try:
                self.doc: TOMLDocument = tomledit.parse_doc(window, self.path)
                # The window's data before the edit: all that set and unset need.
                self.local: dict[str, Any] = parse_toml(self.path, window)
            except KaiRunError:
                self.windowed = False
        if not self.windowed:
            self.prefix = self.suffix = ""
            self.local = self.data  # tomllib first: its message for a broken file is the best
            self.doc = tomledit.parse_doc(self.old_text, self.path)
        # What the edited part must say after the edit, when the operation knows (checked before
        # writing), and what it does say.
        self.expect: dict[str, Any] | None = None
        self.new_local: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self._tail = ""
        self._replacement: str | None = None
        self._others: dict[str, dict[str, Any] | None] = {}

    @property
    def data(self) -> dict[str, Any]:
        """The whole file's data before the edit, parsed on first use."""
        if self._data is None:
            self._data = parse_toml(self.path, self.old_text)
        return self._data

    def where(self, profile: str | None, key: str | None = None) -> str:
        return str(Where(self.path, profile, key))

    def expect_profile(self, name: str, body: dict[str, Any] | None) -> None:
        """The edited part's data after the edit: profile `name` becomes body (None: removed)."""
        expect = dict(self.local if self.expect is None else self.expect)
        profiles = dict(_profile_bodies(expect))
        if body is None:
            profiles.pop(name, None)
        else:
            profiles[name] = body
        expect["profiles"] = profiles
        self.expect = expect

    def profiles(self) -> list[Any] | None:
        """The parts of the `profiles` table, or None when the file has none."""
        return [v for _, _, v in tomledit.fragments([self.doc], "profiles")] or None

    def all_profile_names(self) -> list[str]:
        names = dict.fromkeys(_profile_bodies(self.data))
        for path, _ in self.target.context:
            if path != self.path:
                names.update(dict.fromkeys(self.other_profiles(path)))
        return list(names)

    def assign_profile(self, name: str, keys: list[str], value: Any) -> None:
        profiles = self.profiles()
        assert profiles is not None
        tomledit.assign(self.doc, profiles, [name, *keys], value, top=True)

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

    @property
    def replaced(self) -> bool:
        return self._replacement is not None

    def render_doc(self) -> str:
        return self.prefix + self.doc.as_string() + self.suffix + self._tail

    def region(self) -> str:
        """The edited part of the new text: the window and what was appended after the file."""
        return self.doc.as_string() + self._tail

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
    focus: str = tomledit.FULL,
    check_semantics: bool = True,
) -> EditResult:
    """Lock, re-read, change, check, write. focus: the profile the edit is about (only its part of
    the file is parsed with tomlkit, which is slow on big files), TOP, APPEND or FULL."""
    path = target.path
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        # Nothing to lock yet: a refused edit must not leave a new directory behind, so try it
        # on the empty file first (it explains itself: unknown profile, where it lives...).
        change(_Session(target, None, tomledit.FULL))
        if not create:
            raise _no_file(target)
        _make_dirs(directory, 0o755 if target.scope == "site" else 0o700, target)
    with _locked(path):
        text, st = _read(path)
        session = _Session(target, text, focus)
        summary = change(session)
        new_text = session.render()
        if new_text == session.old_text and session.existed:
            if session.expect is not None and _pruned(session.expect) != _pruned(session.local):
                # The operation meant a change the document did not take: never a false success.
                raise _not_made(path)
            return EditResult(path, summary, changed=False, warnings=session.warnings)
        new_data = _try_parse(path, new_text)
        if session.windowed and not _as_expected(session, new_data):
            # The window guessed wrong (an unusual layout, or the file fails elsewhere): do it
            # again on the whole file, which also says what is wrong with it.
            session = _Session(target, text, tomledit.FULL)
            summary = change(session)
            new_text = session.render()
            new_data = _try_parse(path, new_text)
        if not _as_expected(session, new_data):
            raise _not_made(path)
        if not session.existed and not create:
            raise _no_file(target)
        _validate(session, new_data, check_semantics=check_semantics)
        _write(target, new_text.encode("utf-8"), st)
    return EditResult(path, summary, created=not session.existed, warnings=session.warnings)


def _not_made(path: str) -> KaiRunError:
    return EditError(
        "kai-run could not make this edit without changing something else",
        path,
        "the file is unchanged; edit it by hand (and please report this)",
    )


def _try_parse(path: str, text: str) -> dict[str, Any] | ConfigError:
    try:
        return parse_toml(path, text)
    except ConfigError as e:
        return e


def _as_expected(session: _Session, new_data: dict[str, Any] | ConfigError) -> bool:
    """The edited part of the text says exactly what the operation meant (empty sub-tables aside).

    Only that part is compared: the rest of the text is unchanged, and the whole new text parsed
    (new_data), so it means what it meant before."""
    if isinstance(new_data, ConfigError):
        return not session.windowed  # let the whole file explain why it fails
    if session.replaced:
        return True  # init: a new file, nothing to compare with
    if not session.windowed:
        session.new_local = new_data
    elif session.new_local is None:
        region = session.region()
        if session.suffix and not region.endswith("\n"):
            return False  # the next header would be glued to the window's last line
        local = _try_parse(session.path, region)
        if isinstance(local, ConfigError):
            return False
        session.new_local = local
    if session.expect is None:
        return True
    return _pruned(session.new_local) == _pruned(session.expect)


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


def _old_data(session: _Session, new_data: dict[str, Any]) -> dict[str, Any]:
    """The whole file's data before the edit. After a windowed edit it is the new data with the
    window's old content put back, which saves parsing the whole old text again."""
    new_local = session.new_local
    if not session.windowed or session._data is not None or new_local is None:
        return session.data
    old_local = session.local
    old = dict(new_data)
    for key in (old_local.keys() | new_local.keys()) - {"profiles"}:
        if key in old_local:
            old[key] = old_local[key]
        else:
            old.pop(key, None)
    # A profile the edit changed lies wholly inside the window (_as_expected checked that only
    # the profiles it meant changed), so its old body there is its whole old body.
    profiles = dict(_profile_bodies(new_data))
    old_profiles, new_profiles = _profile_bodies(old_local), _profile_bodies(new_local)
    for name in old_profiles.keys() | new_profiles.keys():
        if old_profiles.get(name) != new_profiles.get(name):
            if name in old_profiles:
                profiles[name] = old_profiles[name]
            else:
                profiles.pop(name, None)
    if profiles or "profiles" in new_data:
        old["profiles"] = profiles
    return old


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


# --- validating an edit: as much of the file as the edit can affect ---------------------------------


def _validate(
    session: _Session, new_data: dict[str, Any] | ConfigError, *, check_semantics: bool
) -> None:
    """Refuse the edit when the result would fail where the original did not.

    Only what the edit can affect is checked: the profiles it changed, the profiles that extend
    them (directly or not, in any file read), and the parents all of those resolve through. The
    rest of the file is as it was, and keeps whatever problem it had."""
    path = session.path
    if isinstance(new_data, ConfigError):
        raise EditError(
            f"the edit would make the file invalid ({new_data.what})",
            path,
            "edit this part of the file by hand",
        )
    old_data = _old_data(session, new_data)
    changed = _changed_profiles(old_data, new_data)
    graphs = [_profile_bodies(old_data), _profile_bodies(new_data)]
    graphs += [session.other_profiles(p) for p, _ in session.target.context if p != path]
    affected = _extending(graphs, changed) if check_semantics else changed
    involved = _ancestors(graphs, affected)
    try:
        validate_document(_only(new_data, involved), path)
    except ConfigError as new_error:
        try:
            validate_document(_only(old_data, involved), path)
        except ConfigError as old_error:
            if old_error.message() == new_error.message():
                return  # a problem that was already there, not one this edit adds
        raise
    if not check_semantics:
        return
    try:
        validate_document(_only(old_data, involved), path)
    except ConfigError:
        before = {}  # the file was broken before: only what the edit leaves counts
    else:
        before = _semantic_problems(session, old_data, affected, changed)
    after = _semantic_problems(session, new_data, affected, changed)
    for key, error in after.items():
        if key not in before or before[key].message() != error.message():
            raise error


def _changed_profiles(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    before, after = _profile_bodies(old), _profile_bodies(new)
    names = dict.fromkeys([*before, *after])
    return [n for n in names if before.get(n) != after.get(n)]


def _extending(graphs: list[dict[str, Any]], names: list[str]) -> list[str]:
    """`names` and every profile that extends one of them, directly or through others."""
    children: dict[str, list[str]] = {}
    for profiles in graphs:
        for child, body in profiles.items():
            parent = body.get("extends") if isinstance(body, dict) else None
            if isinstance(parent, str):
                children.setdefault(parent, []).append(child)
    out = dict.fromkeys(names)
    todo = list(names)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out[child] = None
                todo.append(child)
    return list(out)


def _ancestors(graphs: list[dict[str, Any]], names: list[str]) -> list[str]:
    """`names` and every profile they resolve through."""
    out = dict.fromkeys(names)
    todo = list(names)
    while todo:
        name = todo.pop()
        for profiles in graphs:
            body = profiles.get(name)
            parent = body.get("extends") if isinstance(body, dict) else None
            if isinstance(parent, str) and parent not in out:
                out[parent] = None
                todo.append(parent)
    return list(out)


def _only(data: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """The file's data with only the named profiles (the top-level keys all stay)."""
    profiles = data.get("profiles")
    if not isinstance(profiles, dict):
        return dict(data)
    return {**data, "profiles": {n: profiles[n] for n in names if n in profiles}}


def _semantic_problems(
    session: _Session, data: dict[str, Any], affected: list[str], changed: list[str]
) -> dict[str, KaiRunError]:
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
        for name in affected:
            if name in cfile.profiles:
                try:
                    resolve_profile(view, name)
                except KaiRunError as e:
                    problems[f"{cfile.path}\0{name}"] = e
    mine = next(f for f in files if f.path == session.path)
    for name in changed:
        body = mine.profiles.get(name)
        for key in (*PROXY_KEYS, "openai_proxy"):
            value = body.get(key) if isinstance(body, dict) else None
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


# --- profiles in the document -----------------------------------------------------------------------


def _profile_parts(session: _Session, name: str) -> list[Any]:
    profiles = session.profiles()
    found = tomledit.fragments(profiles or [], name)
    if not found:
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
    return [item for _, _, item in found]


def _lookup_value(data: Mapping[str, Any], name: str, parts: list[str]) -> object:
    value: object = _profile_bodies(data).get(name)
    for part in parts:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


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
    pac = out.get("pac_url")
    if isinstance(pac, str) and pac.lower().startswith("file:") and not pac[5:].startswith("/"):
        out["pac_url"] = "file:" + fix(pac[5:])
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
    env = out.get("env")
    if isinstance(env, dict):
        for k, v in env.items():
            if is_secret_ref(v) and "oauth2" in v:  # its client_id/client_secret may be files
                nested = dict(v["oauth2"])
                for sub in ("client_id", "client_secret"):
                    if is_secret_ref(nested.get(sub)) and "file" in nested[sub]:
                        nested[sub] = {"file": fix(nested[sub]["file"])}
                env[k] = {"oauth2": nested}
    return out


def _render_profile(name: str, body: Mapping[str, Any]) -> str:
    """A new profile as kai-run writes it: keys in schema order, tables after."""
    prefix = f"profiles.{tomledit.key_text(name)}"
    lines = [f"[{prefix}]\n"]
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in body.items():
        if isinstance(value, dict) and not is_secret_ref(value):
            tables.append((key, value))
        else:
            lines.append(f"{tomledit.key_text(key)} = {tomledit.canonical(value)}\n")
    for key, table in tables:
        lines.append(_render_table(f"{prefix}.{tomledit.key_text(key)}", table))
    return "".join(lines)


def _render_table(header: str, table: dict[str, Any]) -> str:
    plain = {k: v for k, v in table.items() if not isinstance(v, dict) or is_secret_ref(v)}
    nested = {k: v for k, v in table.items() if k not in plain}
    text = ""
    if plain or not nested:
        text = f"\n[{header}]\n" + "".join(
            f"{tomledit.key_text(k)} = {tomledit.canonical(v)}\n" for k, v in plain.items()
        )
    for key, value in nested.items():
        text += _render_table(f"{header}.{tomledit.key_text(key)}", value)
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
            # Its warnings come once, from build_plan below.
            parse_proxy_url(expand_vars(value, environ, where), where)
        except KaiRunError as e:
            result.problem(Finding.of(e))
            continue
    for raw in _as_list(body.get("ca_bundle")):
        if skipped(raw):
            continue
        where = str(Where(cfile.path, name, "ca_bundle"))
        path = expand_path(raw, cfile.base_dir, environ, where)
        if not os.path.exists(path) and path in _sidecar_files(profile, environ):
            result.warn(
                Finding(
                    f"CA file {path} does not exist yet: the sidecar writes it on its first start ({where})",
                    f"kai-run sidecar start -p {name}",
                )
            )
            continue
        try:
            pem_certificates(path, where)
        except KaiRunError as e:
            result.problem(Finding.of(e))
    if isinstance(body.get("pac_url"), str) and not skipped(body["pac_url"]):
        from kai_launch.pac import offline_problems

        for error in offline_problems(profile, environ):
            result.problem(Finding.of(error))
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


def _sidecar_files(profile: Any, environ: Mapping[str, str]) -> set[str]:
    """The files a profile's sidecar writes (its ready_file): absent until it first starts."""
    from kai_launch.expand import expand_path

    ready = (profile.sidecar or {}).get("ready_file")
    if not isinstance(ready, str):
        return set()
    try:
        return {expand_path(ready, profile.sidecar_base_dir, environ, "sidecar.ready_file")}
    except KaiRunError:
        return set()


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
    if kind == "oauth2":
        pass  # its client_id/client_secret references come on their own; no token is fetched
    elif kind == "env" and arg not in environ:
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
                if is_secret_ref(value) and "oauth2" in value:
                    for sub in ("client_id", "client_secret"):
                        if is_secret_ref(value["oauth2"].get(sub)):
                            yield f"{prefix}.{key}.oauth2.{sub}", value["oauth2"][sub]


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
