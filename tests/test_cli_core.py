"""The CLI of issue 2: env, profiles list/show, where files come from, extends, ${VAR}, help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kai_launch import paths
from kai_launch.cli import app

REPO = Path(__file__).resolve().parent.parent


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


SECRETIVE = """
    [profiles.corp]
    description = "Corporate egress"
    https_proxy = "http://proxy.corp.example:3128"
    http_proxy = "http://proxy.corp.example:3128"

    [profiles.corp.proxy_auth]
    username = "jdoe"
    password = { env = "CORP_PROXY_PASSWORD" }

    [profiles.corp.env]
    OAUTH_CLIENT_ID = "kai-ide"
    OAUTH_CLIENT_SECRET = { env = "KAI_OAUTH_SECRET" }
    API_KEY = "plain-but-secret-looking"
"""


def test_env_sh_is_evaluable_and_only_has_changes(write_profiles):
    path = write_profiles(SECRETIVE)
    result = invoke(
        "-c", str(path), "env", "-p", "corp",
        env={"CORP_PROXY_PASSWORD": "pw'$`\\", "KAI_OAUTH_SECRET": "s", "UNRELATED": "x"},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "UNRELATED" not in result.stdout
    assert "PATH" not in result.stdout
    script = (
        result.stdout
        + 'printf "%s|%s|%s" "$HTTPS_PROXY" "$OAUTH_CLIENT_SECRET" "${ALL_PROXY:-empty}"'
    )
    out = subprocess.run(
        ["bash", "-c", 'eval "$(cat)"'], input=script, capture_output=True, text=True, check=True,
        env={"PATH": os.environ["PATH"], "ALL_PROXY": "stale"},
    ).stdout  # fmt: skip
    assert out == "http://jdoe:pw%27%24%60%5C@proxy.corp.example:3128|s|empty"


@pytest.mark.parametrize("fmt", ["sh", "fish", "powershell", "dotenv", "json", "github"])
def test_env_formats(write_profiles, fmt):
    path = write_profiles('[profiles.p]\nhttps_proxy = "http://p.example:1"\nenv = { A = "x" }\n')
    result = invoke("-c", str(path), "env", "-p", "p", "--format", fmt)
    assert result.exit_code == 0, result.stderr
    assert "http://p.example:1" in result.stdout
    if fmt == "json":
        data = json.loads(result.stdout)
        assert data["set"]["HTTPS_PROXY"] == data["set"]["https_proxy"] == "http://p.example:1"
        assert data["set"]["HTTP_PROXY"] == data["set"]["http_proxy"] == ""
        assert "OPENAI_PROXY" in data["unset"]


def test_env_unknown_format(write_profiles):
    path = write_profiles("[profiles.p]\n")
    result = invoke("-c", str(path), "env", "-p", "p", "--format", "xml")
    assert result.exit_code == 2
    assert "unknown format 'xml'" in result.stderr


def test_global_options_before_or_after_subcommand(write_profiles):
    path = write_profiles('[profiles.a]\nenv = { W = "a" }\n[profiles.b]\nenv = { W = "b" }\n')
    before = invoke("-c", str(path), "-p", "b", "env")
    after = invoke("env", "-c", str(path), "-p", "b")
    assert before.exit_code == after.exit_code == 0
    assert before.stdout == after.stdout
    assert "export W='b'" in before.stdout
    # The subcommand's own option wins over the global one.
    assert "export W='a'" in invoke("-p", "b", "env", "-p", "a", "-c", str(path)).stdout


def test_show_masks_secrets_and_names_origins(write_profiles):
    path = write_profiles(SECRETIVE)
    env = {"CORP_PROXY_PASSWORD": "hunter2", "KAI_OAUTH_SECRET": "topsecret"}
    result = invoke("-c", str(path), "profiles", "show", "corp", "--json", env=env)
    assert result.exit_code == 0, result.stderr
    assert "hunter2" not in result.stdout and "topsecret" not in result.stdout
    assert "plain-but-secret-looking" not in result.stdout
    data = json.loads(result.stdout)
    variables = data["variables"]
    assert variables["HTTPS_PROXY"]["value"] == "http://jdoe:***@proxy.corp.example:3128"
    assert variables["OAUTH_CLIENT_SECRET"]["value"] == "***"
    assert "env: KAI_OAUTH_SECRET" in variables["OAUTH_CLIENT_SECRET"]["origin"]
    assert variables["API_KEY"]["value"] == "***"
    assert variables["OAUTH_CLIENT_ID"] == {
        "value": "kai-ide",
        "origin": f"profile 'corp' ({path})",
    }
    assert data["settings"]["proxy_auth.password"]["value"] == "env: CORP_PROXY_PASSWORD"
    assert variables["ALL_PROXY"]["value"] == ""
    assert "no all_proxy" in variables["ALL_PROXY"]["origin"]
    assert "OPENAI_PROXY" in data["unset"]
    # Showing does not need the secrets to be resolvable...
    assert invoke("-c", str(path), "profiles", "show", "corp").exit_code == 0
    # ...but --reveal resolves and shows them.
    revealed = invoke("-c", str(path), "profiles", "show", "corp", "--json", "--reveal", env=env)
    data = json.loads(revealed.stdout)
    assert data["variables"]["OAUTH_CLIENT_SECRET"]["value"] == "topsecret"
    assert (
        data["variables"]["HTTPS_PROXY"]["value"] == "http://jdoe:hunter2@proxy.corp.example:3128"
    )


def test_show_text_output_masks_too(write_profiles):
    path = write_profiles(SECRETIVE)
    env = {"CORP_PROXY_PASSWORD": "hunter2", "KAI_OAUTH_SECRET": "topsecret"}
    result = invoke("-c", str(path), "profiles", "show", "corp", env=env)
    assert result.exit_code == 0
    assert "hunter2" not in result.stdout and "topsecret" not in result.stdout
    assert "jdoe:***@proxy.corp.example:3128" in result.stdout
    assert "OAUTH_CLIENT_SECRET" in result.stdout


def test_show_set_origin(write_profiles):
    path = write_profiles("[profiles.p]\n")
    result = invoke("-c", str(path), "profiles", "show", "p", "--json", "--set", "X=1")
    assert json.loads(result.stdout)["variables"]["X"] == {"value": "1", "origin": "--set"}


def test_list_redacts_and_names_files(write_profiles):
    path = write_profiles(
        '[profiles.a]\ndescription = "A"\nhttps_proxy = "http://u:pw@p.example:8080"\n[profiles.b]\n'
    )
    result = invoke("-c", str(path), "profiles", "list", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert rows[0]["name"] == "a" and rows[0]["https_proxy"] == "http://u:***@p.example:8080"
    assert rows[0]["file"] == str(path)
    assert "pw@" not in result.stdout
    text = invoke("-c", str(path), "profiles", "list").stdout
    assert "u:***@p.example:8080" in text and "pw@" not in text


def test_site_and_user_files(tmp_path, kai_run):
    site = Path(paths.site_config_file())
    user = Path(paths.user_config_file())
    site.parent.mkdir(parents=True)
    user.parent.mkdir(parents=True)
    site.write_text(
        'default_profile = "corp"\n'
        '[profiles.corp]\nhttps_proxy = "http://site-proxy.example:3128"\nno_proxy = ["site.example"]\n'
        '[profiles.org-only]\nenv = { FROM = "site" }\n'
    )
    user.write_text(
        # The user's corp extends the organisation's corp it shadows.
        '[profiles.corp]\nextends = "corp"\nno_proxy = ["mine.example"]\nenv = { FROM = "user" }\n'
        '[profiles.home]\nextends = "org-only"\n'
    )
    code = "import os; print(os.environ['HTTPS_PROXY'], os.environ['NO_PROXY'], os.environ['FROM'])"
    run = kai_run("--", sys.executable, "-c", code)
    assert run.returncode == 0, run
    assert run.stdout.split() == [
        "http://site-proxy.example:3128",
        "site.example,mine.example,localhost,127.0.0.1,::1",
        "user",
    ]
    run = kai_run(
        "-p", "home", "--", sys.executable, "-c", code.replace("HTTPS_PROXY", "KAI_RUN_PROFILE")
    )
    assert run.stdout.split()[0] == "home" and run.stdout.split()[-1] == "site"
    # A file in the current directory is never read implicitly.
    (tmp_path / "profiles.toml").write_text('[profiles.evil]\nhttps_proxy = "http://evil:1"\n')
    run = kai_run("-p", "evil", "--", "true", cwd=tmp_path)
    assert run.returncode == 2 and "unknown profile 'evil'" in run.stderr


def test_user_default_profile_wins_over_site(tmp_path):
    site = Path(paths.site_config_file())
    user = Path(paths.user_config_file())
    site.parent.mkdir(parents=True)
    user.parent.mkdir(parents=True)
    site.write_text(
        'default_profile = "a"\n[profiles.a]\nenv = {W="a"}\n[profiles.b]\nenv = {W="b"}\n'
    )
    user.write_text('default_profile = "b"\n')
    assert "export W='b'" in invoke("env").stdout


def test_extends_merge_rules(write_profiles):
    path = write_profiles(
        """
        [profiles.root]
        description = "root"
        https_proxy = "http://root.example:1"
        no_proxy = ["a.example", "shared.example"]
        unset = ["ONE"]
        env = { KEEP = "root", OVER = "root" }
        command = ["root-cmd"]

        [profiles.child]
        extends = "root"
        https_proxy = "http://child.example:2"
        no_proxy = ["shared.example", "b.example"]
        unset = ["TWO", "ONE"]
        env = { OVER = "child", NEW = "child" }
        """
    )
    data = json.loads(invoke("-c", str(path), "profiles", "show", "child", "--json").stdout)
    v = data["variables"]
    assert v["HTTPS_PROXY"]["value"] == "http://child.example:2"
    assert v["NO_PROXY"]["value"] == "a.example,shared.example,b.example,localhost,127.0.0.1,::1"
    assert (
        v["KEEP"]["value"] == "root"
        and v["OVER"]["value"] == "child"
        and v["NEW"]["value"] == "child"
    )
    assert {"ONE", "TWO"} <= set(data["unset"])
    assert data["settings"]["command"]["value"] == ["root-cmd"]
    assert data["settings"]["description"]["value"] == "root"
    assert "profile 'root'" in v["KEEP"]["origin"] and "profile 'child'" in v["OVER"]["origin"]


def test_variable_expansion(write_profiles):
    path = write_profiles(
        """
        [profiles.p]
        https_proxy = "http://${PROXY_HOST:-fallback.example}:${PROXY_PORT}"
        env = { A = "$${HOME} costs $$5", B = "${EMPTY:-dflt}", C = "${EMPTY}", D = "a$b" }
        """
    )
    out = invoke(
        "-c", str(path), "env", "-p", "p", "-f", "json", env={"PROXY_PORT": "3128", "EMPTY": ""}
    )
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)["set"]
    assert data["HTTPS_PROXY"] == "http://fallback.example:3128"
    assert data["A"] == "${HOME} costs $5"
    assert data["B"] == "dflt"
    assert data["C"] == ""
    assert data["D"] == "a$b"


def test_ca_bundle_path_expansion(write_profiles, tmp_path):
    import trustme

    home = Path(os.environ["HOME"])
    (home / "certs").mkdir()
    trustme.CA().cert_pem.write_to_path(str(home / "certs" / "a.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "b.pem"))
    sub = tmp_path / "conf"
    path = write_profiles(
        '[profiles.p]\nca_bundle = ["~/certs/a.pem", "${CA_DIR}/b.pem", "../b.pem"]\n',
        directory=sub,
    )
    out = invoke("-c", str(path), "env", "-p", "p", "-f", "json", env={"CA_DIR": str(tmp_path)})
    assert out.exit_code == 0, out.stderr
    own = Path(json.loads(out.stdout)["set"]["NODE_EXTRA_CA_CERTS"]).read_text()
    # ../b.pem and ${CA_DIR}/b.pem are the same file: its certificate is added once.
    assert own.count("BEGIN CERTIFICATE") == 2


def test_version_and_help_everywhere():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("kai-run ")
    top = invoke("--help")
    assert top.exit_code == 0 and "Examples" in top.stdout and "--profile" in top.stdout
    for cmd in (["env"], ["profiles", "list"], ["profiles", "show"]):
        result = invoke(*cmd, "--help")
        assert result.exit_code == 0, cmd
        assert "Example" in result.stdout, cmd


def test_python_dash_m_and_console_script(write_profiles):
    path = write_profiles("[profiles.p]\n")
    out = subprocess.run(
        [sys.executable, "-m", "kai_launch", "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("kai-run 0.")
    script = Path(sys.executable).parent / "kai-run"
    run = subprocess.run(
        [str(script), "-c", str(path), "-p", "p", "--", "true"], capture_output=True
    )
    assert run.returncode == 0, run.stderr


def test_example_file_runs_the_demo(kai_run):
    run = kai_run("-c", str(REPO / "profiles.example.toml"))
    assert run.returncode == 0, run
    assert "kai-run profile: demo" in run.stdout
    assert "https://internal-llm.example.com/v1 -> direct" in run.stdout
    assert "https://api.openai.com/v1/models -> http://proxy.example.com:3128" in run.stdout


def test_proxy_auth_literal_is_not_expanded(write_profiles):
    path = write_profiles(
        '[profiles.p]\nhttps_proxy = "http://p.example:1"\n'
        'proxy_auth = { username = "jdoe", password = "pa$$w${rd" }\n'
    )
    out = invoke("-c", str(path), "env", "-p", "p", "-f", "json")
    assert out.exit_code == 0, out.stderr
    assert (
        json.loads(out.stdout)["set"]["HTTPS_PROXY"] == "http://jdoe:pa%24%24w%24%7Brd@p.example:1"
    )


def test_nested_default_expansion(write_profiles):
    path = write_profiles(
        '[profiles.p]\nenv = { N = "${UNSET_A:-${HOME}/x}", M = "${UNSET_A:-a}}" }\n'
    )
    data = json.loads(invoke("-c", str(path), "env", "-p", "p", "-f", "json").stdout)["set"]
    assert data["N"] == os.environ["HOME"] + "/x"
    assert data["M"] == "a}"


def test_bracketed_ipv6_no_proxy_entries(write_profiles):
    path = write_profiles('[profiles.p]\nno_proxy = ["[fe80::1]:8080", "[fd00::2]"]\n')
    data = json.loads(invoke("-c", str(path), "env", "-p", "p", "-f", "json").stdout)["set"]
    assert data["NO_PROXY"].split(",")[:2] == ["fe80::1", "fd00::2"]


def test_show_masks_sidecar_secrets(write_profiles):
    path = write_profiles(
        """
        [profiles.a]
        [profiles.a.sidecar]
        command = ["mitmdump", "--mode", "upstream:http://u:Hunter2@p.example:3128"]
        ready = "127.0.0.1:8080"
        env = { UPSTREAM_PASSWORD = "Hunter2", TOKEN_REF = { env = "X" }, PLAIN = "ok" }
        """
    )
    for args in ([], ["--json"]):
        result = invoke("-c", str(path), "profiles", "show", "a", *args)
        assert result.exit_code == 0, result.stderr
        assert "Hunter2" not in result.stdout
        assert "u:***@p.example:3128" in result.stdout
    revealed = invoke("-c", str(path), "profiles", "show", "a", "--json", "--reveal")
    assert "Hunter2" in revealed.stdout


def test_relative_paths_follow_a_symlinked_file(tmp_path, write_profiles):
    import trustme

    real = tmp_path / "dotfiles"
    real.mkdir()
    trustme.CA().cert_pem.write_to_path(str(real / "corp.pem"))
    target = write_profiles('[profiles.p]\nca_bundle = "corp.pem"\n', directory=real)
    user = Path(paths.user_config_file())
    user.parent.mkdir(parents=True)
    user.symlink_to(target)
    out = invoke("env", "-p", "p", "-f", "json")
    assert out.exit_code == 0, out.stderr
    assert "NODE_EXTRA_CA_CERTS" in json.loads(out.stdout)["set"]


def test_profiles_set_fast_path_leaves_odd_lines_to_typer(write_profiles, kai_run):
    path = write_profiles("[profiles.a]\n")
    before = path.read_bytes()
    run = kai_run("-c", str(path), "profiles", "set", "a", "env.API_TOKEN", "--secret-env")
    assert run.returncode == 2
    assert "requires an argument" in run.stderr
    assert path.read_bytes() == before
    run = kai_run("-c", str(path), "profiles", "set", "a", "description", "hello")
    assert run.returncode == 0, run
    assert 'description = "hello"' in path.read_text()


def test_sidecar_ca_not_written_yet_says_to_start_the_sidecar(write_profiles):
    path = write_profiles(
        """
        [profiles.audit]
        https_proxy = "http://127.0.0.1:8080"
        ca_bundle = "mitm/mitmproxy-ca-cert.pem"
        [profiles.audit.sidecar]
        command = ["mitmdump"]
        ready = "127.0.0.1:8080"
        ready_file = "mitm/mitmproxy-ca-cert.pem"
        """
    )
    result = invoke("-c", str(path), "env", "-p", "audit")
    assert result.exit_code == 2
    assert "does not exist yet: the sidecar writes it on its first start" in result.stderr
    assert "kai-run sidecar start -p audit" in result.stderr


def test_env_of_a_sidecar_profile_says_it_needs_the_sidecar(write_profiles, tmp_path):
    import trustme

    (tmp_path / "mitm").mkdir()
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "mitm" / "mitmproxy-ca-cert.pem"))
    path = write_profiles(
        """
        [profiles.audit]
        https_proxy = "http://127.0.0.1:8080"
        ca_bundle = "mitm/mitmproxy-ca-cert.pem"
        [profiles.audit.sidecar]
        command = ["mitmdump"]
        ready = "127.0.0.1:8080"
        """
    )
    result = invoke("-c", str(path), "env", "-p", "audit")
    assert result.exit_code == 0, result.stderr
    assert "kai-run sidecar start -p audit" in result.stderr
    assert "export HTTPS_PROXY='http://127.0.0.1:8080'" in result.stdout
