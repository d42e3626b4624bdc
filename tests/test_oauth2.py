"""OAuth2 client-credentials secret references against a real token endpoint on loopback.

The endpoint (tests/support/oauth.py) is reached THROUGH the profile's own proxy where the test
says so: a small counting HTTP proxy that maps `idp.kai-oauth.invalid` to 127.0.0.1 (kai-run always
puts localhost, 127.0.0.1 and ::1 in NO_PROXY, so a loopback name would go direct). Over HTTPS the
endpoint's certificate comes from a trustme CA that only the profile's ca_bundle names, so a
token proves that the profile's CA bundle was used too.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import trustme
from support.oauth import CountingProxy, TokenServer
from support.servers import closed_port

from kai_launch import oauth2

NAME = "idp.kai-oauth.invalid"
SECRET = "s3cr3t+/=&x-Zq9"
CLIENT = "kai-ide"
CHILD = "import json, os; print(json.dumps(dict(os.environ)))"


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "idp-ca.pem"))
    return ca


@pytest.fixture
def idp(ca: trustme.CA) -> Iterator[TokenServer]:
    with TokenServer(tls=True, ca=ca, names=(NAME,), client_secret=SECRET) as server:
        yield server


@pytest.fixture
def plain_idp() -> Iterator[TokenServer]:
    with TokenServer(tls=False, client_secret=SECRET) as server:
        yield server


@pytest.fixture
def proxy() -> Iterator[CountingProxy]:
    with CountingProxy() as p:
        yield p


def write_profile(
    tmp_path: Path,
    token_url: str,
    *,
    proxy: str | None = None,
    extra: str = "",
    profile_extra: str = "",
    ca: bool = True,
) -> Path:
    lines = ["[profiles.corp]"]
    if proxy:
        lines += [f'http_proxy = "{proxy}"', f'https_proxy = "{proxy}"']
    if ca:
        lines.append('ca_bundle = "idp-ca.pem"')
    lines.append(profile_extra)
    lines += [
        "[profiles.corp.env]",
        f'OPENAI_API_KEY = {{ oauth2 = {{ token_url = "{token_url}", client_id = "{CLIENT}", '
        f'client_secret = {{ env = "KAI_CLIENT_SECRET" }}{extra} }} }}',
        'PLAIN = "visible"',
    ]
    path = tmp_path / "profiles.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_child(kai_run, config: Path, *extra: str, secret: str = SECRET):
    return kai_run(
        "-c",
        str(config),
        *extra,
        "-p",
        "corp",
        "--",
        sys.executable,
        "-c",
        CHILD,
        env={"KAI_CLIENT_SECRET": secret},
    )


def cache_files() -> list[Path]:
    directory = Path(os.environ["XDG_CACHE_HOME"]) / "kai-run" / "oauth2"
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def assert_no_secret(*texts: str) -> None:
    forms = {
        SECRET,
        quote(SECRET, safe=""),
        base64.b64encode(f"{CLIENT}:{SECRET}".encode()).decode(),
    }
    forms.add(base64.b64encode(f"{CLIENT}:{quote(SECRET, safe='')}".encode()).decode())
    for text in texts:
        for form in forms:
            assert form not in text


# --- the token, through the profile's own proxy and CA -----------------------------------------


def test_basic_auth_through_the_profiles_proxy_and_ca(kai_run, tmp_path, idp, proxy):
    config = write_profile(
        tmp_path,
        idp.url(NAME),
        proxy=proxy.url,
        extra=', scope = ["llm.read", "llm.write"], audience = "https://llm.corp.example"',
    )
    run = run_child(kai_run, config)
    assert run.returncode == 0, run
    env = json.loads(run.stdout)
    assert env["OPENAI_API_KEY"] == idp.issued[0]
    # Through the proxy (a CONNECT for the name), verified with the profile's CA only.
    assert proxy.seen == [("CONNECT", NAME, idp.port)]
    (req,) = idp.requests
    assert req.method == "POST" and req.path == "/token"
    assert req.basic() == (CLIENT, SECRET)
    # RFC 6749 2.3.1: id and secret are form-urlencoded inside the Basic credentials.
    raw = base64.b64decode(req.headers["authorization"][6:]).decode()
    assert raw == f"{CLIENT}:{quote(SECRET, safe='')}"
    assert req.form == {
        "grant_type": "client_credentials",
        "scope": "llm.read llm.write",
        "audience": "https://llm.corp.example",
    }
    assert req.headers["accept"] == "application/json"
    # Only the token reaches the child: the client secret is in none of its variables
    # (KAI_CLIENT_SECRET is the parent's own variable, which the child inherits as usual).
    child_values = {k: v for k, v in env.items() if k != "KAI_CLIENT_SECRET"}
    assert_no_secret(json.dumps(child_values), run.stderr)


def test_post_client_auth_over_http_through_the_proxy(kai_run, tmp_path, plain_idp, proxy):
    config = write_profile(
        tmp_path, plain_idp.url(NAME), proxy=proxy.url, extra=', client_auth = "post"', ca=False
    )
    run = run_child(kai_run, config)
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["OPENAI_API_KEY"] == plain_idp.issued[0]
    assert proxy.seen == [("POST", NAME, plain_idp.port)]  # absolute-form, through the proxy
    (req,) = plain_idp.requests
    assert "authorization" not in req.headers
    assert req.form == {
        "grant_type": "client_credentials",
        "client_id": CLIENT,
        "client_secret": SECRET,
    }


def test_proxy_auth_is_used_and_a_refusal_is_redacted(kai_run, tmp_path, idp):
    with CountingProxy(proxy_auth=("jdoe", "pr0xy-pw")) as proxy:
        extra = '[profiles.corp.proxy_auth]\nusername = "jdoe"\npassword = { env = "PROXY_PW" }\n'
        config = write_profile(tmp_path, idp.url(NAME), proxy=proxy.url)
        config.write_text(
            config.read_text().replace("[profiles.corp.env]", extra + "[profiles.corp.env]")
        )
        good = kai_run(
            "-c", str(config), "-p", "corp", "--", sys.executable, "-c", CHILD,
            env={"KAI_CLIENT_SECRET": SECRET, "PROXY_PW": "pr0xy-pw"},
        )  # fmt: skip
        assert good.returncode == 0, good
        assert json.loads(good.stdout)["OPENAI_API_KEY"] == idp.issued[0]
        for f in cache_files():
            f.unlink()
        bad = kai_run(
            "-c", str(config), "-p", "corp", "--", "true",
            env={"KAI_CLIENT_SECRET": SECRET, "PROXY_PW": "wrong-pw"},
        )  # fmt: skip
    assert bad.returncode == 2
    assert "407" in bad.stderr and "jdoe:***@" in bad.stderr
    assert "wrong-pw" not in bad.stderr
    assert "proxy_auth" in bad.stderr  # the hint


def test_no_proxy_is_honoured_for_a_localhost_token_endpoint(kai_run, tmp_path, idp, proxy):
    config = write_profile(tmp_path, idp.url("localhost"), proxy=proxy.url)
    run = run_child(kai_run, config)
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["OPENAI_API_KEY"] == idp.issued[0]
    assert proxy.seen == []  # localhost is in NO_PROXY: direct, like the child's requests


def test_the_parents_proxy_variables_are_not_used(kai_run, tmp_path, idp, proxy):
    # The profile has no proxy: the child gets none, so neither does the token request.
    config = write_profile(tmp_path, idp.url("localhost"))
    run = kai_run(
        "-c", str(config), "-p", "corp", "--", sys.executable, "-c", CHILD,
        env={"KAI_CLIENT_SECRET": SECRET, "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""},
    )  # fmt: skip
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["OPENAI_API_KEY"] == idp.issued[0]


def test_without_the_profiles_ca_the_token_endpoint_is_not_trusted(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"), ca=False)
    run = run_child(kai_run, config)
    assert run.returncode == 2
    assert "TLS verification failed for token endpoint https://localhost:" in run.stderr
    assert "ca_bundle" in run.stderr
    assert idp.requests == []


# --- the cache ---------------------------------------------------------------------------------


def test_token_is_cached_0600_and_reused(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"))
    first = run_child(kai_run, config)
    second = run_child(kai_run, config)
    assert first.returncode == second.returncode == 0, (first, second)
    token = json.loads(first.stdout)["OPENAI_API_KEY"]
    assert json.loads(second.stdout)["OPENAI_API_KEY"] == token
    assert len(idp.requests) == 1  # the second run asked nobody
    (path,) = cache_files()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["access_token"] == token
    assert 3590 < data["expires_at"] - data["obtained_at"] <= 3600
    assert SECRET not in path.read_text()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_an_expiring_token_is_fetched_again(kai_run, tmp_path, idp):
    idp.expires_in = 2  # refresh margin: min(60 s, 10% of 2 s) = 0.2 s
    config = write_profile(tmp_path, idp.url("localhost"))
    first = json.loads(run_child(kai_run, config).stdout)["OPENAI_API_KEY"]
    assert json.loads(run_child(kai_run, config).stdout)["OPENAI_API_KEY"] == first
    assert len(idp.requests) == 1
    time.sleep(2.1)
    third = json.loads(run_child(kai_run, config).stdout)["OPENAI_API_KEY"]
    assert third != first and third == idp.issued[1]
    assert len(idp.requests) == 2


def test_a_token_without_expires_in_is_kept_the_default_lifetime(kai_run, tmp_path, idp):
    idp.expires_in = None
    config = write_profile(tmp_path, idp.url("localhost"))
    assert run_child(kai_run, config).returncode == 0
    (path,) = cache_files()
    data = json.loads(path.read_text())
    assert data["expires_at"] - data["obtained_at"] == oauth2.DEFAULT_LIFETIME


def test_a_changed_secret_fetches_a_new_token(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"))
    first = json.loads(run_child(kai_run, config).stdout)["OPENAI_API_KEY"]
    idp.client_secret = "rotated-secret"
    run = run_child(kai_run, config, secret="rotated-secret")
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["OPENAI_API_KEY"] != first
    assert len(idp.requests) == 2 and idp.requests[1].basic() == (CLIENT, "rotated-secret")
    assert len(cache_files()) == 2


def test_a_corrupt_cache_file_is_ignored_and_rewritten(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"))
    assert run_child(kai_run, config).returncode == 0
    (path,) = cache_files()
    path.write_text('{"access_token": 12, trunc')
    run = run_child(kai_run, config)
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["OPENAI_API_KEY"] == idp.issued[1]
    assert json.loads(path.read_text())["access_token"] == idp.issued[1]


def test_concurrent_runs_share_one_fetch(tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"))
    env = {**os.environ, "KAI_CLIENT_SECRET": SECRET}
    argv = [sys.executable, "-m", "kai_launch", "-c", str(config), "-p", "corp", "--"]
    procs = [
        subprocess.Popen(
            [*argv, sys.executable, "-c", "import os; print(os.environ['OPENAI_API_KEY'])"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert {out.strip() for out, _ in outputs} == {idp.issued[0]}
    assert len(idp.requests) == 1
    (path,) = cache_files()
    assert json.loads(path.read_text())["access_token"] == idp.issued[0]


def test_a_warm_cache_keeps_requests_off_the_exec_path(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"))
    assert run_child(kai_run, config).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "kai_launch", "-c", str(config), "-p", "corp",
         "--", "true"],
        capture_output=True,
        text=True,
        env={**os.environ, "KAI_CLIENT_SECRET": SECRET},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "kai_launch" in imported
    for heavy in ("requests", "urllib3", "typer", "rich", "tomlkit", "cryptography", "click"):
        assert heavy not in imported, heavy
    assert len(idp.requests) == 1


# --- errors ------------------------------------------------------------------------------------


def test_endpoint_error_and_description_are_shown_without_the_secret(kai_run, tmp_path, idp):
    idp.mode = "error"
    config = write_profile(tmp_path, idp.url("localhost"))
    for extra in ((), ("--debug",)):
        run = run_child(kai_run, config, *extra)
        assert run.returncode == 2
        assert (
            f"kai-run: error: token endpoint {idp.url('localhost')} refused the client "
            "credentials: invalid_client: Client authentication failed (profile 'corp' "
            f"({config}), key 'env.OPENAI_API_KEY')"
        ) in run.stderr
        assert "hint: check client_id and client_secret, and client_auth" in run.stderr
        assert_no_secret(run.stdout, run.stderr)
        assert "Basic " not in run.stderr
    assert "Traceback" in run.stderr  # --debug did print one


def test_a_non_json_500_is_excerpted_and_scrubbed(kai_run, tmp_path, plain_idp):
    # The page echoes the form, which (client_auth = "post") holds the secret.
    plain_idp.mode = "html500"
    config = write_profile(
        tmp_path, plain_idp.url("localhost"), extra=', client_auth = "post"', ca=False
    )
    run = run_child(kai_run, config, "--debug")
    assert run.returncode == 2
    assert (
        "answered HTTP 500 Internal Server Error (text/html): <html><body><h1>Internal error"
        in run.stderr
    )
    assert "client_secret=***" in run.stderr
    assert_no_secret(run.stderr)
    assert "try again" in run.stderr


def test_a_200_without_access_token_is_an_error(kai_run, tmp_path, idp):
    idp.mode = "no_token"
    config = write_profile(tmp_path, idp.url("localhost"))
    run = run_child(kai_run, config)
    assert run.returncode == 2
    assert "answered HTTP 200 OK without an access_token (keys: token_type)" in run.stderr
    assert cache_files() == []


def test_connection_refused_names_the_endpoint_and_route(kai_run, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/token"
    config = write_profile(tmp_path, url, ca=False)
    run = run_child(kai_run, config, "--debug")
    assert run.returncode == 2
    assert (
        f"cannot reach token endpoint {url} directly (no proxy): Connection refused" in run.stderr
    )
    assert "key 'env.OPENAI_API_KEY'" in run.stderr
    assert_no_secret(run.stderr)


def test_an_unset_client_secret_variable(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"))
    run = kai_run("-c", str(config), "-p", "corp", "--", "true")
    assert run.returncode == 2
    assert "secret variable KAI_CLIENT_SECRET is not set" in run.stderr
    assert "key 'env.OPENAI_API_KEY.oauth2.client_secret'" in run.stderr
    assert idp.requests == []


# --- schema ------------------------------------------------------------------------------------

GOOD = 'token_url = "https://idp.example/token", client_id = "a", client_secret = { env = "S" }'


@pytest.mark.parametrize(
    ("table", "message", "hint"),
    [
        (
            'tokn_url = "https://idp.example/token", client_id = "a", client_secret = "b"',
            "unknown oauth2 key 'tokn_url' (",
            "did you mean 'token_url'?",
        ),
        (
            'token_url = "https://idp.example/token", client_id = "a"',
            "the oauth2 reference has no client_secret",
            "client_secret = { env",
        ),
        (
            'token_url = "ftp://idp.example/token", client_id = "a", client_secret = "b"',
            "token_url 'ftp://idp.example/token' is not an http:// or https:// URL",
            "https://idp.example.com/oauth2/token",
        ),
        (GOOD + ', client_auth = "basci"', "expected one of basic, post", "did you mean 'basic'?"),
        (GOOD + ", scope = 3", "expected a string or a list of strings", "scope = "),
        (GOOD + ", audience = [1]", "expected a string, got a list", "token_url ="),
        (
            'token_url = "https://idp.example/token", client_id = "a", client_secret = { envv = "S" }',
            "unknown secret reference 'envv'",
            "did you mean 'env'?",
        ),
        (
            'token_url = "https://idp.example/token", client_id = { env = "9x" }, client_secret = "b"',
            "invalid variable name '9x'",
            "letters, digits",
        ),
    ],
)
def test_malformed_oauth2_tables_are_refused_at_load(kai_run, tmp_path, table, message, hint):
    config = tmp_path / "profiles.toml"
    config.write_text(
        f'[profiles.corp]\ndescription = "x"\n\n[profiles.corp.env]\nTOKEN = {{ oauth2 = {{ {table} }} }}\n'
    )
    run = kai_run("-c", str(config), "-p", "corp", "--", "true")
    assert run.returncode == 2
    line = run.stderr.splitlines()[0]
    assert line.startswith("kai-run: error: ")
    assert f"({config}, line 5, profile 'corp', key 'env.TOKEN" in line
    assert message in line
    assert hint in run.stderr.splitlines()[1]


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (
            '[profiles.corp.proxy_auth]\nusername = "u"\npassword = { oauth2 = { '
            + GOOD
            + " } }\n",
            "proxy_auth.password.oauth2",
        ),
        (
            '[profiles.corp.sidecar]\ncommand = ["x"]\n[profiles.corp.sidecar.env]\nT = { oauth2 = { '
            + GOOD
            + " } }\n",
            "sidecar.env.T.oauth2",
        ),
        (
            "[profiles.corp.env]\nT = { oauth2 = { "
            + GOOD.replace('{ env = "S" }', "{ oauth2 = { " + GOOD + " } }")
            + " } }\n",
            "env.T.oauth2.client_secret.oauth2",
        ),
    ],
)
def test_oauth2_is_refused_outside_env(kai_run, tmp_path, body, key):
    config = tmp_path / "profiles.toml"
    config.write_text("[profiles.corp]\n" + body)
    run = kai_run("-c", str(config), "-p", "corp", "--", "true")
    assert run.returncode == 2
    first, hint = run.stderr.splitlines()[:2]
    assert "an oauth2 reference is only allowed in the profile's env table" in first
    assert first.endswith(f"key '{key}')")
    assert "proxy and CA bundle" in hint


def test_config_check_reports_a_malformed_oauth2_table(kai_run, tmp_path):
    config = tmp_path / "profiles.toml"
    config.write_text(
        '[profiles.corp]\n[profiles.corp.env]\nT = { oauth2 = { token_url = "https://i/t", client_id = "a" } }\n'
    )
    run = kai_run("-c", str(config), "config", "check")
    assert run.returncode != 0
    assert "the oauth2 reference has no client_secret" in run.stdout + run.stderr
    assert "line 3, profile 'corp', key 'env.T.oauth2'" in run.stdout + run.stderr


def test_profiles_set_replaces_an_oauth2_reference_with_another_reference(kai_run, tmp_path):
    config = tmp_path / "profiles.toml"
    config.write_text("[profiles.corp]\n[profiles.corp.env]\nT = { oauth2 = { " + GOOD + " } }\n")
    run = kai_run("-c", str(config), "profiles", "set", "corp", "env.T", "--secret-env", "TOK")
    assert run.returncode == 0, run
    assert "oauth2" not in config.read_text() and 'T = { env = "TOK" }' in config.read_text()


def test_profiles_set_keeps_a_valid_oauth2_table(kai_run, tmp_path):
    config = tmp_path / "profiles.toml"
    config.write_text("[profiles.corp]\n[profiles.corp.env]\nT = { oauth2 = { " + GOOD + " } }\n")
    run = kai_run("-c", str(config), "profiles", "set", "corp", "description", "hello")
    assert run.returncode == 0, run
    assert 'description = "hello"' in config.read_text() and "oauth2" in config.read_text()


def test_a_plaintext_client_secret_is_warned_about(kai_run, tmp_path):
    config = tmp_path / "profiles.toml"
    config.write_text(
        '[profiles.corp]\n[profiles.corp.env]\nT = { oauth2 = { token_url = "https://i/t", '
        'client_id = "a", client_secret = "plain-s3cret" } }\n'
    )
    config.chmod(0o644)
    run = kai_run("-c", str(config), "config", "check")
    assert "corp.env.T.oauth2.client_secret" in run.stdout + run.stderr
    assert "plain-s3cret" not in run.stdout + run.stderr


# --- show, env, doctor ------------------------------------------------------------------------


def test_show_masks_without_fetching_reveal_and_env_give_the_token(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url(NAME), extra=', scope = "a"')
    env = {"KAI_CLIENT_SECRET": SECRET}
    shown = kai_run("-c", str(config), "profiles", "show", "corp", "--json", env=env)
    assert shown.returncode == 0, shown
    data = json.loads(shown.stdout)
    var = data["variables"]["OPENAI_API_KEY"]
    assert var["value"] == "***"
    assert var["origin"].startswith(f"secret oauth2: client {CLIENT} at {idp.url(NAME)}")
    assert data["settings"]["env.OPENAI_API_KEY"]["value"] == (
        f"oauth2: client {CLIENT} at {idp.url(NAME)}"
    )
    assert idp.requests == []  # show without --reveal fetches nothing
    assert_no_secret(shown.stdout, shown.stderr)

    # The token endpoint is reached through no proxy here: the profile has none.
    config = write_profile(tmp_path, idp.url("localhost"))
    revealed = kai_run("-c", str(config), "profiles", "show", "corp", "--json", "--reveal", env=env)
    assert revealed.returncode == 0, revealed
    token = json.loads(revealed.stdout)["variables"]["OPENAI_API_KEY"]["value"]
    assert token == idp.issued[0]
    exported = kai_run("-c", str(config), "-p", "corp", "env", env=env)
    assert exported.returncode == 0, exported
    assert f"export OPENAI_API_KEY='{token}'" in exported.stdout
    assert_no_secret(exported.stdout, exported.stderr)
    assert len(idp.requests) == 1  # env reused the token show --reveal fetched


def test_doctor_reports_the_token_and_the_endpoints_error(kai_run, tmp_path, idp, proxy):
    config = write_profile(tmp_path, idp.url(NAME), proxy=proxy.url)
    env = {"KAI_CLIENT_SECRET": SECRET}
    ok = kai_run("-c", str(config), "doctor", "-p", "corp", "--json", env=env)
    rows = [r for r in json.loads(ok.stdout) if r["check"] == "env.oauth2"]
    assert len(rows) == 1 and rows[0]["status"] == "ok", ok
    assert rows[0]["target"] == "OPENAI_API_KEY"
    assert f"client {CLIENT} at {idp.url(NAME)}" in rows[0]["message"]
    assert f"through proxy {proxy.url}" in rows[0]["message"]
    assert_no_secret(ok.stdout, ok.stderr)
    assert idp.issued[0] not in ok.stdout + ok.stderr  # the token is not shown either

    for f in cache_files():
        f.unlink()
    idp.mode = "error"
    bad = kai_run("-c", str(config), "doctor", "-p", "corp", "--json", env=env)
    assert bad.returncode == 1
    checks = json.loads(bad.stdout)
    (row,) = [r for r in checks if r["check"] == "env.oauth2"]
    assert row["status"] == "fail"
    assert (
        "refused the client credentials: invalid_client: Client authentication failed"
        in row["message"]
    )
    assert "client_auth" in row["hint"]
    # The rest of the profile is still checked: its proxy rows are there.
    assert any(r["check"] == "proxy.tcp" and r["status"] == "ok" for r in checks)
    assert_no_secret(bad.stdout, bad.stderr)


def test_doctor_gives_a_hanging_token_endpoint_its_timeout_not_oauth2s(
    kai_run, tmp_path, hanging_server
):
    # doctor's promise: every network step ends within --timeout, token requests included.
    url = f"http://127.0.0.1:{hanging_server.port}/token"
    config = write_profile(tmp_path, url, ca=False)
    start = time.monotonic()
    run = kai_run(
        "-c", str(config), "doctor", "-p", "corp", "--json", "--timeout", "1",
        env={"KAI_CLIENT_SECRET": SECRET},
    )  # fmt: skip
    elapsed = time.monotonic() - start
    (row,) = [r for r in json.loads(run.stdout) if r["check"] == "env.oauth2"]
    assert row["status"] == "fail"
    assert "did not answer within 1 s" in row["message"]
    assert elapsed < oauth2.READ_TIMEOUT
    assert_no_secret(run.stdout, run.stderr)


# --- units ---------------------------------------------------------------------------------------


def test_refresh_margin_is_min_of_60_s_and_a_tenth_of_the_lifetime():
    # one hour: refreshed in its last minute
    assert oauth2.still_fresh(3600, 0, 3539)
    assert not oauth2.still_fresh(3600, 0, 3541)
    # 100 s: refreshed in its last 10 s
    assert oauth2.still_fresh(100, 0, 89)
    assert not oauth2.still_fresh(100, 0, 91)


def test_describe_and_repr_never_show_the_secret():
    from kai_launch.secrets import SecretRef

    ref = SecretRef.from_toml(
        {
            "oauth2": {
                "token_url": "https://u:pw@idp/t",
                "client_id": "c",
                "client_secret": "zz-top",
            }
        },
        "/",
        "profile 'p' (/f), key 'env.T'",
    )
    assert ref.describe() == "oauth2: client c at https://u:***@idp/t"
    assert "zz-top" not in repr(ref) and "pw" not in repr(ref)


def _ref(token_url: str):
    from kai_launch.secrets import SecretRef

    return SecretRef.from_toml(
        {"oauth2": {"token_url": token_url, "client_id": CLIENT, "client_secret": SECRET}},
        "/",
        "profile 'p' (/f.toml), key 'env.T'",
    )


def test_a_hanging_proxy_times_out_naming_endpoint_and_redacted_proxy(monkeypatch, hanging_server):
    from kai_launch.errors import SecretError

    monkeypatch.setattr(oauth2, "CONNECT_TIMEOUT", 0.5)
    proxy = f"http://jdoe:pr0xy-pw@127.0.0.1:{hanging_server.port}"
    child = {"HTTPS_PROXY": proxy, "NO_PROXY": "localhost,127.0.0.1,::1"}
    start = time.monotonic()
    with pytest.raises(SecretError) as caught:
        oauth2.fetch_token(_ref(f"https://{NAME}/token"), {}, child)
    assert time.monotonic() - start < 5
    text = caught.value.message() + (caught.value.hint or "")
    assert f"https://{NAME}/token" in text
    assert f"through proxy http://jdoe:***@127.0.0.1:{hanging_server.port}" in text
    assert "did not answer within 0.5 s" in text and "never answers CONNECT" in text
    assert "pr0xy-pw" not in text
    assert_no_secret(text)


def test_a_silent_token_endpoint_times_out(monkeypatch, hanging_server):
    # Direct: the TCP connection is accepted, the answer never comes.
    from kai_launch.errors import SecretError

    monkeypatch.setattr(oauth2, "READ_TIMEOUT", 0.5)
    url = f"http://127.0.0.1:{hanging_server.port}/token"
    with pytest.raises(SecretError) as caught:
        oauth2.fetch_token(_ref(url), {}, {"NO_PROXY": "localhost,127.0.0.1,::1"})
    assert caught.value.what == (
        f"token endpoint {url}, reached directly (no proxy), did not answer within 0.5 s"
    )


def test_config_check_looks_at_the_nested_references_without_fetching(kai_run, tmp_path, idp):
    config = tmp_path / "profiles.toml"
    config.write_text(
        "[profiles.corp]\n\n[profiles.corp.env.T.oauth2]\n"
        f'token_url = "{idp.url("localhost")}"\nclient_id = {{ env = "CID" }}\n'
        'client_secret = { env = "CSECRET" }\n'
    )
    run = kai_run("-c", str(config), "config", "check")
    out = run.stdout + run.stderr
    assert (
        f"secret variable CID is not set here ({config}, line 5, profile 'corp', key 'env.T.oauth2.client_id')"
        in out
    )
    assert "key 'env.T.oauth2.client_secret'" in out
    assert idp.requests == []


def test_stale_cache_entries_are_pruned_after_a_fetch(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"))
    assert run_child(kai_run, config).returncode == 0
    (current,) = cache_files()
    old = current.parent / ("0" * 40 + ".json")
    old.write_text("{}")
    leftover = current.parent / "x.json.123.tmp"
    leftover.write_text("")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    os.utime(leftover, (week_ago, week_ago))
    current.unlink()
    assert run_child(kai_run, config).returncode == 0
    assert not old.exists() and not leftover.exists()
    assert len(cache_files()) == 1


def test_a_socks_proxy_without_pysocks_is_explained():
    from kai_launch.errors import SecretError

    pytest.importorskip("requests")
    try:
        import socks  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("PySocks is installed: requests can use SOCKS proxies")
    child = {"ALL_PROXY": "socks5://127.0.0.1:9", "NO_PROXY": "localhost,127.0.0.1,::1"}
    with pytest.raises(SecretError) as caught:
        oauth2.fetch_token(_ref(f"https://{NAME}/token"), {}, child)
    assert "requests needs PySocks" in caught.value.what
    assert "requests[socks]" in (caught.value.hint or "")


def test_copying_a_site_profile_keeps_the_nested_secret_file_reachable(kai_run):
    site = Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run" / "profiles.toml"
    site.parent.mkdir(parents=True)
    site.write_text(
        "[profiles.corp.env.T.oauth2]\n"
        'token_url = "https://idp.example/token"\nclient_id = "a"\n'
        'client_secret = { file = "client.secret" }\n'
    )
    run = kai_run("profiles", "copy", "corp", "mine")
    assert run.returncode == 0, run
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "kai-run" / "profiles.toml"
    text = user.read_text()
    assert f'client_secret = {{ file = "{site.parent / "client.secret"}" }}' in text, text
    assert 'token_url = "https://idp.example/token"' in text


ROUTE_ADDON = f'''
"""Test addon: send {NAME} to the token endpoint on 127.0.0.1, verified as localhost."""
from mitmproxy import http


class RouteToLoopback:
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == "{NAME}":
            flow.request.host = "127.0.0.1"

    def server_connect(self, data) -> None:
        if data.server.address and data.server.address[0] == "127.0.0.1":
            data.server.sni = "localhost"


addons = [RouteToLoopback()]
'''


def test_through_a_tls_intercepting_mitmdump(kai_run, tmp_path, mitm_binary, idp):
    # The profile trusts mitmproxy's CA only: the token comes back only if the request went
    # through this mitmdump (which verifies the endpoint with the endpoint's own CA).
    from support.mitm import LOOPBACK_GUARD_ADDON, MitmDump

    addon = tmp_path / "route_to_loopback.py"
    addon.write_text(ROUTE_ADDON)
    mitm = MitmDump(
        mitm_binary,
        confdir=tmp_path / "mitm",
        upstream_ca=tmp_path / "idp-ca.pem",
        addons=[addon, LOOPBACK_GUARD_ADDON],  # the guard after the mapping, as in test_e2e
        loopback_only=False,
    )
    with mitm:
        config = tmp_path / "profiles.toml"
        config.write_text(
            f'[profiles.corp]\nhttps_proxy = "{mitm.url}"\nca_bundle = "{mitm.ca_cert_path}"\n'
            "[profiles.corp.env.OPENAI_API_KEY.oauth2]\n"
            f'token_url = "{idp.url(NAME)}"\nclient_id = "{CLIENT}"\n'
            'client_secret = { env = "KAI_CLIENT_SECRET" }\nclient_auth = "post"\n'
        )
        run = run_child(kai_run, config)
        assert run.returncode == 0, (run, mitm.log_tail())
        assert json.loads(run.stdout)["OPENAI_API_KEY"] == idp.issued[0]
        deadline = time.monotonic() + 5
        while "/token" not in mitm.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The flow line names the mapped address; the CONNECT named the endpoint's host.
        assert f"POST https://127.0.0.1:{idp.port}/token" in mitm.log_text()
    assert idp.requests[0].form["client_secret"] == SECRET


def test_invalid_scope_and_redirects_are_explained(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, idp.url("localhost"), extra=', scope = "x"')
    idp.mode = "invalid_scope"
    run = run_child(kai_run, config)
    assert run.returncode == 2
    assert "refused the token request: invalid_scope: scope 'x' is not allowed" in run.stderr
    assert "hint: check scope" in run.stderr
    idp.mode = "redirect"
    run = run_child(kai_run, config)
    assert run.returncode == 2
    assert (
        "answered HTTP 302 Found, a redirect to https://sso.kai-oauth.invalid/login" in run.stderr
    )
    assert len(idp.requests) == 2  # the redirect was not followed


def test_token_url_expands_variables(kai_run, tmp_path, idp):
    config = write_profile(tmp_path, "${IDP_URL}")
    run = kai_run(
        "-c", str(config), "-p", "corp", "--", sys.executable, "-c", CHILD,
        env={"KAI_CLIENT_SECRET": SECRET, "IDP_URL": idp.url("localhost")},
    )  # fmt: skip
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["OPENAI_API_KEY"] == idp.issued[0]
    unset = run_child(kai_run, config)
    assert unset.returncode == 2 and "IDP_URL" in unset.stderr
    assert "key 'env.OPENAI_API_KEY.oauth2.token_url'" in unset.stderr


# --- only the token reaches the child ------------------------------------------------------------


def _env_secret_profile(write_profiles, url: str, extra: str = ""):
    return write_profiles(
        f"""
        [profiles.corp]
        {extra}
        [profiles.corp.env.OPENAI_API_KEY.oauth2]
        token_url = "{url}"
        client_id = {{ env = "OAUTH_CLIENT_ID" }}
        client_secret = {{ env = "OAUTH_CLIENT_SECRET" }}
        """
    )


def test_the_client_secret_variable_does_not_reach_the_child(kai_run, write_profiles, plain_idp):
    config = _env_secret_profile(write_profiles, plain_idp.url())
    env = {"OAUTH_CLIENT_ID": CLIENT, "OAUTH_CLIENT_SECRET": SECRET}
    run = kai_run("-c", str(config), "-p", "corp", "--", sys.executable, "-c", CHILD, env=env)
    assert run.returncode == 0, run
    child = json.loads(run.stdout)
    assert child["OPENAI_API_KEY"] == plain_idp.issued[0]
    assert "OAUTH_CLIENT_SECRET" not in child
    assert child["OAUTH_CLIENT_ID"] == CLIENT  # not a secret: left alone
    assert SECRET not in run.stdout + run.stderr
    # `eval "$(kai-run env)"` must not unset it in the user's shell: the next run needs it.
    exported = kai_run("-c", str(config), "env", "-p", "corp", "--format", "json", env=env)
    assert "OAUTH_CLIENT_SECRET" not in json.loads(exported.stdout)["unset"]
    # Asked for explicitly, the child gets it.
    run = kai_run(
        "-c", str(config), "-p", "corp", "--set", f"OAUTH_CLIENT_SECRET={SECRET}",
        "--", sys.executable, "-c", CHILD, env=env,
    )  # fmt: skip
    assert json.loads(run.stdout)["OAUTH_CLIENT_SECRET"] == SECRET


def test_set_or_unset_of_a_token_variable_fetches_nothing(kai_run, write_profiles):
    # The endpoint is down (a closed port) and the secret unset: --set/--unset still work.
    config = _env_secret_profile(write_profiles, f"http://127.0.0.1:{closed_port()}/token")
    run = kai_run(
        "-c", str(config), "-p", "corp", "--set", "OPENAI_API_KEY=manual",
        "--", sys.executable, "-c", CHILD, env={"OAUTH_CLIENT_ID": CLIENT},
    )  # fmt: skip
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["OPENAI_API_KEY"] == "manual"
    run = kai_run(
        "-c", str(config), "-p", "corp", "--set", "OPENAI_API_KEY=manual",
        "--", sys.executable, "-c", CHILD, env={"OAUTH_CLIENT_SECRET": SECRET},
    )  # fmt: skip
    assert "OAUTH_CLIENT_SECRET" not in json.loads(run.stdout)  # not fetched, still not passed on
    run = kai_run(
        "-c", str(config), "-p", "corp", "--unset", "OPENAI_API_KEY",
        "--", sys.executable, "-c", CHILD,
    )  # fmt: skip
    assert run.returncode == 0, run
    assert "OPENAI_API_KEY" not in json.loads(run.stdout)


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://gw:gwpass@127.0.0.1:{port}/token", "token_url must not hold credentials"),
        ("http://127.0.0.1:{port}/token#frag", "token_url must not have a #fragment"),
    ],
)
def test_credentials_or_fragment_in_token_url_are_refused(
    kai_run, write_profiles, plain_idp, url, what
):
    config = _env_secret_profile(write_profiles, url.format(port=plain_idp.port))
    env = {"OAUTH_CLIENT_ID": CLIENT, "OAUTH_CLIENT_SECRET": SECRET}
    run = kai_run("-c", str(config), "-p", "corp", "--", "true", env=env)
    assert run.returncode == 2
    assert what in run.stderr and "key 'env.OPENAI_API_KEY.oauth2.token_url'" in run.stderr
    assert "gwpass" not in run.stderr
    assert plain_idp.requests == []


def test_maven_settings_needs_no_token(kai_run, write_profiles, plain_idp):
    config = _env_secret_profile(
        write_profiles, plain_idp.url(), extra='https_proxy = "http://127.0.0.1:3128"'
    )
    # Neither the secret nor the token endpoint is needed for Maven's <proxies>.
    run = kai_run("-c", str(config), "env", "-p", "corp", "--format", "maven-settings")
    assert run.returncode == 0, run
    assert "<host>127.0.0.1</host>" in run.stdout
    env = {"OAUTH_CLIENT_ID": CLIENT, "OAUTH_CLIENT_SECRET": SECRET}
    run = kai_run("-c", str(config), "env", "-p", "corp", "--format", "maven-settings", env=env)
    assert run.returncode == 0, run
    assert plain_idp.requests == []


def test_an_error_in_a_200_is_shown_as_the_endpoints_error(kai_run, write_profiles, plain_idp):
    plain_idp.mode = "error_200"
    config = _env_secret_profile(write_profiles, plain_idp.url())
    env = {"OAUTH_CLIENT_ID": CLIENT, "OAUTH_CLIENT_SECRET": SECRET}
    run = kai_run("-c", str(config), "-p", "corp", "--", "true", env=env)
    assert run.returncode == 2
    assert "refused the client credentials: invalid_client: Client authentication failed" in (
        run.stderr
    )


def test_a_huge_expires_in_is_cached_for_a_day_at_most() -> None:
    assert oauth2._lifetime(1e12) == oauth2.MAX_LIFETIME == 86400
    assert oauth2._lifetime("3600") == 3600
