"""Every error of issue 2: exit 2, one line naming file/profile/key (and line), then a hint."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from kai_launch import secrets
from kai_launch.cli import app


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def assert_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("kai-run: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 2 and lines[1].startswith("  hint: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_invalid_toml_names_line_and_column(write_profiles):
    path = write_profiles('[profiles.a]\nhttp_proxy = "http://x:1"\nno_proxy = [oops]\n')
    line = assert_error(
        invoke("-c", str(path), "env", "-p", "a"), "invalid TOML", str(path), "line 3"
    )
    assert "column" in line


def test_unknown_key_did_you_mean_with_line(write_profiles):
    path = write_profiles('[profiles.corp]\ndescription = "x"\nhtps_proxy = "http://p:1"\n')
    result = invoke("-c", str(path), "env", "-p", "corp")
    assert_error(result, "unknown key 'htps_proxy'", str(path), "line 3", "profile 'corp'")
    assert "did you mean 'https_proxy'?" in result.stderr


def test_unknown_key_in_sub_table(write_profiles):
    path = write_profiles(
        '[profiles.corp]\n\n[profiles.corp.proxy_auth]\nusername = "a"\npasword = "b"\n'
    )
    result = invoke("-c", str(path), "env", "-p", "corp")
    assert_error(result, "unknown key 'pasword'", "line 5", "key 'proxy_auth.pasword'")
    assert "did you mean 'password'?" in result.stderr


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("insecure = 'yes'", "expected true or false, got a string"),
        ("no_proxy = 5", "expected a list of strings, got an integer"),
        ("command = 'kai-rpc-server'", "expected a list of strings, got a string"),
        ("ca_mode = 'apend'", "expected one of append, replace"),
        ("env = { A = [1] }", "expected a string or a secret reference"),
        ("env = { A = { vault = 'x' } }", "unknown secret reference 'vault'"),
        ("check_urls = ['ftp://x']", "not an http:// or https:// URL"),
    ],
)
def test_wrong_types(write_profiles, body, fragment):
    path = write_profiles(f"[profiles.p]\n{body}\n")
    assert_error(
        invoke("-c", str(path), "env", "-p", "p"), fragment, str(path), "profile 'p'", "line 2"
    )


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("proxy.corp.example:3128", "has no scheme"),
        ("ftp://proxy:21", "unsupported scheme 'ftp'"),
        ("http://:3128", "has no host"),
        ("http://proxy:99999", "bad port '99999'"),
        ("http://proxy:abc", "bad port 'abc'"),
        ("http://proxy:", "empty port"),
    ],
)
def test_bad_proxy_urls(write_profiles, url, fragment):
    path = write_profiles(f'[profiles.p]\nhttps_proxy = "{url}"\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(result, fragment, str(path), "profile 'p'", "key 'https_proxy'")


def test_bad_proxy_url_never_shows_the_password(write_profiles):
    path = write_profiles('[profiles.p]\nhttps_proxy = "ftp://jdoe:hunter2@proxy:21"\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(result, "jdoe:***@proxy:21")
    assert "hunter2" not in result.stderr


def test_missing_ca_file(write_profiles, tmp_path):
    path = write_profiles('[profiles.p]\nca_bundle = "nope.pem"\n')
    assert_error(
        invoke("-c", str(path), "env", "-p", "p"),
        f"CA file {tmp_path / 'nope.pem'} does not exist",
        "profile 'p'",
        "key 'ca_bundle'",
    )


def test_non_pem_ca_file(write_profiles, tmp_path):
    (tmp_path / "ca.pem").write_text("this is not a certificate\n")
    path = write_profiles('[profiles.p]\nca_bundle = ["ca.pem"]\n')
    assert_error(
        invoke("-c", str(path), "env", "-p", "p"), "holds no PEM certificate", "key 'ca_bundle'"
    )


def test_der_ca_file_hint(write_profiles, tmp_path):
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    cert = x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes())
    (tmp_path / "ca.der").write_bytes(cert.public_bytes(Encoding.DER))
    path = write_profiles('[profiles.p]\nca_bundle = "ca.der"\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(result, "holds no PEM certificate")
    assert "openssl x509 -inform der" in result.stderr


def test_extends_cycle(write_profiles):
    path = write_profiles(
        '[profiles.a]\nextends = "b"\n[profiles.b]\nextends = "c"\n[profiles.c]\nextends = "a"\n'
    )
    assert_error(
        invoke("-c", str(path), "env", "-p", "a"),
        "extends cycle: a -> b -> c -> a",
        "key 'extends'",
    )


def test_extends_unknown_parent(write_profiles):
    path = write_profiles('[profiles.a]\nextends = "nobody"\n[profiles.b]\n')
    result = invoke("-c", str(path), "env", "-p", "a")
    assert_error(result, "profile 'a' extends unknown profile 'nobody'", str(path), "key 'extends'")
    assert "known profiles: a, b" in result.stderr


def test_unknown_profile_lists_known(write_profiles):
    path = write_profiles("[profiles.corp]\n[profiles.home]\n")
    result = invoke("-c", str(path), "env", "-p", "crop")
    assert_error(result, "unknown profile 'crop'", str(path))
    assert "did you mean 'corp'" in result.stderr and "known profiles: corp, home" in result.stderr


def test_secret_env_unset(write_profiles):
    path = write_profiles('[profiles.p]\nenv = { TOKEN = { env = "NOT_SET_ANYWHERE" } }\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(
        result, "secret variable NOT_SET_ANYWHERE is not set", "profile 'p'", "key 'env.TOKEN'"
    )


def test_secret_file_missing(write_profiles, tmp_path):
    path = write_profiles('[profiles.p]\nenv = { TOKEN = { file = "~/.config/kai/none.key" } }\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(result, "none.key does not exist", "profile 'p'", "key 'env.TOKEN'")


def test_secret_file_trailing_newline_stripped(write_profiles, tmp_path):
    (tmp_path / "k").write_text("sk-123\n")
    path = write_profiles('[profiles.p]\nenv = { OPENAI_API_KEY = { file = "k" } }\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert result.exit_code == 0, result.stderr
    assert "export OPENAI_API_KEY='sk-123'" in result.stdout


def test_secret_command_fails(write_profiles):
    cmd = f'["{sys.executable}", "-c", "import sys; sys.stderr.write(\'not logged in\'); sys.exit(3)"]'
    path = write_profiles(f"[profiles.p]\nenv = {{ GITHUB_TOKEN = {{ command = {cmd} }} }}\n")
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(result, "failed with exit status 3", "key 'env.GITHUB_TOKEN'")
    # Its stderr may echo a token: it is not repeated.
    assert "not logged in" not in result.stderr.splitlines()[0].split("`")[-1]


def test_secret_command_output_is_used_and_stripped(write_profiles):
    cmd = f'["{sys.executable}", "-c", "print(\' tok \')"]'
    path = write_profiles(f"[profiles.p]\nenv = {{ GITHUB_TOKEN = {{ command = {cmd} }} }}\n")
    result = invoke("-c", str(path), "env", "-p", "p")
    assert result.exit_code == 0, result.stderr
    assert "export GITHUB_TOKEN='tok'" in result.stdout


def test_secret_command_missing(write_profiles):
    path = write_profiles('[profiles.p]\nenv = { T = { command = ["no-such-cmd-kai"] } }\n')
    assert_error(
        invoke("-c", str(path), "env", "-p", "p"), "secret command not found: no-such-cmd-kai"
    )


def test_secret_command_times_out(write_profiles, monkeypatch):
    monkeypatch.setattr(secrets, "COMMAND_TIMEOUT", 0.5)
    cmd = f'["{sys.executable}", "-c", "import time; time.sleep(30)"]'
    path = write_profiles(f"[profiles.p]\nenv = {{ T = {{ command = {cmd} }} }}\n")
    assert_error(
        invoke("-c", str(path), "env", "-p", "p"), "did not finish within 0.5 s", "key 'env.T'"
    )


def test_invalid_variable_names(write_profiles):
    path = write_profiles('[profiles.p]\nenv = { "BAD-NAME" = "x" }\n')
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "invalid variable name 'BAD-NAME'")
    path = write_profiles('[profiles.p]\nunset = ["1ABC"]\n', name="u.toml")
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "invalid variable name '1ABC'")


def test_set_without_equals(write_profiles, kai_run):
    path = write_profiles("[profiles.p]\n")
    assert_error(invoke("-c", str(path), "env", "-p", "p", "--set", "FOO"), "--set needs KEY=VALUE")
    run = kai_run("-c", str(path), "-p", "p", "--set", "FOO", "--", "true")
    assert run.returncode == 2
    assert run.stderr.startswith("kai-run: error: --set needs KEY=VALUE, got 'FOO'")


def test_unset_variable_in_value(write_profiles):
    path = write_profiles('[profiles.p]\nenv = { D = "${NOT_DEFINED_X}/logs" }\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(result, "variable NOT_DEFINED_X is not set", "key 'env.D'")
    assert "${NOT_DEFINED_X:-default}" in result.stderr


def test_missing_config_file(tmp_path):
    assert_error(invoke("-c", str(tmp_path / "none.toml"), "env"), "profile file not found")


def test_errors_in_subprocess_have_no_traceback_but_debug_does(write_profiles, kai_run):
    path = write_profiles('[profiles.p]\nhttps_proxy = "nope"\n')
    run = kai_run("-c", str(path), "-p", "p", "--", "true")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 2
    run = kai_run("-c", str(path), "-p", "p", "--debug", "--", "true")
    assert run.returncode == 2
    assert "Traceback" in run.stderr and "kai-run: error:" in run.stderr


def test_line_found_after_commented_table_header(write_profiles):
    path = write_profiles('[profiles.a]   # the team profile\ndescription = "x"\ninsecure = "no"\n')
    assert_error(invoke("-c", str(path), "env", "-p", "a"), "line 3", "key 'insecure'")
    path = write_profiles(
        "[profiles.a]\n\n[profiles.a.env]  # vars\nA = '1'\nX = [1]\n", name="b.toml"
    )
    assert_error(invoke("-c", str(path), "env", "-p", "a"), "line 5", "key 'env.X'")


def test_self_extends_is_a_cycle(write_profiles):
    path = write_profiles('[profiles.a]\nextends = "a"\n')
    assert_error(invoke("-c", str(path), "env", "-p", "a"), "extends cycle", "extends itself")


def test_secret_command_non_utf8_output(write_profiles):
    cmd = f'["{sys.executable}", "-c", "import sys; sys.stdout.buffer.write(bytes([97, 255, 98]))"]'
    path = write_profiles(f"[profiles.p]\nenv = {{ T = {{ command = {cmd} }} }}\n")
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "not UTF-8")


def test_secret_command_timeout_kills_what_it_started(write_profiles, monkeypatch, tmp_path):
    import os
    import time

    monkeypatch.setattr(secrets, "COMMAND_TIMEOUT", 0.5)
    marker = tmp_path / "grandchild.pid"
    script = tmp_path / "slow.py"
    script.write_text(
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '30'])\n"
        f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(30)\n"
    )
    path = write_profiles(
        f'[profiles.p]\nenv = {{ T = {{ command = ["{sys.executable}", "{script}"] }} }}\n'
    )
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "did not finish within 0.5 s")
    pid = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":  # killed, waiting for init to reap it
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the secret command's child outlived the timeout")
    assert os.path.exists(marker)


def test_unknown_profile_from_environment_says_so(write_profiles):
    path = write_profiles("[profiles.a]\n")
    result = invoke("-c", str(path), "env", env={"KAI_RUN_PROFILE": "zzz"})
    assert_error(result, "unknown profile 'zzz' (from KAI_RUN_PROFILE)")


def test_uppercase_key_gets_did_you_mean(write_profiles):
    path = write_profiles('[profiles.a]\nNO_PROXY = ["x"]\n')
    result = invoke("-c", str(path), "env", "-p", "a")
    assert_error(result, "unknown key 'NO_PROXY'")
    assert "did you mean 'no_proxy'?" in result.stderr


def test_usage_errors_use_the_same_form(kai_run):
    run = kai_run("profiles", "show", "--bogus")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "kai-run: error: No such option: --bogus (kai-run profiles show)",
        "  hint: see `kai-run profiles show --help`",
    ]


@pytest.mark.parametrize(
    "url",
    [
        "user:s3cretPW@proxy.corp.example:3128",  # no scheme
        "http://user:pa#s3cretPW@proxy.corp.example:3128",  # '#' in the password
        "http://user:12/s3cretPW@proxy.corp.example:3128",  # '/' in the password
        "ftp://user:s3cretPW@proxy.corp.example:21",
    ],
)
def test_proxy_errors_never_show_the_password(write_profiles, url):
    path = write_profiles(f'[profiles.p]\nhttps_proxy = "{url}"\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert result.exit_code == 2
    assert "s3cretPW" not in result.stderr
    assert "user:***@" in result.stderr


def test_expansion_errors_never_quote_the_value(write_profiles):
    path = write_profiles('[profiles.p]\nenv = { OAUTH_CLIENT_SECRET = "ab${cdSECRETVALUE" }\n')
    result = invoke("-c", str(path), "env", "-p", "p")
    assert_error(result, "unclosed '${'", "key 'env.OAUTH_CLIENT_SECRET'")
    assert "SECRETVALUE" not in result.stderr


def test_superscript_port_is_an_error_not_a_traceback(write_profiles):
    path = write_profiles('[profiles.p]\nhttps_proxy = "http://proxy:3\u00b2"\n')
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "bad port")


def test_empty_command_name(write_profiles, kai_run):
    path = write_profiles('[profiles.p]\ncommand = [""]\n')
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "the command cannot be empty")
    path = write_profiles("[profiles.q]\n", name="q.toml")
    run = kai_run("-c", str(path), "-p", "q", "--", "")
    assert run.returncode == 127 and "empty command name" in run.stderr


def test_empty_profile_or_config_option(write_profiles, kai_run):
    path = write_profiles('default_profile = "p"\n[profiles.p]\n')
    run = kai_run("-c", str(path), "-p", "", "--", "true")
    assert run.returncode == 2 and "--profile names no profile" in run.stderr
    run = kai_run("-c", "", "-p", "p", "--", "true", env={"KAI_RUN_CONFIG": str(path)})
    assert run.returncode == 2 and "--config names no file" in run.stderr


def test_secret_command_printing_nothing(write_profiles):
    cmd = f'["{sys.executable}", "-c", "pass"]'
    path = write_profiles(f"[profiles.p]\nenv = {{ T = {{ command = {cmd} }} }}\n")
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "printed nothing", "key 'env.T'")


def test_proxy_password_without_username(write_profiles):
    path = write_profiles('[profiles.p]\nproxy_auth = { password = { env = "X" } }\n')
    assert_error(invoke("-c", str(path), "env", "-p", "p"), "password but no username")
