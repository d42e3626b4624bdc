"""`${VAR}` expansion from the parent environment, for env values, proxy URLs and paths.

`${VAR}` is VAR's value, `${VAR:-default}` falls back when VAR is unset or empty (the shell's rule;
the default may itself hold `${...}`), `$$` is a literal `$`; any other `$` is kept as it is. An
unset `${VAR}` without default is an error. Error messages never quote the value: it may be a secret.
"""

from __future__ import annotations

import os

from kai_launch.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def expand_vars(text: str, environ: Mapping[str, str], where: str) -> str:
    if "$" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c != "$" or i + 1 == n:
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt != "{":
            out.append(c)
            i += 1
            continue
        end = _closing_brace(text, i + 2)
        if end < 0:
            raise ConfigError(
                "unclosed '${' in the value", where, "write ${NAME}, or $$ for a literal $"
            )
        body = text[i + 2 : end]
        name, sep, default = body.partition(":-")
        if not name or not (name.isascii() and name.isidentifier()):
            raise ConfigError(
                "invalid variable reference in the value (a ${...} without a valid NAME)",
                where,
                "write ${NAME} or ${NAME:-default}; $$ is a literal $",
            )
        value = environ.get(name)
        if sep:
            out.append(value if value else expand_vars(default, environ, where))
        elif value is None:
            raise ConfigError(
                f"variable {name} is not set",
                where,
                f"export {name}, or write ${{{name}:-default}}",
            )
        else:
            out.append(value)
        i = end + 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` that closes a `${` whose body starts at `start` (nested `${...}` allowed)."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def expand_path(raw: str, base_dir: str, environ: Mapping[str, str], where: str) -> str:
    """Expand ${VAR} and `~`; a relative path is relative to the file that holds it."""
    path = os.path.expanduser(expand_vars(raw, environ, where))
    return os.path.normpath(os.path.join(base_dir, path))
