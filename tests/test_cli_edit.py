"""The editing commands through the real CLI: in-process (CliRunner) and as subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kai_launch.cli import app

REPO = Path(__file__).resolve().parent.parent

COMMENTED = """\
# Our profiles. Keep the comments!
default_profile = "corp"

[profiles.base]
no_proxy = ["localhost", "127.0.0.1", "::1"]   # loopback

# The office proxy.
[profiles.corp]
extends = "base"
https_proxy = "http://proxy.corp.example:3128"   # HTTPS_PROXY

[profiles.corp.env]   # variables
LOG_DIR = "${HOME}/logs"

# Through the office proxy, with the company CA.
[profiles.corp-tls]
extends = "corp"
"""


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def assert_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("kai-run: error: ") and lines[1].startswith("  hint: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return lines[0]


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "profiles.toml"
    path.write_text(COMMENTED, encoding="utf-8")
    return path


def user_file() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "kai-run" / "profiles.toml"


def site_file() -> Path:
    return Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run" / "profiles.toml"


# --- init ------------------------------------------------------------------------------------------


def test_init_prints_the_path_and_never_overwrites():
    result = invoke("init")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{user_file()}\n"
    assert user_file().read_text() == (REPO / "profiles.example.toml").read_text()
    assert oct(user_file().stat().st_mode & 0o777) == "0o600"
    user_file().write_text("# mine\n")
    assert_error(invoke("init"), "profile file already exists", str(user_file()), "--force")
    assert user_file().read_text() == "# mine\n"
    assert invoke("init", "--force").exit_code == 0
    # The starter file works at once: its demo profile is the default.
    shown = invoke("profiles", "show", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["profile"] == "demo"


def test_init_site():
    result = invoke("init", "--site")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(site_file())
    assert oct(site_file().stat().st_mode & 0o777) == "0o644"


# --- profiles add / set / unset ------------------------------------------------------------------


def test_add_creates_the_user_file_on_first_edit():
    result = invoke(
        "profiles", "add", "corp", "--proxy", "http://proxy.corp.example:3128",
        "--no-proxy", "localhost", "--no-proxy", ".corp.example", "--description", "Office",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"added profile 'corp' ({user_file()})\n"
    assert user_file().read_text() == (
        "[profiles.corp]\n"
        'description = "Office"\n'
        'http_proxy = "http://proxy.corp.example:3128"\n'
        'https_proxy = "http://proxy.corp.example:3128"\n'
        'no_proxy = ["localhost", ".corp.example"]\n'
    )
    assert oct(user_file().parent.stat().st_mode & 0o777) == "0o700"
    assert invoke("profiles", "list", "--json").exit_code == 0


def test_add_from_env():
    env = {
        "https_proxy": "http://proxy.example:3128",
        "HTTP_PROXY": "http://proxy.example:3128",
        "NO_PROXY": "localhost,.corp.example",
        "NODE_EXTRA_CA_CERTS": "/etc/corp/root.pem",
    }
    result = invoke("profiles", "add", "here", "--from-env", env=env)
    assert result.exit_code == 0, result.stderr
    assert tomllib.loads(user_file().read_text())["profiles"]["here"] == {
        "http_proxy": "http://proxy.example:3128",
        "https_proxy": "http://proxy.example:3128",
        "no_proxy": ["localhost", ".corp.example"],
        "ca_bundle": ["/etc/corp/root.pem"],
    }
    # The CA file is not there: said, not refused (it may be created later).
    assert "CA file /etc/corp/root.pem does not exist" in result.stderr


def test_set_then_reverse_set_is_byte_identical(cfg):
    for value in ("http://other.example:8080", "http://proxy.corp.example:3128"):
        result = invoke("-c", str(cfg), "profiles", "set", "corp", "https_proxy", value)
        assert result.exit_code == 0, result.stderr
    assert cfg.read_text() == COMMENTED
    assert invoke("-c", str(cfg), "profiles", "set", "base", "env.NEW", "1").exit_code == 0
    assert '[profiles.base.env]\nNEW = "1"\n\n# The office proxy.' in cfg.read_text()
    assert invoke("profiles", "unset", "base", "env.NEW", "-c", str(cfg)).exit_code == 0
    assert cfg.read_text() == COMMENTED


def test_set_typed_values(cfg):
    c = ("-c", str(cfg))
    for args in (
        ("corp", "insecure", "true"),
        ("corp", "no_proxy", '["a.example", "b.example"]'),
        ("corp", "check_urls", "https://a.example/v1,https://b.example/v1"),
        ("corp", "command", "kai-rpc-server --log-level info"),
        ("corp", "sidecar.ready", "127.0.0.1:8080"),
        ("corp", "sidecar.ready_timeout", "30"),
        ("corp", "proxy_auth.username", "jdoe"),
    ):
        result = invoke(*c, "profiles", "set", *args)
        assert result.exit_code == 0, (args, result.stderr)
    corp = tomllib.loads(cfg.read_text())["profiles"]["corp"]
    assert corp["insecure"] is True
    assert corp["no_proxy"] == ["a.example", "b.example"]
    assert corp["check_urls"] == ["https://a.example/v1", "https://b.example/v1"]
    assert corp["command"] == ["kai-rpc-server", "--log-level", "info"]
    assert corp["sidecar"] == {"ready": "127.0.0.1:8080", "ready_timeout": 30}
    assert corp["proxy_auth"] == {"username": "jdoe"}
    assert cfg.read_text().startswith(COMMENTED.split("[profiles.corp.env]", maxsplit=1)[0][:-1])


def test_secret_references(cfg):
    c = ("-c", str(cfg))
    before = cfg.read_bytes()
    # A password without a user name is refused: the loader would reject the file afterwards.
    r = invoke(*c, "profiles", "set", "corp", "proxy_auth.password", "--secret-env", "CORP_PW")
    assert r.exit_code == 2 and "password but no username" in r.stderr
    assert cfg.read_bytes() == before
    assert invoke(*c, "profiles", "set", "corp", "proxy_auth.username", "jdoe").exit_code == 0
    r = invoke(*c, "profiles", "set", "corp", "proxy_auth.password", "--secret-env", "CORP_PW")
    assert r.exit_code == 0 and r.stderr == ""
    r = invoke(*c, "profiles", "set", "corp", "env.GH_TOKEN", "--secret-command", "gh auth token")
    assert r.exit_code == 0, r.stderr
    r = invoke(
        *c, "profiles", "set", "corp", "env.K", "--secret-command", '["pass", "show", "a b"]'
    )
    assert r.exit_code == 0, r.stderr
    r = invoke(*c, "profiles", "set", "corp", "env.API_KEY", "--secret-file", "/run/secrets/key")
    assert r.exit_code == 0, r.stderr
    text = cfg.read_text()
    assert 'password = { env = "CORP_PW" }' in text
    assert 'GH_TOKEN = { command = ["gh", "auth", "token"] }' in text
    assert 'K = { command = ["pass", "show", "a b"] }' in text
    assert 'API_KEY = { file = "/run/secrets/key" }' in text
    assert_error(
        invoke(*c, "profiles", "set", "corp", "env.X", "v", "--secret-env", "V"),
        "either a value or a secret reference",
    )
    result = invoke(
        *c, "profiles", "set", "corp", "env.X", "--secret-env", "A", "--secret-file", "f"
    )
    assert result.exit_code == 2 and "give one of --secret-env" in result.stderr
    assert_error(
        invoke(*c, "profiles", "set", "corp", "https_proxy", "--secret-env", "V"),
        "cannot hold a secret reference",
    )


def test_plaintext_secret_warning(cfg):
    result = invoke("-c", str(cfg), "profiles", "set", "corp", "env.OPENAI_API_KEY", "sk-test")
    assert result.exit_code == 0
    assert result.stderr.startswith(
        "kai-run: warning: profiles.corp.env.OPENAI_API_KEY holds a secret"
    )
    assert "--secret-env" in result.stderr
    result = invoke(
        "-c", str(cfg), "profiles", "set", "corp", "https_proxy", "http://u:pw@p.example:1"
    )
    assert "carries credentials in plain text" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("set", "corp", "https_proxy", "proxy.corp.example:3128"), ("has no scheme", "line 10", "profile 'corp'", "key 'https_proxy'", "add http://")),
        (("set", "corp", "https_proxy", "http://p.example:0"), ("bad port '0'",)),
        (("set", "corp", "insecure", "yes"), ("expected true or false", "key 'insecure'")),
        (("set", "corp", "sidecar.ready_timeout", "soon"), ("expected a number",)),
        (("set", "corp", "http-proxy", "http://p:1"), ("unknown key 'http-proxy'", "did you mean 'http_proxy'?")),
        (("set", "crop", "insecure", "true"), ("unknown profile 'crop'", "did you mean 'corp'")),
        (("set", "corp", "extends", "corp-tls"), ("extends cycle: corp -> corp-tls -> corp",)),
        (("set", "corp"), ("Missing argument",)),
        (("unset", "corp", "all_proxy"), ("profile 'corp' has no key 'all_proxy'",)),
        (("remove", "base"), ("profile 'base' is extended by 'corp'",)),
        (("remove", "corp"), ("profile 'corp' is extended by 'corp-tls'",)),
        (("rename", "corp", "base"), ("profile 'base' already exists",)),
        (("copy", "nope", "x"), ("unknown profile 'nope'",)),
        (("default", "nope"), ("unknown profile 'nope'", "known profiles: base, corp, corp-tls")),
        (("add", "corp"), ("profile 'corp' already exists",)),
    ],
)  # fmt: skip
def test_bad_edits_exit_2_with_one_line_and_leave_the_file(cfg, args, fragments):
    result = invoke("-c", str(cfg), "profiles", *args)
    if "Missing argument" in fragments:
        assert result.exit_code == 2 and "Missing argument" in result.stderr
    else:
        assert_error(result, *fragments)
    assert cfg.read_text() == COMMENTED


def test_rename_copy_default_remove(cfg):
    c = ("-c", str(cfg))
    assert invoke(*c, "profiles", "rename", "corp", "office").exit_code == 0
    data = tomllib.loads(cfg.read_text())
    assert data["default_profile"] == "office"
    assert data["profiles"]["corp-tls"]["extends"] == "office"
    assert "[profiles.office.env]   # variables\n" in cfg.read_text()
    assert invoke(*c, "profiles", "copy", "office", "office2").exit_code == 0
    assert invoke(*c, "profiles", "default", "office2").exit_code == 0
    assert tomllib.loads(cfg.read_text())["default_profile"] == "office2"
    assert invoke(*c, "profiles", "remove", "corp-tls").exit_code == 0
    assert invoke(*c, "profiles", "remove", "office").exit_code == 0
    text = cfg.read_text()
    assert "# The office proxy." not in text and "[profiles.office]" not in text
    assert text.startswith('# Our profiles. Keep the comments!\ndefault_profile = "office2"\n')


def test_site_flag_edits_the_site_file():
    result = invoke("profiles", "add", "corp", "--site", "--https-proxy", "http://p.example:1")
    assert result.exit_code == 0, result.stderr
    assert site_file().exists() and not user_file().exists()
    # The user refines the organisation's profile in their own file.
    result = invoke("profiles", "set", "corp", "insecure", "true")
    assert_error(result, "not in this file", "--site", "--extends corp")
    assert invoke("profiles", "add", "corp", "--extends", "corp").exit_code == 0
    assert invoke("profiles", "set", "corp", "insecure", "true").exit_code == 0
    assert tomllib.loads(user_file().read_text())["profiles"]["corp"] == {
        "extends": "corp",
        "insecure": True,
    }
    assert (
        invoke("profiles", "set", "corp", "insecure", "false", "--site", "-c", "x").exit_code == 2
    )


# --- config path / check -------------------------------------------------------------------------


def test_config_path():
    result = invoke("config", "path")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"site file        missing  {site_file()}",
        f"user file        missing  {user_file()}",
    ]
    invoke("init")
    data = json.loads(invoke("config", "path", "--json").stdout)
    assert [(d["scope"], d["exists"]) for d in data] == [("site", False), ("user", True)]


def test_config_check_ok_and_problems(cfg):
    cfg.chmod(0o600)
    result = invoke("config", "check", "-c", str(cfg))
    assert result.exit_code == 0, result.stdout
    assert result.stdout.splitlines()[0] == f"file  {cfg} (3 profiles)"
    assert result.stdout.splitlines()[-1] == "0 problems, 0 warnings"
    cfg.write_text(COMMENTED + 'https_proxy = "proxy:3128"\n')
    result = invoke("config", "check", "-c", str(cfg))
    assert result.exit_code == 1
    assert "error: proxy URL 'proxy:3128' has no scheme" in result.stdout
    assert "profile 'corp-tls', key 'https_proxy'" in result.stdout
    data = json.loads(invoke("config", "check", "-c", str(cfg), "--json").stdout)
    assert data["ok"] is False and len(data["problems"]) == 1


def test_config_check_warns_on_a_group_readable_file_with_secrets(cfg):
    cfg.write_text(COMMENTED + '[profiles.corp-tls.env]\nDB_PASSWORD = "hunter2"\n')
    cfg.chmod(0o640)
    result = invoke("config", "check", "-c", str(cfg))
    assert result.exit_code == 0
    assert (
        "warning: " in result.stdout and "readable by group or others (mode 0640)" in result.stdout
    )
    assert f"hint: chmod 600 {cfg}" in result.stdout


def test_config_check_missing_named_file_is_kai_runs_own_error(tmp_path):
    assert_error(invoke("config", "check", "-c", str(tmp_path / "nope.toml")), "not found")


# --- as real subprocesses -----------------------------------------------------------------------


def test_subprocess_edit_and_check(kai_run, cfg):
    r = kai_run("-c", str(cfg), "profiles", "set", "corp", "insecure", "true")
    assert r.returncode == 0, r
    r = kai_run("profiles", "set", "corp", "https_proxy", "ftp://x.example:21", "-c", str(cfg))
    assert r.returncode == 2 and r.stderr.startswith("kai-run: error: proxy URL"), r
    assert len(r.stderr.splitlines()) == 2
    cfg.chmod(0o600)
    assert kai_run("config", "check", "-c", str(cfg)).returncode == 0
    cfg.write_text(cfg.read_text() + '\n[profiles.x]\nextends = "nowhere"\n')
    r = kai_run("config", "check", "-c", str(cfg))
    assert r.returncode == 1 and "extends unknown profile 'nowhere'" in r.stdout, r
    assert kai_run("config", "check", "-c", str(cfg / "missing")).returncode == 2


def test_sixteen_concurrent_sets_on_different_keys_all_land(cfg):
    env = dict(os.environ)
    argv = [sys.executable, "-m", "kai_launch", "-c", str(cfg), "profiles", "set"]
    procs = [
        subprocess.Popen(
            [*argv, "corp" if i % 2 else "base", f"env.VAR_{i}", f"value {i}"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(16)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    data = tomllib.loads(cfg.read_text())["profiles"]
    for i in range(16):
        assert data["corp" if i % 2 else "base"]["env"][f"VAR_{i}"] == f"value {i}"
    text = cfg.read_text()
    for line in COMMENTED.splitlines():
        assert line in text  # nothing of the original lost
    assert sorted(os.listdir(cfg.parent)) == ["profiles.toml", "profiles.toml.lock"]


def test_set_on_a_200_profile_file_in_a_subprocess(kai_run, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_edit", REPO / "bench" / "edit.py")
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "big.toml"
    path.write_text(bench.generate(200))
    kai_run("--version")  # warm the file system cache and bytecode
    start = time.perf_counter()
    r = kai_run("-c", str(path), "profiles", "set", "p100", "https_proxy", "http://n.example:1")
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, r
    # Generous so that a loaded CI machine does not fail; bench/edit.py reports the real figure.
    assert elapsed < 5.0
    assert (
        tomllib.loads(path.read_text())["profiles"]["p100"]["https_proxy"] == "http://n.example:1"
    )


# --- clear answers to common mistakes --------------------------------------------------------------


def test_mistakes_get_a_real_hint(cfg):
    c = ("-c", str(cfg))
    for value in ("maybe", "1"):
        line = assert_error(invoke(*c, "profiles", "set", "corp", "insecure", value))
        assert "expected true or false" in line
    result = invoke(*c, "profiles", "set", "corp", "insecure", "maybe")
    assert "hint: insecure is true or false" in result.stderr
    assert "--debug" not in result.stderr
    assert_error(
        invoke(*c, "profiles", "set", "corp", "extends", "corp"),
        "extends cycle: profile 'corp' extends itself",
    )
    result = invoke(*c, "profiles", "set", "corp", "env.X", "--secret-env", "bad var")
    assert_error(result, "invalid variable name 'bad var' given to --secret-env")
    assert "env.X.env" not in result.stderr
    for args in (("add", "a b"), ("rename", "corp", "bad name!"), ("copy", "corp", "x/y")):
        assert_error(invoke(*c, "profiles", *args), "profile name", "KAI_RUN_PROFILE")
    assert cfg.read_text() == COMMENTED


def test_dotted_profiles_never_report_a_false_success(tmp_path):
    path = tmp_path / "p.toml"
    text = '[profiles]\na.https_proxy="http://p.example:1"\na.env.X="1"\n'
    path.write_text(text, encoding="utf-8")
    c = ("-c", str(path))
    assert_error(
        invoke(*c, "profiles", "unset", "a", "env.NEW"), "profile 'a' has no key 'env.NEW'"
    )
    for value in ("m", "n"):
        result = invoke(*c, "profiles", "set", "a", "env.NEW", value)
        assert result.exit_code == 0, result.stderr
    assert path.read_text() == text + 'a.env.NEW="n"\n'
    result = invoke(*c, "profiles", "unset", "a", "env.NEW")
    assert result.exit_code == 0 and result.stdout.startswith("unset profiles.a.env.NEW")
    assert path.read_text() == text
    result = invoke(*c, "profiles", "unset", "a", "env.X")
    assert result.exit_code == 0, result.stderr
    assert path.read_text() == '[profiles]\na.https_proxy="http://p.example:1"\n'


def test_config_check_sidecar_written_ca_is_a_warning_and_warnings_come_once(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        "[profiles.audit]\n"
        'https_proxy = "http://127.0.0.1:8080"\n'
        'all_proxy = "socks4://127.0.0.1:1080"\n'
        'ca_bundle = "mitm/mitmproxy-ca-cert.pem"\n'
        "[profiles.audit.sidecar]\n"
        'command = ["mitmdump"]\n'
        'ready = "127.0.0.1:8080"\n'
        'ready_file = "mitm/mitmproxy-ca-cert.pem"\n'
    )
    result = CliRunner().invoke(app, ["config", "check", "-c", str(cfg), "--json"])
    assert result.exit_code == 0, result.stdout
    data = json.loads(result.stdout)
    messages = [w["message"] for w in data["warnings"]]
    assert any("the sidecar writes it on its first start" in m for m in messages)
    assert sum("socks4" in m for m in messages) == 1, messages


def test_init_force_keeps_a_backup(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text("[profiles.mine]\n")
    result = CliRunner().invoke(app, ["init", "-c", str(cfg), "--force"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "p.toml.bak").read_text() == "[profiles.mine]\n"
    assert cfg.read_text() == (REPO / "profiles.example.toml").read_text()
