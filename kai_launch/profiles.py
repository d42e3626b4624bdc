"""Selecting a profile and resolving `extends` into one effective Profile.

Merge rules (`extends`, one parent, resolved root first):
- scalars and ordinary lists (command, check_urls, sidecar): the child's value wins;
- `no_proxy`, `ca_bundle`, `unset`: the parent's items, then the child's, duplicates dropped;
- `env` and `proxy_auth` tables: merged key by key, the child's keys win.
A profile may extend a profile of the same name: that names the one it shadows in a lower file
(a user profile refining the organisation's site profile).
"""

from __future__ import annotations

from kai_launch.errors import ProfileError
from kai_launch.schema import FIELDS_BY_NAME, is_secret_ref
from kai_launch.secrets import SecretRef

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from kai_launch.config import Config, ConfigFile

PROFILE_ENV = "KAI_RUN_PROFILE"


class CAEntry:
    """One `ca_bundle` item: the path as written and the directory it is relative to."""

    __slots__ = ("base_dir", "origin", "raw")

    def __init__(self, raw: str, base_dir: str, origin: str) -> None:
        self.raw = raw
        self.base_dir = base_dir
        self.origin = origin


class Profile:
    """A profile with `extends` resolved. Values are as written: nothing expanded or resolved yet."""

    __slots__ = (
        "all_proxy",
        "ca_bundle",
        "ca_mode",
        "chain",
        "check_urls",
        "command",
        "description",
        "env",
        "http_proxy",
        "https_proxy",
        "insecure",
        "jvm",
        "name",
        "no_proxy",
        "openai_proxy",
        "origins",
        "pac_base_dir",
        "pac_url",
        "path",
        "proxy_auth",
        "sidecar",
        "sidecar_base_dir",
        "unset",
    )

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path  # the file that defines this profile (not its parents)
        self.chain: list[tuple[str, str]] = []  # (profile, file), child first
        self.description = ""
        self.http_proxy: str | None = None
        self.https_proxy: str | None = None
        self.all_proxy: str | None = None
        self.no_proxy: list[str] = []
        self.ca_bundle: list[CAEntry] = []
        self.ca_mode = "append"
        self.insecure = False
        self.openai_proxy: bool | str = False
        self.jvm = False
        self.command: list[str] | None = None
        self.check_urls: list[str] = []
        self.unset: list[str] = []
        self.proxy_auth: dict[str, str | SecretRef] = {}
        self.env: dict[str, str | SecretRef] = {}
        self.sidecar: dict[str, object] | None = None
        self.sidecar_base_dir = ""
        self.pac_url: str | None = None
        self.pac_base_dir = ""  # a relative `file:` PAC is relative to the file that names it
        # "https_proxy", "env.X", "proxy_auth.password" -> "profile 'corp' (/path/profiles.toml)"
        self.origins: dict[str, str] = {}


def origin_of(name: str, path: str) -> str:
    return f"profile '{name}' ({path})"


def select_profile_name(
    config: Config, explicit: str | None, environ: Mapping[str, str]
) -> tuple[str, str]:
    """The profile to use and why: --profile, else KAI_RUN_PROFILE, else default_profile."""
    if explicit == "":
        raise ProfileError(
            "--profile names no profile", "command line", _known_hint(config, "give a name")
        )
    if explicit:
        return explicit, "--profile"
    from_env = environ.get(PROFILE_ENV)
    if from_env:
        return from_env, PROFILE_ENV
    default = config.default_profile()
    if default is not None:
        return default[0], f"default_profile in {default[1].path}"
    raise ProfileError(
        "no profile selected", _where_files(config), _known_hint(config, "choose one with -p NAME")
    )


def _where_files(config: Config) -> str:
    existing = [f.path for f in config.existing()]
    return ", ".join(existing) if existing else "no profile file found"


def _known_hint(config: Config, lead: str) -> str:
    names = config.profile_names()
    if not names:
        return "no profiles are defined: create some with `kai-run init`, or pass --config FILE"
    return f"{lead}; known profiles: {', '.join(names)}"


def resolve_profile(config: Config, name: str, why: str | None = None) -> Profile:
    """The effective profile `name`; `why` (e.g. "KAI_RUN_PROFILE") is named if it is unknown."""
    found = config.lookup(name)
    if found is None:
        from kai_launch.errors import did_you_mean

        names = config.profile_names()
        hint = did_you_mean(name, names)
        lead = f"{hint[:-1]}" if hint else "choose one with -p NAME"
        source = f" (from {why})" if why and why != "--profile" else ""
        raise ProfileError(
            f"unknown profile '{name}'{source}", _where_files(config), _known_hint(config, lead)
        )
    chain: list[tuple[str, int, ConfigFile]] = []
    seen: set[tuple[str, int]] = set()
    current, (index, cfile) = name, found
    while True:
        if (current, index) in seen:
            cycle = " -> ".join([n for n, _, _ in chain] + [current])
            raise ProfileError(
                f"extends cycle: {cycle}",
                f"{cfile.path}, profile '{current}', key 'extends'",
                "remove one of these `extends`",
            )
        seen.add((current, index))
        chain.append((current, index, cfile))
        parent = cfile.profiles[current].get("extends")
        if parent is None:
            break
        assert isinstance(parent, str)
        below = index if parent == current else None
        located = config.lookup(parent, below)
        if located is None and parent == current:
            raise ProfileError(
                f"extends cycle: profile '{current}' extends itself",
                f"{cfile.path}, profile '{current}', key 'extends'",
                "a profile may extend one of the same name only in a lower file (site under user)",
            )
        if located is None:
            raise ProfileError(
                f"profile '{current}' extends unknown profile '{parent}'",
                f"{cfile.path}, profile '{current}', key 'extends'",
                _known_hint(config, "fix the name"),
            )
        current, (index, cfile) = parent, located
    profile = Profile(name, found[1].path)
    profile.chain = [(n, f.path) for n, _, f in chain]
    for pname, _, pfile in reversed(chain):
        _merge(profile, pname, pfile, pfile.profiles[pname])
    if "password" in profile.proxy_auth and "username" not in profile.proxy_auth:
        raise ProfileError(
            "proxy_auth has a password but no username",
            f"{profile.origins['proxy_auth.password']}, key 'proxy_auth'",
            "add proxy_auth.username (a proxy URL carries both, or neither)",
        )
    return profile


def _merge(profile: Profile, name: str, cfile: ConfigFile, body: dict[str, object]) -> None:
    origin = origin_of(name, cfile.path)
    for key, value in body.items():
        field = FIELDS_BY_NAME[key]
        if key == "extends":
            continue
        if key in ("env", "proxy_auth"):
            assert isinstance(value, dict)
            table: dict[str, str | SecretRef] = getattr(profile, key)
            for sub, item in value.items():
                where = f"{origin}, key '{key}.{sub}'"
                table[sub] = _value(item, cfile.base_dir, where)
                profile.origins[f"{key}.{sub}"] = origin
            continue
        if key == "ca_bundle":
            items = [value] if isinstance(value, str) else value
            assert isinstance(items, list)
            known = {(e.raw, e.base_dir) for e in profile.ca_bundle}
            for raw in items:
                if (raw, cfile.base_dir) not in known:
                    profile.ca_bundle.append(CAEntry(raw, cfile.base_dir, origin))
                    known.add((raw, cfile.base_dir))
        elif field.merge == "concat":
            items = [value] if isinstance(value, str) else value
            assert isinstance(items, list)
            current: list[str] = getattr(profile, key)
            added = [i for i in items if i not in current]
            for item in added:
                profile.origins[f"{key}[{item}]"] = origin
            setattr(profile, key, current + added)
        elif key == "sidecar":
            assert isinstance(value, dict)
            profile.sidecar = dict(value)
            profile.sidecar_base_dir = cfile.base_dir
        elif key == "pac_url":
            profile.pac_url = str(value)
            profile.pac_base_dir = cfile.base_dir
        else:
            setattr(profile, key, value)
        previous = profile.origins.get(key)
        if field.merge == "concat" and previous and origin not in previous:
            profile.origins[key] = f"{previous} + {origin}"
        else:
            profile.origins[key] = origin


def _value(item: object, base_dir: str, where: str) -> str | SecretRef:
    if is_secret_ref(item):
        assert isinstance(item, dict)
        return SecretRef.from_toml(item, base_dir, where)
    if isinstance(item, bool):
        return "true" if item else "false"
    return str(item)
