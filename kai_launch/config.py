"""Finding, reading and validating profile files.

Which files (precedence written down where it is implemented):
1. `--config/-c PATH`, else `KAI_RUN_CONFIG`: exactly that one file.
2. Otherwise the site file, then the user file (platformdirs locations). A user profile replaces a
   site profile of the same name; the user's `default_profile` wins over the site's.
No file in the current directory is ever read implicitly: a cloned repository must not be able to
redirect someone's traffic.

Parsing goes through a cache: `tomllib` costs about as much as the interpreter's start-up, so the
parsed (and validated) document is kept with `marshal`, keyed on the file's path, size, mtime_ns and
inode. Secrets are never in it: references are cached, never their values.
"""

from __future__ import annotations

import os

from kai_launch import __version__, paths
from kai_launch.errors import ConfigError
from kai_launch.schema import validate_document

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

CONFIG_ENV = "KAI_RUN_CONFIG"
# The schema may change between releases: a new version never trusts an old cache entry.
_CACHE_VERSION = __version__


class ConfigFile:
    """One profile file that was read: its path, its scope and its (validated) content."""

    __slots__ = ("data", "exists", "path", "scope")

    def __init__(self, path: str, scope: str, data: dict[str, object], *, exists: bool) -> None:
        self.path = path
        self.scope = scope  # "site", "user" or "file" (named by -c / KAI_RUN_CONFIG)
        self.data = data
        self.exists = exists

    @property
    def profiles(self) -> dict[str, dict[str, object]]:
        profiles = self.data.get("profiles", {})
        assert isinstance(profiles, dict)
        return profiles

    @property
    def base_dir(self) -> str:
        # Relative paths are relative to the real file: dotfile managers symlink profiles.toml.
        return os.path.dirname(os.path.realpath(self.path))


class Config:
    """The files that make up the configuration, lowest precedence first."""

    __slots__ = ("files",)

    def __init__(self, files: list[ConfigFile]) -> None:
        self.files = files

    def profile_names(self) -> list[str]:
        names: dict[str, None] = {}
        for f in self.files:
            names.update(dict.fromkeys(f.profiles))
        return list(names)

    def default_profile(self) -> tuple[str, ConfigFile] | None:
        for f in reversed(self.files):
            value = f.data.get("default_profile")
            if isinstance(value, str):
                return value, f
        return None

    def lookup(self, name: str, below: int | None = None) -> tuple[int, ConfigFile] | None:
        """The highest-precedence file defining `name`, optionally only among files below index `below`."""
        stop = len(self.files) if below is None else below
        for index in range(stop - 1, -1, -1):
            if name in self.files[index].profiles:
                return index, self.files[index]
        return None

    def existing(self) -> list[ConfigFile]:
        return [f for f in self.files if f.exists]


def candidate_files(explicit: str | None, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(path, scope) of the files kai-run reads, lowest precedence first."""
    if explicit == "":
        raise ConfigError(
            "--config names no file", "command line", "give a path, e.g. -c profiles.toml"
        )
    named = explicit or environ.get(CONFIG_ENV) or None
    if named:
        return [(os.path.abspath(os.path.expanduser(named)), "file")]
    return [(paths.site_config_file(), "site"), (paths.user_config_file(), "user")]


def load_config(explicit: str | None, environ: Mapping[str, str]) -> Config:
    """Read and validate the profile files; a named file (-c, KAI_RUN_CONFIG) must exist."""
    files: list[ConfigFile] = []
    for path, scope in candidate_files(explicit, environ):
        data = read_file(path, required=scope == "file")
        files.append(ConfigFile(path, scope, data or {}, exists=data is not None))
    return Config(files)


def read_file(path: str, *, required: bool) -> dict[str, object] | None:
    """Parse and validate one file; None when it does not exist and is not required."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if required:
            raise ConfigError(
                "profile file not found",
                path,
                f"check the path given to --config or {CONFIG_ENV}, or create it with `kai-run init`",
            ) from None
        return None
    except OSError as e:
        raise ConfigError(
            f"cannot read profile file: {e.strerror}", path, "check the path and its permissions"
        ) from None
    if not os.path.isfile(path):
        raise ConfigError(
            "the profile file is not a regular file", path, "name the profiles.toml file itself"
        )
    # ctime cannot be set back by `touch -r` or `cp -p`, so a same-size, same-mtime rewrite is seen.
    key = (_CACHE_VERSION, path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    cache_path = _cache_path(path)
    cached = _cache_get(cache_path, key)
    if cached is not None:
        return cached
    data = parse_toml(path)
    validate_document(data, path)
    _cache_put(cache_path, key, data)
    return data


def parse_toml(path: str, text: str | None = None) -> dict[str, object]:
    import tomllib

    try:
        if text is None:
            with open(path, "rb") as f:
                raw = f.read()
            text = raw.decode("utf-8-sig")  # a BOM some Windows editors add is not an error
        return tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"profile file is not UTF-8 (byte {e.start})", path, "save the file as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"cannot read profile file: {e.strerror}", path, "check the path and its permissions"
        ) from None
    except tomllib.TOMLDecodeError as e:
        what, where = _split_toml_error(str(e))
        raise ConfigError(
            f"invalid TOML: {what}",
            f"{path}, {where}" if where else path,
            "fix the syntax at that position (strings need quotes, tables are [profiles.NAME])",
        ) from None


def _split_toml_error(message: str) -> tuple[str, str | None]:
    # tomllib says "Invalid value (at line 3, column 7)"; we want "line 3, column 7" in the where.
    head, sep, tail = message.rpartition(" (at ")
    if sep and tail.endswith(")"):
        return head, tail[:-1]
    return message, None


def _cache_path(path: str) -> str:
    import zlib

    digest = f"{zlib.crc32(path.encode('utf-8', 'surrogateescape')):08x}"
    return os.path.join(paths.user_cache_dir(), "parsed", digest + ".marshal")


def _cache_get(cache_path: str, key: tuple[object, ...]) -> dict[str, object] | None:
    import marshal

    try:
        with open(cache_path, "rb") as f:
            stored_key, data = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    return data if stored_key == key and isinstance(data, dict) else None


def _cache_put(cache_path: str, key: tuple[object, ...], data: dict[str, object]) -> None:
    import marshal

    try:
        blob = marshal.dumps((key, data))  # type: ignore[arg-type]
    except ValueError:
        return  # TOML dates are not marshal-able; such a file is simply re-parsed each time
    try:
        # Private: the parsed file may hold plaintext values its owner keeps at 0600.
        os.makedirs(os.path.dirname(cache_path), mode=0o700, exist_ok=True)
        tmp = f"{cache_path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only cache dir only costs speed
