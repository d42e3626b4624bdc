"""`kai-run env` output formats: each one must give back every value exactly.

The `sh` output is evaluated by real shells; `github` and `dotenv` are read back by the parsers
their consumers use (a transcription of the Actions runner's, and python-dotenv itself).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kai_launch.errors import KaiRunError
from kai_launch.exports import FORMATS, render_exports

# Any text a variable can hold: everything but NUL, which no environment can contain, and lone
# surrogates, which are not text (os.environ uses them only to smuggle undecodable bytes).
env_chars = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
env_values = st.text(env_chars)
# The same, biased towards the characters that break quoting.
nasty_values = st.text(
    st.one_of(
        st.sampled_from(list("'\"\\$`!\n\r\t #=-{}()*?~;&|<>\u2018\u2019\u201a\u201b")),
        env_chars,
    )
)
NASTY_EXAMPLES = [
    "$(touch pwned)",
    "`touch pwned`",
    "'",
    "''",
    "\\",
    "\\'",
    "a\nb",
    "é漢字",
    "\r\n",
    "ends with newline\n",
    "",
    "!!",
    "-n",
    "${HOME}",
    "$HOME",
    "'; touch pwned; '",
    "C:\\dir\\",
]

PROPERTY = settings(max_examples=150, deadline=None)
SHELLS = ["bash", "zsh", "dash"]


def _names(count: int) -> list[str]:
    return [f"KAI_TEST_V{i}" for i in range(count)]


# --- sh: evaluated by real shells -------------------------------------------------------------


def _require_shell(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        # Debian has zsh as a package (`apt-get install zsh`); tests do not install it.
        pytest.skip(f"{shell} is not installed")
    return path


def _eval_sh(
    shell: str, script: str, names: list[str], env: dict[str, str] | None = None
) -> list[str | None]:
    """Eval `script` in `shell` as `eval "$(cat file)"` does; each name's value, None if unset."""
    # NUL separates the printed values because it is the one byte no value can hold; "U"/"S"
    # tell an unset variable from an empty one.
    report = "; ".join(
        f'if [ -n "${{{name}+x}}" ]; then printf "S%s\\0" "${name}"; else printf "U\\0"; fi'
        for name in names
    )
    with tempfile.TemporaryDirectory() as tmp:
        script_path = Path(tmp) / "exports.sh"
        script_path.write_bytes(script.encode())
        child_env = {"PATH": os.environ["PATH"], "LC_ALL": "C.UTF-8", **(env or {})}
        result = subprocess.run(
            [shell, "-c", f'eval "$(cat "$1")"; {report}', shell, str(script_path)],
            capture_output=True,
            env=child_env,
            cwd=tmp,
            check=True,
            timeout=30,
        )
        # Nothing in a value may run: the directory holds only the script.
        assert os.listdir(tmp) == ["exports.sh"]
    assert result.stderr == b""
    fields = result.stdout.split(b"\0")
    assert fields[-1] == b""
    return [None if f == b"U" else f[1:].decode() for f in fields[:-1]]


@pytest.mark.parametrize("shell", SHELLS)
@PROPERTY
@given(values=st.lists(nasty_values, min_size=1, max_size=4))
@example(values=NASTY_EXAMPLES)
@example(values=["x\\", "'y'"])
def test_sh_export_round_trips(shell: str, values: list[str]) -> None:
    path = _require_shell(shell)
    names = _names(len(values))
    script = render_exports(list(zip(names, values, strict=True)), [], "sh")
    assert _eval_sh(path, script, names) == values


@pytest.mark.parametrize("shell", SHELLS)
@PROPERTY
@given(value=env_values)
def test_sh_export_round_trips_any_text(shell: str, value: str) -> None:
    path = _require_shell(shell)
    script = render_exports([("KAI_TEST_V", value)], [], "sh")
    assert _eval_sh(path, script, ["KAI_TEST_V"]) == [value]


@pytest.mark.parametrize("shell", SHELLS)
def test_sh_unset_removes_inherited_variable(shell: str) -> None:
    path = _require_shell(shell)
    script = render_exports([("KAI_TEST_KEEP", "v")], ["KAI_TEST_GONE", "KAI_TEST_EMPTY"], "sh")
    env = {"KAI_TEST_GONE": "http://proxy.invalid:3128", "KAI_TEST_EMPTY": ""}
    names = ["KAI_TEST_KEEP", "KAI_TEST_GONE", "KAI_TEST_EMPTY", "KAI_TEST_NEVER"]
    assert _eval_sh(path, script, names, env) == ["v", None, None, None]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_sh_unset_leaves_a_function_of_the_same_name(shell: str) -> None:
    # bash's plain `unset NAME` removes a function NAME when no such variable exists.
    path = _require_shell(shell)
    script = render_exports([], ["kai_fn"], "sh")
    with tempfile.TemporaryDirectory() as tmp:
        script_path = Path(tmp) / "exports.sh"
        script_path.write_text(script)
        result = subprocess.run(
            [
                path,
                "-c",
                'kai_fn() { echo alive; }; eval "$(cat "$1")"; kai_fn',
                path,
                str(script_path),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    assert result.stdout == "alive\n"


def test_sh_golden() -> None:
    out = render_exports([("A", "it's"), ("B", "")], ["C"], "sh")
    assert out == "export A='it'\\''s'\nexport B=''\nunset -v C\n"


# --- github: read back the way the Actions runner reads $GITHUB_ENV ----------------------------


def _parse_github_env(text: str, *, windows: bool = False) -> dict[str, str]:
    """The runner's SetEnvFileCommand (actions/runner, src/Runner.Worker/FileCommandManager.cs).

    Lines end at LF; a Windows runner also ends them at CRLF. `NAME=VALUE` takes the rest of
    the line; `NAME<<DELIM` takes the following lines up to a line equal to DELIM, the value
    being the original text between them (inner line breaks kept, the last one dropped).
    """
    result: dict[str, str] = {}
    index = 0

    def read_line() -> tuple[str, str] | None:
        nonlocal index
        if index >= len(text):
            return None
        start = index
        lf = text.find("\n", index)
        if lf < 0:
            index = len(text)
            return text[start:], ""
        crlf = text.find("\r\n", index)
        if windows and 0 <= crlf < lf:
            index = crlf + 2
            return text[start:crlf], "\r\n"
        index = lf + 1
        return text[start:lf], "\n"

    while (read := read_line()) is not None:
        line = read[0]
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, value = line.split("=", 1)
            result[name] = value
            continue
        assert heredoc >= 0, f"invalid line {line!r}"
        name, delimiter = line.split("<<", 1)
        assert name and delimiter
        start = end = index
        while (read := read_line()) is not None and read[0] != delimiter:
            end = index - len(read[1])
        assert read is not None, f"delimiter {delimiter!r} not found"
        result[name] = text[start:end] if end > start else ""
    return result


delimiter_like = st.builds(
    lambda prefix, body, tail: prefix + body + tail,
    st.sampled_from(["", "x", "\n", "ghadelimiter_", "\nghadelimiter_"]),
    st.sampled_from(["ghadelimiter_", "ghadelimiter_\n", "<<", "=", "\r\n", "\n\n"]),
    nasty_values,
)


@PROPERTY
@given(
    values=st.lists(st.one_of(nasty_values, delimiter_like), min_size=1, max_size=4),
    n_unset=st.integers(0, 2),
)
@example(values=NASTY_EXAMPLES, n_unset=1)
@example(values=["ghadelimiter_\nx", "\n", "a\n\n", "\nb"], n_unset=0)
def test_github_round_trips(values: list[str], n_unset: int) -> None:
    names = _names(len(values))
    unset = [f"KAI_TEST_U{i}" for i in range(n_unset)]
    out = render_exports(list(zip(names, values, strict=True)), unset, "github")
    expected = dict(zip(names, values, strict=True)) | dict.fromkeys(unset, "")
    assert _parse_github_env(out) == expected
    # Appended to a file that already holds lines, and followed by more, nothing bleeds over.
    assert _parse_github_env("BEFORE=1\n" + out + "AFTER=2\n") == {
        "BEFORE": "1",
        **expected,
        "AFTER": "2",
    }


@PROPERTY
@given(
    value=st.builds(
        lambda head, brk, tail: head + brk + tail,
        nasty_values,
        st.sampled_from(["\n", "\r", "\r\n"]),
        nasty_values,
    )
)
def test_github_windows_runner_loses_only_a_final_cr(value: str) -> None:
    out = render_exports([("KAI_TEST_V", value)], [], "github")
    assert _parse_github_env(out, windows=True) == {"KAI_TEST_V": value.removesuffix("\r")}


def test_github_picks_a_delimiter_absent_from_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # The collision loop only runs when a value holds the very delimiter drawn, which random
    # UUIDs never produce in a test: feed a known sequence instead.
    first, second = uuid.UUID(int=1), uuid.UUID(int=2)
    drawn = iter([first, second])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(drawn))
    value = f"line\nghadelimiter_{first.hex}\nmore"
    out = render_exports([("V", value)], [], "github")
    assert out == f"V<<ghadelimiter_{second.hex}\n{value}\nghadelimiter_{second.hex}\n"
    assert _parse_github_env(out) == {"V": value}


def test_github_single_line_golden() -> None:
    assert render_exports([("A", "x=y <<z"), ("B", "")], ["C"], "github") == "A=x=y <<z\nB=\nC=\n"


# --- dotenv: read back by python-dotenv --------------------------------------------------------


# python-dotenv is not a dependency: these tests run where it happens to be installed.
needs_dotenv = pytest.mark.skipif(
    importlib.util.find_spec("dotenv") is None, reason="python-dotenv is not installed"
)


def _dotenv_round_trip(
    assign: list[tuple[str, str]], *, interpolate: bool
) -> dict[str, str | None] | None:
    """What python-dotenv reads from our output, from a stream and from a file; None if refused."""
    dotenv = importlib.import_module("dotenv")
    try:
        out = render_exports(assign, ["KAI_TEST_GONE"], "dotenv")
    except KaiRunError as err:
        assert "backslash" in err.what
        return None
    from_stream = dotenv.dotenv_values(stream=io.StringIO(out), interpolate=interpolate)
    # A file is read in text mode, which turns a raw CR into LF: the case the escapes are for.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ".env"
        path.write_bytes(out.encode())
        from_file = dotenv.dotenv_values(path, interpolate=interpolate)
    assert from_stream == from_file
    return dict(from_file)


@needs_dotenv
@PROPERTY
@given(values=st.lists(nasty_values, min_size=1, max_size=4))
@example(values=[v for v in NASTY_EXAMPLES if v != "C:\\dir\\"])
@example(values=["C:\\dir\\", "'quoted'", "x'"])
def test_dotenv_round_trips(values: list[str]) -> None:
    names = _names(len(values))
    read = _dotenv_round_trip(list(zip(names, values, strict=True)), interpolate=False)
    if read is None:
        # Refused only for a value ending in a backslash that cannot be written unquoted.
        assert any(v.endswith("\\") for v in values)
        return
    assert read == dict(zip(names, values, strict=True))


@needs_dotenv
@PROPERTY
@given(value=nasty_values.filter(lambda v: "${" not in v))
def test_dotenv_round_trips_with_default_interpolation(value: str) -> None:
    read = _dotenv_round_trip([("KAI_TEST_V", value), ("KAI_TEST_W", "'")], interpolate=True)
    if read is not None:
        assert read == {"KAI_TEST_V": value, "KAI_TEST_W": "'"}


def test_dotenv_golden() -> None:
    out = render_exports(
        [("A", "it's \\ $x"), ("B", 'a\r\nb"c'), ("C", "C:\\dir\\")], ["D"], "dotenv"
    )
    assert out == (
        "A='it\\'s \\\\ $x'\n"
        'B="a\\r\\nb\\"c"\n'
        "C=C:\\dir\\\n"
        "# unset D (dotenv cannot remove a variable)\n"
    )


@pytest.mark.parametrize("value", ["x\\", " x\\", "'x\\", "a #b\\", "a\nb\\", "x \\"])
def test_dotenv_backslash_end(value: str) -> None:
    unquoted_ok = value in ("x\\", "x \\")
    if unquoted_ok:
        assert render_exports([("V", value)], [], "dotenv") == f"V={value}\n"
    else:
        with pytest.raises(KaiRunError, match="ends with a backslash"):
            render_exports([("V", value)], [], "dotenv")


# --- json ------------------------------------------------------------------------------------


@PROPERTY
@given(values=st.lists(env_values, max_size=5), unset=st.lists(st.sampled_from(["U1", "U2"])))
def test_json_round_trips_in_order(values: list[str], unset: list[str]) -> None:
    # Reversed names: a sorted dump would fail the order check.
    names = _names(len(values))[::-1]
    out = render_exports(list(zip(names, values, strict=True)), unset, "json")
    assert out.endswith("}\n")
    loaded = json.loads(out)
    assert list(loaded["set"].items()) == list(zip(names, values, strict=True))
    assert loaded["unset"] == unset


def test_json_is_indented() -> None:
    assert render_exports([("A", "1")], ["B"], "json") == (
        '{\n  "set": {\n    "A": "1"\n  },\n  "unset": [\n    "B"\n  ]\n}\n'
    )


# --- fish and PowerShell (no interpreter here: golden strings) --------------------------------


def test_fish_golden() -> None:
    out = render_exports(
        [("A", "it's"), ("B", "back\\slash\\'"), ("C", "$x `y` (z)\nline2"), ("D", "-e")],
        ["E"],
        "fish",
    )
    assert out == (
        "set -gx A 'it\\'s'\n"
        "set -gx B 'back\\\\slash\\\\\\''\n"
        "set -gx C '$x `y` (z)\nline2'\n"
        "set -gx D '-e'\n"
        "set -e -g E\n"
    )


def test_powershell_golden() -> None:
    out = render_exports(
        [
            ("A", "it's"),
            ("B", "\u2018curly\u2019 \u201alow\u201b"),
            ("C", "$env:PATH `n $(x) \\"),
            ("D", ""),
        ],
        ["E"],
        "powershell",
    )
    assert out == (
        "$env:A = 'it''s'\n"
        "$env:B = '\u2018\u2018curly\u2019\u2019 \u201a\u201alow\u201b\u201b'\n"
        "$env:C = '$env:PATH `n $(x) \\'\n"
        "$env:D = ''\n"
        "Remove-Item Env:E -ErrorAction SilentlyContinue\n"
    )


# --- common ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f not in ("json", "maven-settings")])
def test_nothing_to_say_is_empty(fmt: str) -> None:
    assert render_exports([], [], fmt) == ""


def test_json_nothing_to_say() -> None:
    assert json.loads(render_exports([], [], "json")) == {"set": {}, "unset": []}


def test_unknown_format() -> None:
    with pytest.raises(KaiRunError) as info:
        render_exports([("A", "1")], [], "cmd")
    assert info.value.what == "unknown format 'cmd'"
    assert info.value.hint is not None
    assert all(fmt in info.value.hint for fmt in FORMATS)
