"""Render what a profile sets and unsets as text another program can load (`kai-run env`).

Every format must give back each value exactly, whatever it holds (quotes, `$`, backticks,
backslashes, newlines, non-ASCII, empty), because a value that a shell or a parser rewrites on
the way in is a proxy URL or a CA path that silently points somewhere else.
Variable names are trusted: the caller has validated them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Final

from kai_launch.errors import KaiRunError

FORMATS: Final = ("sh", "fish", "powershell", "dotenv", "json", "github", "maven-settings")

# PowerShell's tokenizer accepts the typographic quotes as well as the apostrophe as the
# delimiter of a verbatim string, and any of them doubled as an escaped quote; leaving one
# undoubled would end the string early.
_PS_DOUBLE_QUOTES: Final = {ord(quote): quote * 2 for quote in "'\u2018\u2019\u201a\u201b"}


def render_exports(assign: Sequence[tuple[str, str]], unset: Sequence[str], fmt: str) -> str:
    """Text that sets `assign` (in order) and removes `unset`, in format `fmt` (one of FORMATS).

    The result ends with a newline unless it is empty. Raises KaiRunError for an unknown format,
    or for a value the format cannot carry (see `_dotenv_line`).

    Two formats cannot remove a variable. `dotenv` writes a comment saying so. `github` (lines
    to append to `$GITHUB_ENV`) writes `NAME=`, an empty value, which every client that reads
    proxy and CA variables (requests, httpx, curl, Go, Node) treats as unset.
    """
    if fmt == "json":
        return _render_json(assign, unset)
    if fmt == "maven-settings":
        # Not variables: the <proxies> block of ~/.m2/settings.xml for the proxies they name.
        from kai_launch.jvm import maven_settings

        values = dict(assign)
        return maven_settings(values, values.get("KAI_RUN_PROFILE", "profile"))
    renderers = _LINE_RENDERERS.get(fmt)
    if renderers is None:
        raise KaiRunError(f"unknown format '{fmt}'", hint=f"one of: {', '.join(FORMATS)}")
    set_line, unset_line = renderers
    lines = [set_line(name, value) for name, value in assign]
    lines += [unset_line(name) for name in unset]
    return "".join(line + "\n" for line in lines)


# --- POSIX sh (bash, zsh, dash) -------------------------------------------------------------


def _sh_quote(value: str) -> str:
    # Inside single quotes nothing is special to any POSIX shell (no `$`, backtick, backslash or
    # history expansion), so the only character to handle is the quote itself: close, add an
    # escaped quote, reopen. A closing quote is always followed by `\` or a newline, so zsh's
    # RC_QUOTES (`''` as a quote) can never fire.
    return "'" + value.replace("'", "'\\''") + "'"


def _sh_set(name: str, value: str) -> str:
    return f"export {name}={_sh_quote(value)}"


def _sh_unset(name: str) -> str:
    # Without -v, bash unsets a *function* of that name when no such variable exists.
    return f"unset -v {name}"


# --- fish ------------------------------------------------------------------------------------


def _fish_set(name: str, value: str) -> str:
    # In fish single quotes only `\\` and `\'` are escapes. `set` stops reading options at the
    # first non-option (REQUIRE_ORDER), so a value starting with `-` is safe after the name.
    quoted = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"set -gx {name} '{quoted}'"


def _fish_unset(name: str) -> str:
    # A bare `set -e` erases the smallest scope holding the name, which can be a *universal*
    # variable: that would delete the user's persistent setting in every fish session.
    return f"set -e -g {name}"


# --- PowerShell ------------------------------------------------------------------------------


def _ps_set(name: str, value: str) -> str:
    # On Windows an empty value removes the variable: the platform has no empty variables.
    quoted = value.translate(_PS_DOUBLE_QUOTES)
    return f"$env:{name} = '{quoted}'"


def _ps_unset(name: str) -> str:
    return f"Remove-Item Env:{name} -ErrorAction SilentlyContinue"


# --- dotenv (python-dotenv) ------------------------------------------------------------------


def _dotenv_line(name: str, value: str) -> str:
    r"""One `NAME=value` line that python-dotenv's parser reads back as exactly `value`.

    Single quotes are the default: python-dotenv decodes only `\\` and `\'` there, and shells
    and docker compose do not expand anything inside them.
    Two exceptions, both from python-dotenv's parser (src/dotenv/parser.py):
    - a value holding `\r` is double-quoted with `\r`/`\n` escapes, because reading a file
      in text mode turns a raw `\r` into `\n`;
    - a value ending in a backslash cannot be quoted at all: the quoted-value regex reads the
      final `\` plus the closing quote as an escaped quote and runs on to the next quote in
      the file. It is written unquoted when that is exact, and refused otherwise.
    Not avoidable: python-dotenv expands `${VAR}` even in single quotes unless it is called with
    `interpolate=False`, and it has no escape for `$` (theskumar/python-dotenv#422).
    """
    if value.endswith("\\"):
        if not _dotenv_unquoted_is_exact(value):
            raise KaiRunError(
                f"the value of {name} ends with a backslash and cannot be written exactly "
                "in dotenv format",
                hint="use --format json or --format sh",
            )
        return f"{name}={value}"
    if "\r" in value:
        escaped = (
            value.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\r", "\\r")
            .replace("\n", "\\n")
        )
        return f'{name}="{escaped}"'
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"{name}='{escaped}'"


def _dotenv_unquoted_is_exact(value: str) -> bool:
    # python-dotenv reads a leading quote as a quoted value, skips whitespace after `=`, ends
    # the line at CR or LF, cuts at whitespace followed by `#` (a comment) and strips trailing
    # whitespace. `str.isspace` is what its regexes' `\s` matches.
    if not value or value[0] in "'\"" or value[0].isspace() or value[-1].isspace():
        return False
    if "\r" in value or "\n" in value:
        return False
    return not any(char.isspace() and after == "#" for char, after in pairwise(value))


def _dotenv_unset(name: str) -> str:
    return f"# unset {name} (dotenv cannot remove a variable)"


# --- GitHub Actions ($GITHUB_ENV) ------------------------------------------------------------


def _github_set(name: str, value: str) -> str:
    r"""`NAME=value`, or the `NAME<<DELIM` block for a value with a line break.

    The runner splits the file on `\n` (and on `\r\n` on Windows). A lone `\r` does not end a
    line for it, but the block form is used for it too, so that no `NAME=` line carries a CR
    that another reader of the file could take for a line break. A Windows runner drops a `\r`
    that ends the value, in either form: the runner's own limitation, which no quoting avoids.
    """
    if "\n" not in value and "\r" not in value:
        return f"{name}={value}"
    import uuid

    delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
    while delimiter in value:
        delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}"


def _github_unset(name: str) -> str:
    # $GITHUB_ENV cannot remove a variable. An empty value is the closest thing: every client
    # that reads proxy and CA variables (requests, httpx, curl, Go, Node) treats empty as unset.
    return f"{name}="


# --- JSON ------------------------------------------------------------------------------------


def _render_json(assign: Sequence[tuple[str, str]], unset: Sequence[str]) -> str:
    import json

    # The given order is kept (not sorted): it is the order in which the variables apply.
    document = {"set": dict(assign), "unset": list(unset)}
    return json.dumps(document, indent=2) + "\n"


_LINE_RENDERERS: Final[dict[str, tuple[Callable[[str, str], str], Callable[[str], str]]]] = {
    "sh": (_sh_set, _sh_unset),
    "fish": (_fish_set, _fish_unset),
    "powershell": (_ps_set, _ps_unset),
    "dotenv": (_dotenv_line, _dotenv_unset),
    "github": (_github_set, _github_unset),
}
