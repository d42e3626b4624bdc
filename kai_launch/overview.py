"""What `profiles list` and `profiles show` report, as data (render.py draws it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kai_launch.errors import KaiRunError
from kai_launch.profiles import resolve_profile
from kai_launch.proxyurl import redact_url
from kai_launch.secrets import SecretRef

if TYPE_CHECKING:
    from kai_launch.config import Config
    from kai_launch.environ import EnvPlan
    from kai_launch.profiles import Profile


@dataclass(frozen=True)
class ProfileRow:
    name: str
    description: str
    http_proxy: str | None
    https_proxy: str | None
    all_proxy: str | None
    file: str
    scope: str
    error: str | None = None


@dataclass(frozen=True)
class Entry:
    key: str
    value: object
    origin: str


@dataclass
class ProfileDetails:
    name: str
    chain: list[tuple[str, str]]
    settings: list[Entry] = field(default_factory=list)
    variables: list[Entry] = field(default_factory=list)
    unset: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "profile": self.name,
            "chain": [{"profile": n, "file": f} for n, f in self.chain],
            "settings": {e.key: {"value": e.value, "origin": e.origin} for e in self.settings},
            "variables": {e.key: {"value": e.value, "origin": e.origin} for e in self.variables},
            "unset": {e.key: e.origin for e in self.unset},
            "warnings": self.warnings,
        }


def list_profiles(config: Config) -> list[ProfileRow]:
    rows: list[ProfileRow] = []
    for name in config.profile_names():
        found = config.lookup(name)
        assert found is not None
        cfile = found[1]
        try:
            p = resolve_profile(config, name)
        except KaiRunError as e:
            rows.append(
                ProfileRow(name, "", None, None, None, cfile.path, cfile.scope, e.message())
            )
            continue
        rows.append(
            ProfileRow(
                name,
                p.description,
                redact_url(p.http_proxy) if p.http_proxy else None,
                redact_url(p.https_proxy) if p.https_proxy else None,
                redact_url(p.all_proxy) if p.all_proxy else None,
                cfile.path,
                cfile.scope,
            )
        )
    return rows


def _shown(key: str, value: object, *, reveal: bool) -> object:
    from kai_launch.environ import looks_secret

    if isinstance(value, SecretRef):
        if reveal and value.kind == "oauth2":
            return {value.kind: value.arg.to_toml()}  # type: ignore[union-attr]
        return value.describe() if not reveal else {value.kind: value.arg}
    if isinstance(value, str):
        if not reveal and (looks_secret(key) or key == "proxy_auth.password"):
            return "***"
        return value if reveal else redact_url(value)
    return value


def _sidecar_shown(sidecar: dict[str, object], *, reveal: bool) -> dict[str, object]:
    """The sidecar table with its secrets masked like the profile's own env."""
    if reveal:
        return dict(sidecar)
    shown = dict(sidecar)
    command = sidecar.get("command")
    if isinstance(command, list):
        shown["command"] = [redact_url(str(arg)) for arg in command]
    env = sidecar.get("env")
    if isinstance(env, dict):
        from kai_launch.environ import looks_secret

        shown["env"] = {
            k: (
                "***"
                if looks_secret(k) or isinstance(v, dict)
                else redact_url(v)
                if isinstance(v, str)
                else v
            )
            for k, v in env.items()
        }
    return shown


def describe_profile(profile: Profile, plan: EnvPlan, *, reveal: bool) -> ProfileDetails:
    details = ProfileDetails(profile.name, profile.chain, warnings=list(plan.warnings))
    origins = profile.origins
    scalar_keys = (
        "description",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "ca_mode",
        "insecure",
        "openai_proxy",
        "jvm",
        "command",
        "check_urls",
        "pac_url",
        "unset",
    )
    for key in scalar_keys:
        if key in origins:
            details.settings.append(
                Entry(key, _shown(key, getattr(profile, key), reveal=reveal), origins[key])
            )
    if profile.ca_bundle:
        origins_seen = dict.fromkeys(e.origin for e in profile.ca_bundle)
        details.settings.append(
            Entry("ca_bundle", [e.raw for e in profile.ca_bundle], " + ".join(origins_seen))
        )
    for table in ("proxy_auth", "env"):
        for sub, value in getattr(profile, table).items():
            key = f"{table}.{sub}"
            details.settings.append(
                Entry(key, _shown(key, value, reveal=reveal), origins.get(key, ""))
            )
    if profile.sidecar is not None:
        details.settings.append(
            Entry(
                "sidecar",
                _sidecar_shown(profile.sidecar, reveal=reveal),
                origins.get("sidecar", ""),
            )
        )
    for a in plan.assign.values():
        details.variables.append(Entry(a.name, a.shown(reveal=reveal), a.origin))
    for name, why in plan.removals.items():
        details.unset.append(Entry(name, None, why))
    return details
