"""kai_launch.edit: byte-for-byte preservation, validation before writing, atomic writes, checks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kai_launch import edit
from kai_launch.config import load_config
from kai_launch.errors import KaiRunError
from kai_launch.profiles import resolve_profile

REPO = Path(__file__).resolve().parent.parent

# A file a person has looked after for years: comments everywhere, aligned values, literal
# strings, multi-line arrays with comments, every way TOML allows to write a sub-table.
RICH = """\
# Company profiles -- maintained by IT.
# Do not remove the base profile.

default_profile = 'corp'   # literal string on purpose

# Loopback always direct
[profiles.base]
description = 'Loopback'
no_proxy = [
  "localhost",   # names first
  "127.0.0.1",
  "::1",
]

# Main egress.
[profiles.corp]
extends = "base"
description = "Corporate egress"     # shown by list
http_proxy  = "http://proxy.corp.example:3128"   # aligned
https_proxy = "http://proxy.corp.example:3128"
no_proxy = [ "*.corp.example",  "10.0.0.0/8" ]
command = ["kai-rpc-server", "--log-level", "info"]
# openai_proxy = true   (commented-out option)

[profiles.corp.proxy_auth]
username = "jdoe"
password = { env = "CORP_PROXY_PASSWORD" }

[profiles.corp.env]   # any variables
OAUTH_CLIENT_ID = "kai-ide"
LOG_DIR = "${HOME}/kai-logs"

# Written with dotted keys.
[profiles.dotted]
extends = "corp"
env.A = "1"
env.B = "2"

# Inline tables.
[profiles.inline]
env = { X = "1", Y = "2" }
proxy_auth = {username = "u"}

[profiles."with space"]
description = "quoted name"

# A local mitmproxy started by kai-run.
[profiles.mitm]
extends = "base"
https_proxy = "http://127.0.0.1:8080"

[profiles.mitm.sidecar]
command = ["mitmdump", "--listen-port", "8080"]
ready = "127.0.0.1:8080"

[profiles.mitm.sidecar.env]
MITM_MODE = "regular"

# Out of order: corp-eu's credentials come after another profile.
[profiles.corp-eu]
extends = "corp"
https_proxy = "http://proxy.eu.corp.example:3128"

[profiles.other]
description = "between"

[profiles.corp-eu.proxy_auth]
username = "eu-user"

# The end.
"""


@pytest.fixture
def rich(tmp_path: Path) -> Path:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "profiles.toml"
    path.write_text(RICH, encoding="utf-8")
    path.chmod(0o600)
    return path


def target(path: Path) -> edit.EditTarget:
    return edit.edit_target(str(path), {})


def loaded(path: Path) -> dict:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return data["profiles"]


# --- preservation ---------------------------------------------------------------------------------

REVERSIBLE = [
    ("corp", "https_proxy", "http://other.example:1", "http://proxy.corp.example:3128"),
    ("corp", "http_proxy", "http://other.example:1", "http://proxy.corp.example:3128"),
    ("base", "description", "Loopback only", "Loopback"),
    (
        "base",
        "no_proxy",
        '["localhost", "127.0.0.1", "::1", "new.example"]',
        '["localhost", "127.0.0.1", "::1"]',
    ),
    ("base", "no_proxy", "localhost,::1", "localhost,127.0.0.1,::1"),
    ("base", "no_proxy", "localhost,127.0.0.1,::1,a,b", "localhost,127.0.0.1,::1"),
    ("corp", "no_proxy", "*.corp.example,10.0.0.0/8,x.example", "*.corp.example,10.0.0.0/8"),
    ("corp", "no_proxy", "new.example,*.corp.example,10.0.0.0/8", "*.corp.example,10.0.0.0/8"),
    ("corp", "command", "kai-rpc-server --log-level debug", "kai-rpc-server --log-level info"),
    ("corp", "command", '["kai-rpc-server"]', '["kai-rpc-server", "--log-level", "info"]'),
    ("corp", "description", "Corp\nmulti-line", "Corporate egress"),
    ("corp", "extends", "mitm", "base"),
    ("corp", "proxy_auth.username", "someone", "jdoe"),
    ("corp", "env.LOG_DIR", "/var/log/kai", "${HOME}/kai-logs"),
    ("dotted", "env.A", "9", "1"),
    ("inline", "env.Y", "9", "2"),
    ("inline", "proxy_auth.username", "v", "u"),
    ("with space", "description", "still quoted", "quoted name"),
    ("mitm", "sidecar.ready", "127.0.0.1:9090", "127.0.0.1:8080"),
    ("mitm", "sidecar.command", "mitmdump -p 9090", "mitmdump --listen-port 8080"),
    ("mitm", "sidecar.env.MITM_MODE", "upstream", "regular"),
    ("corp-eu", "proxy_auth.username", "x", "eu-user"),
    ("corp-eu", "https_proxy", "http://p.example:1", "http://proxy.eu.corp.example:3128"),
]


@pytest.mark.parametrize(("profile", "key", "new", "old"), REVERSIBLE)
def test_set_then_reverse_set_gives_back_the_same_bytes(rich, profile, key, new, old):
    edit.set_value(target(rich), profile, key, new)
    changed = rich.read_text(encoding="utf-8")
    assert changed != RICH
    # Only the lines of that value changed: every comment of the file is still there, in order.
    assert [ln for ln in changed.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in RICH.splitlines() if ln.lstrip().startswith("#")
    ]
    data = loaded(rich)
    value = data[profile]
    for part in key.split("."):
        value = value[part]
    assert value  # landed in the right profile and table
    edit.set_value(target(rich), profile, key, old)
    assert rich.read_text(encoding="utf-8") == RICH


NEW_KEYS = [
    ("corp", "insecure", "true"),
    ("corp", "all_proxy", "socks5h://127.0.0.1:1080"),
    ("corp", "env.NEW_VAR", "v"),
    ("corp", "sidecar.ready", "127.0.0.1:1"),
    ("base", "env.NEW_VAR", "v"),
    ("base", "proxy_auth.username", "me"),
    ("base", "sidecar.env.X", "1"),
    ("dotted", "env.C", "3"),
    ("dotted", "check_urls", "https://a.example/v1"),
    ("inline", "env.Z", "3"),
    ("inline", "proxy_auth.password", "pw"),
    ("with space", "insecure", "false"),
    ("mitm", "sidecar.ready_timeout", "2.5"),
    ("mitm", "sidecar.env.NEW_VAR", "x"),
    ("mitm", "env.NEW_VAR", "x"),
    ("corp-eu", "description", "EU"),
    ("corp-eu", "env.NEW_VAR", "x"),
    ("corp-eu", "proxy_auth.password", "pw"),
    ("other", "ca_mode", "replace"),
    ("other", "env.NEW_VAR", "x"),
]


@pytest.mark.parametrize(("profile", "key", "value"), NEW_KEYS)
def test_a_new_key_lands_in_its_profile_and_unset_removes_exactly_it(rich, profile, key, value):
    edit.set_value(target(rich), profile, key, value)
    data = loaded(rich)
    found = data[profile]
    for part in key.split("."):
        found = found[part]
    assert str(found).lower() == value.lower() or found == [value] or found == 2.5
    # Nothing else moved: all other profiles are unchanged.
    before = tomllib.loads(RICH)["profiles"]
    assert {k: v for k, v in data.items() if k != profile} == {
        k: v for k, v in before.items() if k != profile
    }
    edit.unset_value(target(rich), profile, key)
    assert rich.read_text(encoding="utf-8") == RICH


def test_new_keys_go_inside_the_profiles_own_block(rich):
    edit.set_value(target(rich), "corp", "insecure", "true")
    edit.set_value(target(rich), "base", "env.LOG", "1")
    edit.set_value(target(rich), "corp-eu", "description", "EU")
    text = rich.read_text(encoding="utf-8")
    assert (
        'command = ["kai-rpc-server", "--log-level", "info"]\n'
        "# openai_proxy = true   (commented-out option)\n"
        "insecure = true\n"
        "\n"
        "[profiles.corp.proxy_auth]\n"
    ) in text
    assert (
        '  "::1",\n]\n\n[profiles.base.env]\nLOG = "1"\n\n# Main egress.\n[profiles.corp]\n'
    ) in text
    assert 'https_proxy = "http://proxy.eu.corp.example:3128"\ndescription = "EU"\n\n' in text


def test_key_spacing_of_the_neighbours_is_copied(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[profiles.a]\n  description="x"\n', encoding="utf-8")
    edit.set_value(target(path), "a", "insecure", "true")
    assert path.read_text() == '[profiles.a]\n  description="x"\n  insecure=true\n'


def test_a_whole_profile_written_inline_is_edited_in_place(tmp_path):
    path = tmp_path / "p.toml"
    text = '[profiles]\na = { description = "x" }   # inline\nb = { extends = "a" }\n'
    path.write_text(text, encoding="utf-8")
    edit.set_value(target(path), "a", "https_proxy", "http://p.example:1")
    assert path.read_text() == (
        '[profiles]\na = { description = "x", https_proxy = "http://p.example:1" }   # inline\n'
        'b = { extends = "a" }\n'
    )
    edit.unset_value(target(path), "a", "https_proxy")
    assert path.read_text() == text


def test_crlf_file_stays_crlf(tmp_path):
    path = tmp_path / "p.toml"
    text = RICH.replace("\n", "\r\n")
    path.write_bytes(text.encode())
    edit.set_value(target(path), "corp", "env.NEW_VAR", "v")
    raw = path.read_bytes().decode()
    assert "\n" not in raw.replace("\r\n", "")
    assert 'NEW_VAR = "v"\r\n' in raw
    edit.unset_value(target(path), "corp", "env.NEW_VAR")
    assert path.read_bytes().decode() == text


def test_file_without_final_newline(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[profiles.a]\ndescription = "x"', encoding="utf-8")
    edit.set_value(target(path), "a", "insecure", "true")
    assert path.read_text() == '[profiles.a]\ndescription = "x"\ninsecure = true\n'


def test_setting_the_same_value_writes_nothing(rich):
    before = rich.stat()
    result = edit.set_value(target(rich), "corp", "https_proxy", "http://proxy.corp.example:3128")
    assert not result.changed
    assert rich.stat().st_ino == before.st_ino and rich.stat().st_mtime_ns == before.st_mtime_ns


def test_typed_values():
    where = "here"
    f = edit.field_for
    assert edit.convert_value(f("insecure"), "bool", "TRUE", None, where) is True
    assert edit.convert_value(f("sidecar.ready_timeout"), "number", "15", None, where) == 15
    assert edit.convert_value(f("sidecar.ready_timeout"), "number", "1.5", None, where) == 1.5
    assert edit.convert_value(f("no_proxy"), "str_or_list", "a, b ,c", None, where) == [
        "a",
        "b",
        "c",
    ]
    assert edit.convert_value(f("no_proxy"), "str_or_list", "['a', 'b']", None, where) == ["a", "b"]
    assert edit.convert_value(f("ca_bundle"), "str_or_list", "x.pem", "old.pem", where) == "x.pem"
    assert edit.convert_value(f("ca_bundle"), "str_or_list", "x.pem", None, where) == ["x.pem"]
    assert edit.convert_value(f("command"), "argv", "a 'b c'", None, where) == ["a", "b c"]
    assert edit.convert_value(f("openai_proxy"), "proxy_or_bool", "true", None, where) is True
    assert (
        edit.convert_value(f("openai_proxy"), "proxy_or_bool", "http://p:1", None, where)
        == "http://p:1"
    )
    with pytest.raises(KaiRunError, match="expected true or false"):
        edit.convert_value(f("insecure"), "bool", "yes please", None, where)
    with pytest.raises(KaiRunError, match="expected a number"):
        edit.convert_value(f("sidecar.ready_timeout"), "number", "soon", None, where)
    with pytest.raises(KaiRunError, match="list of strings"):
        edit.convert_value(f("no_proxy"), "str_or_list", "[1, 2]", None, where)


# --- array layout -----------------------------------------------------------------------------------

# Regular layouts: any edit and its reverse give back the same bytes.
ARRAYS = [
    '["a", "b"]',
    "['a', 'b']",
    '[ "a", "b" ]',
    '["a"]',
    '[\n  "a",\n  "b",\n]',
    '[\n  "a",\n  "b"\n]',
]
# Irregular ones (uneven spacing, comments on elements): a removed element takes its spacing and
# comment with it, so only additions are reversible; every edit still keeps the rest intact.
IRREGULAR = [
    '[ "a",  "b" ]',
    '[\n  "a", "b",\n]',
    '[\n  "a",  # first\n  "b",  # second\n]',
    '[\n    # a comment line\n    "a",\n    "b",\n]',
]


@pytest.mark.parametrize("written", ARRAYS + IRREGULAR)
@pytest.mark.parametrize(
    "change", [["a", "b", "c"], ["c", "a", "b"], ["a", "c", "b"], ["b"], ["a"], ["x", "y"], []]
)
def test_array_edits_are_valid_and_reversible(tmp_path, written, change):
    path = tmp_path / "p.toml"
    text = f"[profiles.a]\nno_proxy = {written}   # why\n"
    path.write_text(text, encoding="utf-8")
    original = tomllib.loads(text)["profiles"]["a"]["no_proxy"]
    edit.set_value(target(path), "a", "no_proxy", repr(change).replace("'", '"'))
    assert loaded(path)["a"]["no_proxy"] == change
    assert "# why" in path.read_text()
    if "# first" in written and "a" in change:
        assert '"a",  # first' in path.read_text()
    edit.set_value(target(path), "a", "no_proxy", repr(original).replace("'", '"'))
    if (written in ARRAYS and change) or set(change) >= set(original):
        assert path.read_text() == text


def test_new_array_elements_copy_the_quoting_of_the_others(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[profiles.a]\nno_proxy = ['a', 'b']\n", encoding="utf-8")
    edit.set_value(target(path), "a", "no_proxy", "a,b,c")
    assert path.read_text() == "[profiles.a]\nno_proxy = ['a', 'b', 'c']\n"


HANGING = '[profiles.a]\ncheck_urls = ["https://a.example/",\n              "https://b.example/"]  # why\n'
A, B, C = "https://a.example/", "https://b.example/", "https://c.example/"


@pytest.mark.parametrize("change", [[A, B, C], [C, A, B], [A, C, B], [C, B], [B, A], [C, C]])
def test_a_hanging_indent_array_keeps_its_layout(tmp_path, change):
    path = tmp_path / "p.toml"
    path.write_text(HANGING, encoding="utf-8")
    edit.set_value(target(path), "a", "check_urls", repr(change).replace("'", '"'))
    lines = path.read_text().splitlines()[1:]
    assert len(lines) == len(change)
    assert lines[0].startswith('check_urls = ["https://') and lines[-1].endswith('"]  # why')
    assert all(line.startswith(" " * 14 + '"https://') for line in lines[1:])
    assert all(line.endswith('",') for line in lines[:-1])
    edit.set_value(target(path), "a", "check_urls", f'["{A}", "{B}"]')
    assert path.read_text() == HANGING


def test_an_array_shrunk_to_one_element_closes_where_it_did(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(HANGING, encoding="utf-8")
    edit.set_value(target(path), "a", "check_urls", '["https://x.example/"]')
    assert path.read_text() == '[profiles.a]\ncheck_urls = ["https://x.example/"]  # why\n'
    # One element on one line says nothing of the old layout: two come back on one line too.
    edit.set_value(target(path), "a", "check_urls", f'["{A}", "{B}"]')
    assert path.read_text() == f'[profiles.a]\ncheck_urls = ["{A}", "{B}"]  # why\n'
    for written, shrunk in (
        ('[\n  "a",\n  "b",\n]', '[\n  "b",\n]'),
        ('[\n  "a",\n  "b"\n]', '[\n  "b"\n]'),
        ('[\n    "a", "b",\n    "c",\n]', '[\n    "b",\n]'),
    ):
        text = f"[profiles.a]\nno_proxy = {written}\n"
        path.write_text(text, encoding="utf-8")
        edit.set_value(target(path), "a", "no_proxy", "b")
        assert path.read_text() == f"[profiles.a]\nno_proxy = {shrunk}\n"
        edit.set_value(target(path), "a", "no_proxy", "x,b")
        assert path.read_text().count("\n") == text.count("\n")  # one element per line


def test_a_multi_line_command_keeps_its_rows_indent_and_closing_bracket(tmp_path):
    example = (REPO / "profiles.example.toml").read_text()
    path = tmp_path / "p.toml"
    path.write_text(example, encoding="utf-8")
    original = tomllib.loads(example)["profiles"]["local-mitm"]["sidecar"]["command"]
    edit.set_value(target(path), "local-mitm", "sidecar.command", "mitmdump -p 1")
    text = path.read_text()
    assert 'command = [\n  "mitmdump", "-p", "1",\n]      ' in text
    edit.set_value(target(path), "local-mitm", "sidecar.command", "mitmdump -p 8080 --x")
    assert 'command = [\n  "mitmdump", "-p", "8080",\n  "--x",\n]      ' in path.read_text()
    edit.set_value(target(path), "local-mitm", "sidecar.command", json.dumps(original))
    text = path.read_text()
    # The comments of removed elements are gone with them; the layout is the file's own.
    assert (
        'command = [\n  "mitmdump", "--listen-host", "127.0.0.1", "-p", "8080",\n'
        '  "-s",\n  "~/kai/add_auth_header.py",\n  "--set",\n  "corp_auth_hosts=api.openai.com",\n]'
    ) in text
    assert tomllib.loads(text)["profiles"]["local-mitm"]["sidecar"]["command"] == original
    # A change inside a row stays inside it, and its reverse gives back the original bytes.
    path.write_text(example, encoding="utf-8")
    edit.set_value(target(path), "local-mitm", "sidecar.command", json.dumps(original[:4]))
    edit.set_value(target(path), "local-mitm", "sidecar.command", json.dumps(original))
    assert path.read_text() != example  # the removed rows' comments cannot come back...
    path.write_text(example, encoding="utf-8")
    changed = [*original[:3], "--quiet", *original[3:]]
    edit.set_value(target(path), "local-mitm", "sidecar.command", json.dumps(changed))
    assert '"127.0.0.1", "--quiet", "-p", "8080",\n' in path.read_text()
    edit.set_value(target(path), "local-mitm", "sidecar.command", json.dumps(original))
    assert path.read_text() == example  # ...but an element added and removed leaves no trace


# --- variables keep their TOML type ---------------------------------------------------------------

TYPED = """\
[profiles.a.env]
N = 1   # a number
F = 1.5
B = true
S = "1"
L = 'C:\\literal'
M = \"\"\"
line one
line two\"\"\"

[profiles.a.sidecar.env]
PORT = 8080
"""


@pytest.mark.parametrize(
    ("key", "new", "written", "old"),
    [
        ("env.N", "2", "N = 2   # a number", "1"),
        ("env.N", "-7", "N = -7   # a number", "1"),
        ("env.N", "two", 'N = "two"   # a number', None),
        ("env.F", "2", "F = 2.0", "1.5"),
        ("env.F", "2.25", "F = 2.25", "1.5"),
        ("env.B", "false", "B = false", "true"),
        ("env.B", "no", 'B = "no"', None),
        ("env.S", "2", 'S = "2"', "1"),
        ("env.L", "D:\\other", "L = 'D:\\other'", "C:\\literal"),
        ("env.M", "one\ntwo", 'M = """\none\ntwo"""', "line one\nline two"),
        ("env.M", "single", 'M = "single"', None),
        ("sidecar.env.PORT", "9090", "PORT = 9090", "8080"),
    ],
)
def test_a_variable_keeps_its_toml_type(tmp_path, key, new, written, old):
    path = tmp_path / "p.toml"
    path.write_text(TYPED, encoding="utf-8")
    edit.set_value(target(path), "a", key, new)
    assert written + "\n" in path.read_text()
    load_config(str(path), {})
    if old is not None:  # None: the text is not of the old type, so the variable is a string now
        edit.set_value(target(path), "a", key, old)
        assert path.read_text() == TYPED


def test_a_new_variable_is_a_string(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(TYPED, encoding="utf-8")
    edit.set_value(target(path), "a", "env.NEW", "1")
    edit.set_value(target(path), "a", "sidecar.env.NEW", "true")
    data = loaded(path)["a"]
    assert data["env"]["NEW"] == "1" and data["sidecar"]["env"]["NEW"] == "true"
    result = edit.set_value(target(path), "a", "env.N", "1")
    assert not result.changed  # 1 is what N holds: same type, same value


# --- profiles written with dotted keys ---------------------------------------------------------------

DOTTED_LAYOUTS = [
    '[profiles]\na.https_proxy="http://p.example:1"\na.env.X="1"\n',
    '[profiles]\n# a\na.https_proxy = "http://p.example:1"\na.env.X = "1"\na.env.Y = "2"\n\n'
    '[profiles.b]\nextends = "a"\n',
    '[profiles]\na.env.X = "1"\na.https_proxy = "http://p.example:1"\nb.description = "b"\n',
    'profiles.a.https_proxy = "http://p.example:1"\nprofiles.a.env.X = "1"\n\n'
    '[profiles.b]\nextends = "a"\n',
    '[profiles]\na.https_proxy = "http://p.example:1"\n\n[profiles.a.env]\nX = "1"\n',
    '[profiles]\na.https_proxy = "http://p.example:1"\na.env = { X = "1" }\n',
]
DOTTED_KEYS = ["insecure", "env.NEW", "proxy_auth.username", "sidecar.env.S", "description"]


@pytest.mark.parametrize("text", DOTTED_LAYOUTS)
def test_profiles_written_with_dotted_keys(tmp_path, text):
    path = tmp_path / "p.toml"
    before = tomllib.loads(text)["profiles"]["a"]
    for key in DOTTED_KEYS:
        path.write_text(text, encoding="utf-8")
        edit.set_value(target(path), "a", key, "true" if key == "insecure" else "v")
        value = loaded(path)["a"]
        for part in key.split("."):
            value = value[part]
        assert value in (True, "v"), key
        edit.set_value(target(path), "a", key, "false" if key == "insecure" else "w")
        if "{" not in text:  # every line is still there: the new key went in beside them
            assert all(line in path.read_text() for line in text.splitlines()), key
        edit.unset_value(target(path), "a", key)
        assert path.read_text() == text, key
        with pytest.raises(KaiRunError, match=f"profile 'a' has no key '{key}'"):
            edit.unset_value(target(path), "a", key)
    for key, new in (("env.X", "2"), ("https_proxy", "http://q.example:2")):
        edit.set_value(target(path), "a", key, new)
        edit.set_value(target(path), "a", key, "1" if key == "env.X" else "http://p.example:1")
        assert path.read_text() == text
    for key in ("env.X", "https_proxy"):
        path.write_text(text, encoding="utf-8")
        edit.unset_value(target(path), "a", key)
        after = tomllib.loads(path.read_text())["profiles"]
        assert after["a"] == edit.tomledit.with_value(before, key.split("."), edit.tomledit.DELETE)
        load_config(str(path), {})


@pytest.mark.parametrize(
    ("text", "profile", "key"),
    [
        ('[profiles.b]\nextends = "a"\n\n[profiles.b.sidecar.env]\nS = "x"\n\n[profiles.a]\n', "b", "sidecar.command"),
        ('[profiles.a.env]\nX = "1"\n', "a", "description"),
    ],
)  # fmt: skip
def test_a_header_that_a_set_gave_a_table_goes_with_the_unset(tmp_path, text, profile, key):
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    edit.set_value(target(path), profile, key, "x y")
    header = "[profiles." + ".".join([profile, *key.split(".")[:-1]]) + "]\n"
    assert header in path.read_text()
    edit.unset_value(target(path), profile, key)
    assert path.read_text() == text


def test_the_last_key_of_a_dotted_profile_cannot_go_silently(tmp_path):
    path = tmp_path / "p.toml"
    text = '[profiles]\na.env.X = "1"\nb.description = "b"\n'
    path.write_text(text, encoding="utf-8")
    with pytest.raises(KaiRunError, match="dotted keys and this is its last key") as info:
        edit.unset_value(target(path), "a", "env.X")
    assert "kai-run profiles remove a" in (info.value.hint or "")
    assert path.read_text() == text
    edit.remove_profile(target(path), "a")
    assert path.read_text() == '[profiles]\nb.description = "b"\n'
    with pytest.raises(KaiRunError, match="written with dotted keys"):
        edit.rename_profile(target(path), "b", "c")


# --- validation before writing ----------------------------------------------------------------------

REFUSED = [
    (("corp", "https_proxy", "proxy.corp.example:3128"), "has no scheme", "add http://"),
    (("corp", "https_proxy", "ftp://p.example:21"), "unsupported scheme 'ftp'", None),
    (("corp", "https_proxy", "http://p.example:99999"), "bad port", None),
    (("corp", "insecure", "maybe"), "expected true or false", None),
    (("corp", "check_urls", "ftp://x.example"), "is not an http:// or https:// URL", None),
    (("corp", "ca_mode", "apend"), "expected one of append, replace", "did you mean 'append'?"),
    (
        ("corp", "htps_proxy", "http://p:1"),
        "unknown key 'htps_proxy'",
        "did you mean 'https_proxy'?",
    ),
    (("corp", "proxy_auth.user", "x"), "unknown key", "did you mean 'proxy_auth.username'?"),
    (("corp", "env.1BAD", "x"), "invalid variable name '1BAD'", None),
    (("corp", "env", "x"), "is a table of variables", "env.NAME"),
    (("corp", "sidecar.ready", "localhost"), "is not host:port", None),
    (("corp", "sidecar.ready_timeout", "-1"), "positive number", None),
    (("nope", "https_proxy", "http://p:1"), "unknown profile 'nope'", "known profiles: base, corp"),
    (("crop", "https_proxy", "http://p:1"), "unknown profile 'crop'", "did you mean 'corp'"),
    (("corp", "extends", "dotted"), "extends cycle: corp -> dotted -> corp", None),
    (("corp", "extends", "nowhere"), "extends unknown profile 'nowhere'", None),
]


@pytest.mark.parametrize(("args", "message", "hint"), REFUSED)
def test_invalid_edit_is_refused_and_the_file_is_untouched(rich, args, message, hint):
    before = rich.read_bytes()
    with pytest.raises(KaiRunError) as info:
        edit.set_value(target(rich), *args)
    assert message in info.value.what
    assert str(rich) in (info.value.where or "")
    if hint:
        assert hint in (info.value.hint or "")
    assert rich.read_bytes() == before
    assert sorted(os.listdir(rich.parent)) == ["profiles.toml", "profiles.toml.lock"]


def test_error_names_file_line_profile_and_key(rich):
    with pytest.raises(KaiRunError) as info:
        edit.set_value(target(rich), "corp", "https_proxy", "nope")
    assert info.value.where == f"{rich}, line 20, profile 'corp', key 'https_proxy'"


def test_removing_an_extended_profile_is_refused_naming_them(rich):
    with pytest.raises(KaiRunError) as info:
        edit.remove_profile(target(rich), "corp")
    assert info.value.what == "profile 'corp' is extended by 'dotted', 'corp-eu'"
    assert "line 16, profile 'corp'" in (info.value.where or "")
    with pytest.raises(KaiRunError, match="'base' is extended by 'corp', 'mitm'"):
        edit.remove_profile(target(rich), "base")
    assert rich.read_text() == RICH


def test_removing_the_default_profile_is_refused(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('default_profile = "a"\n[profiles.a]\n[profiles.b]\n')
    with pytest.raises(KaiRunError, match="'a' is the default_profile") as info:
        edit.remove_profile(target(path), "a")
    assert "kai-run profiles default NAME" in (info.value.hint or "")
    edit.remove_profile(target(path), "b")
    assert path.read_text() == 'default_profile = "a"\n[profiles.a]\n'


def test_a_file_that_was_already_broken_can_still_be_fixed(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[profiles.a]\nhtps_proxy = "http://p:1"\n', encoding="utf-8")
    edit.unset_value(target(path), "a", "htps_proxy")
    assert path.read_text() == "[profiles.a]\n"


def test_unknown_profile_that_lives_in_another_file_says_where(tmp_path):
    site = Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run" / "profiles.toml"
    site.parent.mkdir(parents=True)
    site.write_text('[profiles.corp]\nhttps_proxy = "http://p.example:1"\n')
    with pytest.raises(KaiRunError) as info:
        edit.set_value(edit.edit_target(None, {}), "corp", "insecure", "true")
    assert "--site" in (info.value.hint or "") and "--extends corp" in (info.value.hint or "")


# --- structural edits ---------------------------------------------------------------------------------


def test_remove_takes_the_profile_and_its_own_comment_and_keeps_the_next_ones(rich):
    edit.remove_profile(target(rich), "inline")
    text = rich.read_text()
    expected = RICH.replace(
        '# Inline tables.\n[profiles.inline]\nenv = { X = "1", Y = "2" }\n'
        'proxy_auth = {username = "u"}\n\n',
        "",
    )
    assert text == expected


def test_remove_an_out_of_order_profile_removes_every_fragment(rich):
    edit.remove_profile(target(rich), "corp-eu")
    text = rich.read_text()
    assert "corp-eu" not in text
    assert text.endswith('[profiles.other]\ndescription = "between"\n\n# The end.\n')
    assert "# Out of order" not in text


def test_remove_the_last_profile(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[profiles.a]\n\n# b\n[profiles.b]\n")
    edit.remove_profile(target(path), "b")
    assert path.read_text() == "[profiles.a]\n"
    edit.remove_profile(target(path), "a")
    assert path.read_text() == ""


def test_rename_updates_extends_and_default_profile(rich):
    edit.rename_profile(target(rich), "corp", "corporate")
    text = rich.read_text()
    data = tomllib.loads(text)
    assert data["default_profile"] == "corporate"
    assert "corp" not in data["profiles"]
    assert data["profiles"]["dotted"]["extends"] == "corporate"
    assert data["profiles"]["corp-eu"]["extends"] == "corporate"
    assert data["profiles"]["corporate"]["proxy_auth"]["username"] == "jdoe"
    assert "default_profile = 'corporate'   # literal string on purpose\n" in text
    assert "[profiles.corporate.env]   # any variables\n" in text
    edit.rename_profile(target(rich), "corporate", "corp")
    assert rich.read_text() == RICH


def test_rename_out_of_order_and_quoted(rich):
    edit.rename_profile(target(rich), "corp-eu", "corp.eu")
    text = rich.read_text()
    assert '[profiles."corp.eu"]\n' in text and '[profiles."corp.eu".proxy_auth]\n' in text
    assert loaded(rich)["corp.eu"]["proxy_auth"] == {"username": "eu-user"}


@pytest.mark.parametrize("bad", ["corp eu", "bad name!", "a/b", "ünï", "x$y", ""])
def test_new_profile_names_are_what_a_command_line_can_carry(rich, bad):
    for make in (
        lambda: edit.add_profile(target(rich), bad),
        lambda: edit.rename_profile(target(rich), "corp-eu", bad),
        lambda: edit.copy_profile(target(rich), "corp", bad),
    ):
        with pytest.raises(KaiRunError) as info:
            make()
        assert "KAI_RUN_PROFILE" in (info.value.hint or "")
    assert rich.read_text() == RICH
    # Existing odd names still edit, and the allowed characters all work.
    edit.set_value(target(rich), "with space", "description", "still editable")
    edit.copy_profile(target(rich), "corp", "Corp.EU_2-b")
    assert "Corp.EU_2-b" in loaded(rich)


def test_rename_keeps_a_self_extends(tmp_path):
    site = Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run" / "profiles.toml"
    site.parent.mkdir(parents=True)
    site.write_text('[profiles.corp]\nhttps_proxy = "http://p.example:1"\n')
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "kai-run" / "profiles.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[profiles.corp]\nextends = "corp"\n\n[profiles.x]\nextends = "corp"\n')
    edit.rename_profile(edit.edit_target(None, {}), "corp", "mine")
    data = tomllib.loads(user.read_text())["profiles"]
    assert data["mine"]["extends"] == "corp"  # still the site's corp, below it
    assert data["x"]["extends"] == "mine"


def test_rename_to_an_existing_name_is_refused(rich):
    with pytest.raises(KaiRunError, match="'base' already exists"):
        edit.rename_profile(target(rich), "corp", "base")


def test_copy_and_add(rich):
    edit.copy_profile(target(rich), "corp", "corp2")
    data = loaded(rich)
    assert data["corp2"] == data["corp"]
    assert rich.read_text().startswith(RICH)
    with pytest.raises(KaiRunError, match="'corp2' already exists"):
        edit.add_profile(target(rich), "corp2")
    result = edit.add_profile(
        target(rich),
        "lab",
        extends="base",
        proxy="http://lab.example:3128",
        no_proxy=["a.example"],
        description="Lab",
    )
    assert result.warnings == []
    assert rich.read_text().endswith(
        '\n\n[profiles.lab]\nextends = "base"\ndescription = "Lab"\n'
        'http_proxy = "http://lab.example:3128"\nhttps_proxy = "http://lab.example:3128"\n'
        'no_proxy = ["a.example"]\n'
    )
    config = load_config(str(rich), {})
    assert resolve_profile(config, "lab").no_proxy == ["localhost", "127.0.0.1", "::1", "a.example"]


def test_add_validates_like_set(rich):
    before = rich.read_bytes()
    with pytest.raises(KaiRunError, match="has no scheme"):
        edit.add_profile(target(rich), "bad", proxy="proxy:1")
    with pytest.raises(KaiRunError, match="extends unknown profile 'nowhere'"):
        edit.add_profile(target(rich), "bad", extends="nowhere")
    assert rich.read_bytes() == before


def test_copy_from_the_site_file_makes_relative_paths_absolute(tmp_path):
    site_dir = Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run"
    site_dir.mkdir(parents=True)
    (site_dir / "profiles.toml").write_text(
        '[profiles.corp]\nca_bundle = ["certs/root.pem"]\n\n[profiles.corp.env]\n'
        'KEY = { file = "keys/k" }\n'
    )
    result = edit.copy_profile(edit.edit_target(None, {}), "corp", "mine")
    assert result.created
    data = loaded(Path(result.path))["mine"]
    assert data["ca_bundle"] == [str(site_dir / "certs" / "root.pem")]
    assert data["env"]["KEY"] == {"file": str(site_dir / "keys" / "k")}


def test_default_is_inserted_after_the_opening_comments(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("# My profiles.\n\n# The first.\n[profiles.a]\n")
    edit.set_default(target(path), "a")
    assert (
        path.read_text()
        == '# My profiles.\n\ndefault_profile = "a"\n\n# The first.\n[profiles.a]\n'
    )
    with pytest.raises(KaiRunError, match="unknown profile 'b'"):
        edit.set_default(target(path), "b")


def test_secret_references_are_stored_never_values(rich):
    t = target(rich)
    edit.set_value(t, "corp", "env.GITHUB_TOKEN", None, secret=("command", ["gh", "auth", "token"]))
    edit.set_value(t, "corp", "env.API_KEY", None, secret=("file", "k.txt"), cwd="/srv")
    r = edit.set_value(t, "corp", "proxy_auth.password", None, secret=("env", "OTHER"))
    assert r.warnings == []
    env = loaded(rich)["corp"]["env"]
    assert env["GITHUB_TOKEN"] == {"command": ["gh", "auth", "token"]}
    assert env["API_KEY"] == {"file": "/srv/k.txt"}
    assert 'password = { env = "OTHER" }\n' in rich.read_text()
    with pytest.raises(KaiRunError, match="cannot hold a secret reference"):
        edit.set_value(t, "corp", "https_proxy", None, secret=("env", "X"))


def test_plaintext_secret_warnings(rich):
    t = target(rich)
    r = edit.set_value(t, "corp", "env.API_TOKEN", "abc123")
    assert len(r.warnings) == 1 and "env.API_TOKEN holds a secret in plain text" in r.warnings[0]
    assert "--secret-env" in r.warnings[0]
    r = edit.set_value(t, "corp", "proxy_auth.password", "hunter2")
    assert "proxy_auth.password holds a secret in plain text" in r.warnings[0]
    r = edit.set_value(t, "corp", "https_proxy", "http://me:hunter2@p.example:1")
    assert "carries credentials in plain text" in r.warnings[0]
    assert edit.set_value(t, "corp", "env.API_TOKEN", "${API_TOKEN}").warnings == []
    assert edit.set_value(t, "corp", "env.PLAIN", "hello").warnings == []


def test_from_env(tmp_path):
    environ = {
        "HTTPS_PROXY": "http://upper.example:1",
        "https_proxy": "http://lower.example:2",
        "HTTP_PROXY": "proxy.example:3128",
        "NO_PROXY": "localhost, .corp.example,,10.0.0.0/8",
        "NODE_EXTRA_CA_CERTS": "/certs/corp.pem",
        "SSL_CERT_FILE": "/certs/bundle.pem",
        "REQUESTS_CA_BUNDLE": "/certs/bundle.pem",
        "CURL_CA_BUNDLE": os.path.join(os.environ["XDG_CACHE_HOME"], "kai-run", "ca", "x.pem"),
    }
    warnings: list[str] = []
    body = edit.profile_from_env(environ, warnings)
    assert body == {
        "http_proxy": "http://proxy.example:3128",
        "https_proxy": "http://lower.example:2",
        "no_proxy": ["localhost", ".corp.example", "10.0.0.0/8"],
        "ca_bundle": ["/certs/corp.pem", "/certs/bundle.pem"],
        "ca_mode": "replace",
    }
    assert warnings == []
    assert edit.profile_from_env({"NODE_EXTRA_CA_CERTS": "/c.pem"}, warnings) == {
        "ca_bundle": ["/c.pem"]
    }
    assert edit.profile_from_env({}, warnings) == {} and "no proxy or CA" in warnings[0]


def test_add_from_env_explicit_options_win(tmp_path):
    path = tmp_path / "p.toml"
    env = {"HTTPS_PROXY": "http://env.example:1", "NO_PROXY": "a.example"}
    edit.add_profile(
        target(path),
        "mine",
        from_env=env,
        https_proxy="http://cli.example:2",
        no_proxy=["b.example"],
    )
    assert loaded(path)["mine"] == {
        "https_proxy": "http://cli.example:2",
        "no_proxy": ["a.example", "b.example"],
    }


# --- files, modes, atomicity ---------------------------------------------------------------------------


def test_new_user_file_is_0600_in_a_0700_directory():
    result = edit.add_profile(edit.edit_target(None, {}), "a", description="x")
    path = Path(result.path)
    assert result.created
    assert path == Path(os.environ["XDG_CONFIG_HOME"]) / "kai-run" / "profiles.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_existing_mode_is_kept_and_site_files_are_world_readable(rich):
    rich.chmod(0o640)
    edit.set_value(target(rich), "corp", "insecure", "true")
    assert stat.S_IMODE(rich.stat().st_mode) == 0o640
    site = edit.init_file(edit.edit_target(None, {}, site=True))
    assert stat.S_IMODE(Path(site.path).stat().st_mode) == 0o644


def test_init_writes_the_example_and_never_overwrites_without_force(tmp_path):
    assert (REPO / "kai_launch" / "data" / "profiles.example.toml").read_bytes() == (
        REPO / "profiles.example.toml"
    ).read_bytes(), "copy profiles.example.toml to kai_launch/data/ (it ships in the wheel)"
    path = tmp_path / "new" / "profiles.toml"
    edit.init_file(target(path))
    assert path.read_text() == (REPO / "profiles.example.toml").read_text()
    path.write_text("# mine\n")
    with pytest.raises(KaiRunError, match="already exists"):
        edit.init_file(target(path))
    assert path.read_text() == "# mine\n"
    edit.init_file(target(path), force=True)
    assert path.read_text() == (REPO / "profiles.example.toml").read_text()


def test_symlinked_file_is_edited_through_the_link(rich, tmp_path):
    link = tmp_path / "link.toml"
    link.symlink_to(rich)
    edit.set_value(target(link), "corp", "insecure", "true")
    assert link.is_symlink()
    assert loaded(rich)["corp"]["insecure"] is True


def test_failed_replace_leaves_the_original_and_no_temp_file(rich, monkeypatch):
    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(KaiRunError, match="cannot write the profile file: No space left"):
        edit.set_value(target(rich), "corp", "insecure", "true")
    assert rich.read_text() == RICH
    assert sorted(os.listdir(rich.parent)) == ["profiles.toml", "profiles.toml.lock"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory modes")
def test_read_only_directory(rich):
    rich.parent.chmod(0o500)
    try:
        with pytest.raises(KaiRunError):
            edit.set_value(target(rich), "corp", "insecure", "true")
    finally:
        rich.parent.chmod(0o700)
    assert rich.read_text() == RICH


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_writer_killed_between_temp_write_and_replace(rich):
    # A real crash: the writer dies after fsyncing the temp file, before os.replace.
    code = (
        "import os, signal, sys\n"
        "from kai_launch import edit\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "edit.set_value(edit.edit_target(sys.argv[1], {}), 'corp', 'insecure', 'true')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(rich)], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == -9
    assert rich.read_text() == RICH
    leftovers = [n for n in os.listdir(rich.parent) if n.endswith(".tmp")]
    assert len(leftovers) == 1
    # The lock died with the writer: the next edit goes through, and check mentions the leftover.
    edit.set_value(target(rich), "corp", "insecure", "true")
    assert loaded(rich)["corp"]["insecure"] is True
    result = edit.check_config(str(rich), {"CORP_PROXY_PASSWORD": "x", "HOME": "/h"})
    assert any("leftover temp file" in w.message for w in result.warnings)


def test_another_editor_holding_the_lock_makes_us_wait(rich):
    import fcntl
    import threading

    lock = open(str(rich) + ".lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = threading.Event()

    def edit_it():
        edit.set_value(target(rich), "corp", "insecure", "true")
        done.set()

    worker = threading.Thread(target=edit_it)
    worker.start()
    assert not done.wait(0.3)
    assert rich.read_text() == RICH
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    assert done.wait(10)
    worker.join()
    assert loaded(rich)["corp"]["insecure"] is True


# --- config check ---------------------------------------------------------------------------------------


def test_check_clean_file_with_a_real_ca(tmp_path):
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "root.pem"))
    path = tmp_path / "p.toml"
    path.write_text(
        '[profiles.a]\nhttps_proxy = "http://p.example:1"\nca_bundle = "root.pem"\n'
        '[profiles.a.env]\nT = { command = ["touch", "' + str(tmp_path / "ran") + '"] }\n'
    )
    path.chmod(0o600)
    result = edit.check_config(str(path), {"PATH": os.environ["PATH"]})
    assert result.ok, result.problems
    assert result.warnings == []
    assert not (tmp_path / "ran").exists()  # secret commands are never run by a check
    assert result.files[0].profiles == 1


def test_check_finds_problems_in_every_profile(tmp_path):
    (tmp_path / "not.pem").write_text("hello")
    path = tmp_path / "p.toml"
    path.write_text(
        '[profiles.a]\nhttps_proxy = "proxy:1"\n'
        '[profiles.b]\nextends = "zz"\n'
        '[profiles.c]\nca_bundle = ["not.pem", "missing.pem"]\n'
        '[profiles.d]\nhttp_proxy = "http://${PROXY_HOST}:1"\n'
        "[profiles.e]\nopenai_proxy = true\n"
        '[profiles.e.env]\nK = { env = "UNSET_SECRET" }\n'
    )
    result = edit.check_config(str(path), {})
    messages = [p.message for p in result.problems]
    assert any("proxy URL 'proxy:1' has no scheme" in m and "profile 'a'" in m for m in messages)
    assert any("extends unknown profile 'zz'" in m for m in messages)
    assert any("holds no PEM certificate" in m for m in messages)
    assert any("missing.pem does not exist" in m for m in messages)
    assert any("openai_proxy = true but the profile has no https_proxy" in m for m in messages)
    assert len(messages) == 5
    warnings = [w.message for w in result.warnings]
    assert any("${PROXY_HOST}, not set here" in w for w in warnings)
    assert any("secret variable UNSET_SECRET is not set here" in w for w in warnings)
    # With the variable set, d is checked, and passes.
    result = edit.check_config(str(path), {"PROXY_HOST": "p.example"})
    assert len(result.problems) == 5


def test_check_reports_an_invalid_file_and_goes_on(tmp_path):
    site = Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run" / "profiles.toml"
    site.parent.mkdir(parents=True)
    site.write_text("[profiles.a]\nhtps_proxy = 1\n")
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "kai-run" / "profiles.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[profiles.b]\nhttps_proxy = "http://p.example:1"\n')
    result = edit.check_config(None, {})
    assert [p.message for p in result.problems] == [
        f"unknown key 'htps_proxy' ({site}, line 2, profile 'a', key 'htps_proxy')"
    ]
    assert result.problems[0].hint == "did you mean 'https_proxy'?"
    assert [(f.scope, f.valid, f.profiles) for f in result.files] == [
        ("site", False, 0),
        ("user", True, 1),
    ]


def test_check_warns_about_plaintext_secrets_others_can_read(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(
        '[profiles.a]\nhttps_proxy = "http://u:pw@p.example:1"\n'
        '[profiles.a.env]\nAPI_TOKEN = "abc"\nOK = "fine"\n'
    )
    path.chmod(0o644)
    result = edit.check_config(str(path), {})
    assert result.ok
    [warning] = [w for w in result.warnings if "plaintext" in w.message]
    assert "a.https_proxy, a.env.API_TOKEN" in warning.message
    assert "readable by group or others (mode 0644)" in warning.message
    assert warning.hint and warning.hint.startswith(f"chmod 600 {path}")
    path.chmod(0o600)
    assert not [w for w in edit.check_config(str(path), {}).warnings if "plaintext" in w.message]


def test_config_paths(tmp_path):
    infos = edit.config_paths(None, {})
    assert [(i.scope, i.exists) for i in infos] == [("site", False), ("user", False)]
    named = edit.config_paths(None, {"KAI_RUN_CONFIG": str(tmp_path / "x.toml")})
    assert [(i.why, i.path) for i in named] == [("KAI_RUN_CONFIG", str(tmp_path / "x.toml"))]


def test_edit_target_precedence(tmp_path):
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "kai-run" / "profiles.toml"
    assert edit.edit_target(None, {}).path == str(user)
    assert edit.edit_target(None, {"KAI_RUN_CONFIG": "/x.toml"}).path == "/x.toml"
    assert edit.edit_target("/y.toml", {"KAI_RUN_CONFIG": "/x.toml"}).path == "/y.toml"
    assert edit.edit_target(None, {}, site=True).scope == "site"
    with pytest.raises(KaiRunError, match="--site and --config"):
        edit.edit_target("/y.toml", {}, site=True)


# --- speed ------------------------------------------------------------------------------------------------


def test_set_on_a_200_profile_file_is_fast(tmp_path):
    import importlib.util
    import time

    spec = importlib.util.spec_from_file_location("bench_edit", REPO / "bench" / "edit.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "big.toml"
    path.write_text(bench.generate(200))
    start = time.perf_counter()
    edit.set_value(target(path), "p150", "https_proxy", "http://new.example:1")
    assert time.perf_counter() - start < 2.0
    assert loaded(path)["p150"]["https_proxy"] == "http://new.example:1"


def _bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_edit", REPO / "bench" / "edit.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_validation_covers_what_an_edit_can_affect(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text(_bench().generate(30))  # p11..p19 extend p10, which extends base
    before = path.read_text()
    with pytest.raises(KaiRunError, match="extends cycle: p10 -> p15 -> p10"):
        edit.set_value(target(path), "p10", "extends", "p15")
    with pytest.raises(KaiRunError, match="extends unknown profile 'nowhere'"):
        edit.set_value(target(path), "p10", "extends", "nowhere")
    with pytest.raises(KaiRunError, match="has no scheme"):
        edit.set_value(target(path), "p15", "https_proxy", "proxy:1")
    with pytest.raises(KaiRunError, match="is extended by 'p11'"):
        edit.remove_profile(target(path), "p10")
    assert path.read_text() == before
    # A problem elsewhere that was already there does not stop an edit, nor is it fixed by one.
    path.write_text(before + '\n[profiles.broken]\nextends = "nowhere"\nhtps_proxy = 1\n')
    edit.set_value(target(path), "p20", "https_proxy", "http://n.example:1")
    edit.unset_value(target(path), "p21", "check_urls")
    assert loaded(path)["p20"]["https_proxy"] == "http://n.example:1"
    assert "check_urls" not in loaded(path)["p21"]


def test_an_edit_of_the_site_file_that_breaks_a_user_profile_is_refused():
    site = Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run" / "profiles.toml"
    site.parent.mkdir(parents=True)
    text = (
        '[profiles.corp]\nhttps_proxy = "http://p.example:1"\n\n[profiles.lab]\nextends = "corp"\n'
    )
    site.write_text(text)
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "kai-run" / "profiles.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[profiles.mine]\nextends = "lab"\n')
    where = edit.edit_target(None, {}, site=True)
    with pytest.raises(KaiRunError, match="profile 'mine' extends unknown profile 'lab'"):
        edit.rename_profile(where, "lab", "lab2")
    with pytest.raises(
        KaiRunError, match="'corp' extends unknown profile 'mine'"
    ):  # site sees no user
        edit.set_value(where, "corp", "extends", "mine")
    assert site.read_text() == text


# --- random edit sequences ---------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["base", "corp", "dotted", "inline", "with space", "mitm", "corp-eu", "other"]),
        st.sampled_from(
            ["description", "insecure", "no_proxy", "env.A", "env.NEW_VAR", "proxy_auth.username",
             "sidecar.ready", "sidecar.env.S", "ca_mode", "check_urls"]
        ),
        st.sampled_from(["set", "set", "unset"]),
        st.sampled_from(["x", "a, b", "true", "127.0.0.1:9", "replace", "https://u.example/v1"]),
    ),
    min_size=1,
    max_size=12,
)  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(OPERATIONS)
def test_random_edit_sequences_keep_the_file_valid_and_say_what_was_asked(tmp_path, ops):
    path = tmp_path / "random.toml"
    path.write_text(RICH, encoding="utf-8")
    for profile, key, action, text in ops:
        before = path.read_text()
        try:
            if action == "set":
                edit.set_value(target(path), profile, key, text)
            else:
                edit.unset_value(target(path), profile, key)
        except KaiRunError:
            assert path.read_text() == before  # refused: nothing written
            continue
        data = tomllib.loads(path.read_text())["profiles"][profile]
        for part in key.split(".")[:-1]:
            data = data.get(part, {})
        assert (key.split(".")[-1] in data) == (action == "set")
        load_config(str(path), {})  # the loader accepts every result
    # Every comment of the original survives any sequence of value edits.
    text = path.read_text()
    for line in RICH.splitlines():
        if line.lstrip().startswith("#"):
            assert line in text


def test_header_scan_matches_the_toml_parsers():
    from kai_launch.tomledit import headers as _headers

    text = (
        'a = """\n[not.a.header]\n"""\n'
        "b = '''\n[nor.this]'''\n"
        '[t]  # comment [x]\nc = [\n  "[x]",\n  [1, 2],\n]\n'
        '[ u . "v.w" ]\nd = \'it is\'\n["q"]\n'
    )
    found = [path for _, path in _headers(text)]
    assert found == [("t",), ("u", "v.w"), ("q",)]
    assert tomllib.loads(text)["u"]["v.w"] == {"d": "it is"}
    assert _headers("[[aot]]\nx = 1\n") is None


def _example_profiles() -> list[str]:
    return list(tomllib.loads((REPO / "profiles.example.toml").read_text())["profiles"])


@pytest.mark.parametrize("profile", _example_profiles())
def test_every_profile_of_the_example_file_edits_cleanly(tmp_path, profile):
    example = (REPO / "profiles.example.toml").read_text()
    path = tmp_path / "cfg" / "profiles.toml"
    path.parent.mkdir()
    path.write_text(example)
    body = tomllib.loads(example)["profiles"][profile]
    for key, value in (("insecure", "true"), ("env.NEW_VAR", "x"), ("sidecar.env.NEW_VAR", "y")):
        if key.split(".")[0] in body and key.count(".") == 0:
            continue
        edit.set_value(target(path), profile, key, value)
        edit.unset_value(target(path), profile, key)
        assert path.read_text() == example, key
    if "description" in body:
        edit.set_value(target(path), profile, "description", "changed")
        edit.set_value(target(path), profile, "description", body["description"])
        assert path.read_text() == example
