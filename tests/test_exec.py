"""The exec path, end to end: real kai-run processes, real child processes reading their environment
with the real requests library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trustme

CHILD = textwrap.dedent(
    """
    import json, os, sys
    import requests, requests.utils
    urls = sys.argv[1:]
    session = requests.Session()
    out = {
        "pid": os.getpid(),
        "env": dict(os.environ),
        "proxies": {u: requests.utils.get_environ_proxies(u) for u in urls},
        "selected": {u: requests.utils.select_proxy(u, requests.utils.get_environ_proxies(u)) for u in urls},
        "verify": {u: session.merge_environment_settings(u, {}, None, None, None)["verify"] for u in urls},
    }
    print(json.dumps(out))
    """
)

CORP = """
    default_profile = "corp"

    [profiles.base]
    no_proxy = ["localhost", "127.0.0.1", "::1"]

    [profiles.corp]
    extends = "base"
    http_proxy = "http://proxy.corp.example:3128"
    https_proxy = "http://proxy.corp.example:3128"
    no_proxy = ["internal-llm.corp.example", "*.svc.corp.example", ".lab.example"]
    unset = ["AWS_PROFILE"]

    [profiles.corp.proxy_auth]
    username = "jdoe"
    password = { env = "CORP_PROXY_PASSWORD" }

    [profiles.corp.env]
    OAUTH_CLIENT_ID = "kai-ide"
    OAUTH_CLIENT_SECRET = { env = "KAI_OAUTH_SECRET" }
    LOG_DIR = "${HOME}/kai-logs"
"""


PROXY_NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "kai_run_profile")


def child_view(
    kai_run, config: Path, *args: str, urls: list[str], env: dict[str, str] | None = None
):
    run = kai_run("-c", str(config), *args, "--", sys.executable, "-c", CHILD, *urls, env=env)
    assert run.returncode == 0, run
    return json.loads(run.stdout), run


def test_child_sees_proxies_no_proxy_and_secrets(kai_run, write_profiles):
    config = write_profiles(CORP)
    urls = [
        "https://api.openai.com/v1/models",
        "http://example.org/",
        "https://internal-llm.corp.example/v1",
        "https://a.svc.corp.example/x",
        "https://svc.corp.example/x",
        "https://deep.lab.example/",
        "http://localhost:11434/api",
        "http://127.0.0.1:8000/",
        "http://[::1]:8000/",
    ]
    view, run = child_view(
        kai_run,
        config,
        "-p",
        "corp",
        urls=urls,
        env={
            "CORP_PROXY_PASSWORD": "p@ss:w/rd",
            "KAI_OAUTH_SECRET": "s3cret",
            "AWS_PROFILE": "stale",
            "http_proxy": "http://stale.example:1",
        },
    )
    proxy = "http://jdoe:p%40ss%3Aw%2Frd@proxy.corp.example:3128"
    assert view["selected"]["https://api.openai.com/v1/models"] == proxy
    assert view["selected"]["http://example.org/"] == proxy
    for direct in urls[2:]:
        assert view["selected"][direct] is None, direct
    env = view["env"]
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        assert env[name] == proxy
    assert env["NO_PROXY"] == env["no_proxy"]
    assert env["NO_PROXY"] == (
        "localhost,127.0.0.1,::1,internal-llm.corp.example,svc.corp.example,lab.example"
    )
    # Absent from the profile: set, empty, in both spellings (the stale parent value is gone).
    assert env["ALL_PROXY"] == env["all_proxy"] == ""
    assert "AWS_PROFILE" not in env
    assert env["OAUTH_CLIENT_SECRET"] == "s3cret"
    assert env["OAUTH_CLIENT_ID"] == "kai-ide"
    assert env["LOG_DIR"] == os.environ["HOME"] + "/kai-logs"
    assert env["KAI_RUN_PROFILE"] == "corp"
    assert run.stderr == ""


def test_exec_replaces_kai_run_same_pid(tmp_path, write_profiles):
    config = write_profiles(CORP)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kai_launch", "-c", str(config), "-p", "base", "--",
         sys.executable, "-c", "import os; print(os.getpid())"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    out, _ = proc.communicate(timeout=30)
    assert int(out) == proc.pid


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_status_is_the_childs(kai_run, write_profiles, code):
    config = write_profiles(CORP)
    run = kai_run(
        "-c", str(config), "-p", "base", "--", sys.executable, "-c", f"raise SystemExit({code})"
    )
    assert run.returncode == code


def test_command_not_found_127_and_not_executable_126(kai_run, write_profiles, tmp_path):
    config = write_profiles(CORP)
    run = kai_run("-c", str(config), "-p", "base", "--", "no-such-program-kai")
    assert run.returncode == 127
    assert run.stderr.startswith("kai-run: error: command not found: no-such-program-kai")
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    run = kai_run("-c", str(config), "-p", "base", "--", str(script))
    assert run.returncode == 126
    assert "kai-run: error: cannot run" in run.stderr
    assert "hint:" in run.stderr


def test_command_named_like_a_subcommand_is_run_verbatim(kai_run, write_profiles):
    config = write_profiles(CORP)
    run = kai_run("-c", str(config), "-p", "base", "--", "env")
    assert run.returncode == 0
    assert "KAI_RUN_PROFILE=base" in run.stdout.splitlines()
    assert "NO_PROXY=localhost,127.0.0.1,::1" in run.stdout.splitlines()


def test_profile_command_runs_when_none_given(kai_run, write_profiles):
    config = write_profiles(
        f"""
        [profiles.p]
        command = ["{sys.executable}", "-c", "import os; print('ran', os.environ['KAI_RUN_PROFILE'])"]
        """
    )
    for args in (["-p", "p"], ["-p", "p", "--"]):
        run = kai_run("-c", str(config), *args)
        assert run.returncode == 0, run
        assert run.stdout == "ran p\n"


def test_no_command_at_all_is_an_error(kai_run, write_profiles):
    config = write_profiles(CORP)
    run = kai_run("-c", str(config), "-p", "base", "--")
    assert run.returncode == 2
    assert run.stderr.startswith("kai-run: error: no command to run (profile 'base'")


def test_profile_selection_precedence(kai_run, write_profiles):
    config = write_profiles(
        """
        default_profile = "a"
        [profiles.a]
        env = { WHO = "a" }
        [profiles.b]
        env = { WHO = "b" }
        [profiles.c]
        env = { WHO = "c" }
        """
    )
    show = [sys.executable, "-c", "import os; print(os.environ['WHO'])"]
    assert kai_run("-c", str(config), "--", *show).stdout == "a\n"
    assert kai_run("-c", str(config), "--", *show, env={"KAI_RUN_PROFILE": "b"}).stdout == "b\n"
    run = kai_run("-c", str(config), "-p", "c", "--", *show, env={"KAI_RUN_PROFILE": "b"})
    assert run.stdout == "c\n"
    # Nested kai-run with another profile is allowed, and says so.
    assert "KAI_RUN_PROFILE=b" in run.stderr and "'c'" in run.stderr
    # KAI_RUN_CONFIG names the file when -c is absent.
    assert kai_run("--", *show, env={"KAI_RUN_CONFIG": str(config)}).stdout == "a\n"


def test_no_profile_selected_lists_profiles(kai_run, write_profiles):
    config = write_profiles("[profiles.a]\n[profiles.b]\n")
    run = kai_run("-c", str(config), "--", "true")
    assert run.returncode == 2
    assert "no profile selected" in run.stderr
    assert "known profiles: a, b" in run.stderr


def test_set_and_unset_win_over_profile(kai_run, write_profiles):
    config = write_profiles(CORP)
    view, _ = child_view(
        kai_run,
        config,
        "-p",
        "base",
        "--set",
        "FOO=bar=baz",
        "--set=EMPTY=",
        "--unset",
        "NO_PROXY",
        urls=[],
        env={"FOO": "old"},
    )
    assert view["env"]["FOO"] == "bar=baz"
    assert view["env"]["EMPTY"] == ""
    assert "NO_PROXY" not in view["env"]
    assert view["env"]["no_proxy"] == "localhost,127.0.0.1,::1"


def test_clean_env_keeps_only_basics(kai_run, write_profiles):
    config = write_profiles(CORP)
    view, _ = child_view(
        kai_run,
        config,
        "-p",
        "base",
        "--clean-env",
        urls=[],
        env={"LC_ALL": "C.UTF-8", "SOME_TOKEN": "leak", "LANG": "C"},
    )
    env = view["env"]
    assert "SOME_TOKEN" not in env
    assert env["LC_ALL"] == "C.UTF-8"
    assert env["LANG"] == "C"
    assert env["HOME"] == os.environ["HOME"]
    assert env["KAI_RUN_PROFILE"] == "base"
    allowed = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TERM", "TZ", "TMPDIR"}
    extra = {
        k
        for k in env
        if k not in allowed and not k.startswith("LC_") and k.lower() not in PROXY_NAMES
    }
    # Python itself may add a couple of variables of its own to a child's view; none of the parent's.
    assert extra <= {"PYTHONPATH", "__PYVENV_LAUNCHER__", "LC_CTYPE"}, extra


def test_ca_bundle_append_mode_trusts_public_and_private(kai_run, write_profiles, tmp_path):
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.cert_pem.write_to_path(str(certs / "corp-root.pem"))
    config = write_profiles(
        """
        [profiles.tls]
        https_proxy = "http://127.0.0.1:3128"
        ca_bundle = "certs/corp-root.pem"   # relative to this file's directory
        """
    )
    view, _ = child_view(kai_run, config, "-p", "tls", urls=["https://api.openai.com/"])
    env = view["env"]
    merged = env["SSL_CERT_FILE"]
    for name in (
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "AWS_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
    ):
        assert env[name] == merged
    assert view["verify"]["https://api.openai.com/"] == merged
    assert merged.startswith(os.environ["XDG_CACHE_HOME"])
    text = Path(merged).read_text()
    private = ca.cert_pem.bytes().decode().strip()
    assert private in text
    import certifi

    assert (
        text.count("BEGIN CERTIFICATE")
        == Path(certifi.where()).read_text().count("BEGIN CERTIFICATE") + 1
    )
    own = Path(env["NODE_EXTRA_CA_CERTS"]).read_text()
    assert own.count("BEGIN CERTIFICATE") == 1 and private in own
    # Reused, not rewritten: same content, same file, same mtime.
    mtime = Path(merged).stat().st_mtime_ns
    view2, _ = child_view(kai_run, config, "-p", "tls", urls=[])
    assert view2["env"]["SSL_CERT_FILE"] == merged
    assert Path(merged).stat().st_mtime_ns == mtime


def test_ca_bundle_replace_mode_and_real_tls(kai_run, write_profiles, tmp_path):
    """The merged bundle really works: a child's requests verifies a trustme server with it."""
    import http.server
    import ssl
    import threading

    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = write_profiles(
            f"""
            [profiles.only-private]
            ca_bundle = ["{ca_path}"]
            ca_mode = "replace"
            """
        )
        url = f"https://localhost:{server.server_address[1]}/"
        code = f"import requests; print(requests.get({url!r}, timeout=10).status_code)"
        run = kai_run("-c", str(config), "-p", "only-private", "--", sys.executable, "-c", code)
        assert run.returncode == 0, run
        assert run.stdout.strip() in ("200", "404")
        bundle = subprocess.run(
            [sys.executable, "-m", "kai_launch", "-c", str(config), "-p", "only-private", "--",
             sys.executable, "-c", "import os; print(open(os.environ['SSL_CERT_FILE']).read())"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert bundle.count("BEGIN CERTIFICATE") == 1
        # Without the profile, the same request fails verification: the bundle made the difference.
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert plain.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in plain.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_insecure_sets_variables_and_warns(kai_run, write_profiles):
    config = write_profiles("[profiles.x]\ninsecure = true\n")
    view, run = child_view(kai_run, config, "-p", "x", urls=[])
    env = view["env"]
    assert env["PYTHONHTTPSVERIFY"] == "0"
    assert env["NODE_TLS_REJECT_UNAUTHORIZED"] == "0"
    assert env["GIT_SSL_NO_VERIFY"] == "1"
    assert "kai-run: warning:" in run.stderr
    assert "requests and httpx ignore" in run.stderr


def test_openai_proxy(kai_run, write_profiles):
    config = write_profiles(
        """
        [profiles.off]
        https_proxy = "http://p.example:1"
        [profiles.on]
        https_proxy = "http://p.example:1"
        openai_proxy = true
        [profiles.url]
        openai_proxy = "http://other.example:2"
        """
    )
    off, _ = child_view(
        kai_run, config, "-p", "off", urls=[], env={"OPENAI_PROXY": "http://stale:1"}
    )
    assert "OPENAI_PROXY" not in off["env"]
    on, _ = child_view(kai_run, config, "-p", "on", urls=[])
    assert on["env"]["OPENAI_PROXY"] == "http://p.example:1"
    url, _ = child_view(kai_run, config, "-p", "url", urls=[])
    assert url["env"]["OPENAI_PROXY"] == "http://other.example:2"


def test_cidr_in_no_proxy_is_kept_with_a_warning(kai_run, write_profiles):
    config = write_profiles(
        '[profiles.x]\nhttps_proxy = "http://p.example:1"\nno_proxy = ["10.0.0.0/8"]\n'
    )
    view, run = child_view(kai_run, config, "-p", "x", urls=["https://10.1.2.3/"])
    assert "10.0.0.0/8" in view["env"]["NO_PROXY"].split(",")
    assert view["selected"]["https://10.1.2.3/"] is None  # requests honours CIDR
    assert "CIDR" in run.stderr and "httpx" in run.stderr


def test_socks4_is_accepted_with_a_warning(kai_run, write_profiles):
    config = write_profiles('[profiles.x]\nall_proxy = "socks4://127.0.0.1:1080"\n')
    view, run = child_view(kai_run, config, "-p", "x", urls=[])
    assert view["env"]["ALL_PROXY"] == view["env"]["all_proxy"] == "socks4://127.0.0.1:1080"
    assert "warning" in run.stderr and "socks4" in run.stderr


def test_exec_path_imports_nothing_heavy(write_profiles):
    config = write_profiles(CORP)
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "kai_launch",
            "-c",
            str(config),
            "-p",
            "corp",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CORP_PROXY_PASSWORD": "x", "KAI_OAUTH_SECRET": "y"},
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert imported, "importtime printed nothing"
    for heavy in ("typer", "rich", "requests", "tomlkit", "cryptography", "click"):
        assert heavy not in imported, heavy


def test_parse_cache_is_invalidated_when_the_file_changes(kai_run, write_profiles):
    config = write_profiles('[profiles.x]\nenv = { V = "one" }\n')
    show = [sys.executable, "-c", "import os; print(os.environ['V'])"]
    assert kai_run("-c", str(config), "-p", "x", "--", *show).stdout == "one\n"
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "kai-run" / "parsed"
    assert len(list(cache.glob("*.marshal"))) == 1
    # Same size, same second: only mtime_ns / inode tell the difference.
    st = config.stat()
    config.write_text('[profiles.x]\nenv = { V = "two" }\n')
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert kai_run("-c", str(config), "-p", "x", "--", *show).stdout == "two\n"
    # An invalid file is never served from the cache.
    config.write_text('[profiles.x]\nenv = { V = "two" }\nbogus = 1\n')
    run = kai_run("-c", str(config), "-p", "x", "--", *show)
    assert run.returncode == 2 and "unknown key 'bogus'" in run.stderr


def test_child_gets_default_sigpipe(kai_run, write_profiles):
    """Python ignores SIGPIPE; an exec'd child must not inherit that (`yes | head` must end quietly)."""
    config = write_profiles(CORP)
    proc = subprocess.run(
        f"{sys.executable} -m kai_launch -c {config} -p base -- yes | head -1; "
        'echo "status=${PIPESTATUS[0]}"',
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.splitlines() == ["y", "status=141"], proc
    assert "Broken pipe" not in proc.stderr


def test_nul_in_value_is_a_clean_error(kai_run, write_profiles):
    config = write_profiles('[profiles.p]\nenv = { X = "a\\u0000b" }\n')
    run = kai_run("-c", str(config), "-p", "p", "--", "true")
    assert run.returncode == 2
    assert run.stderr.startswith("kai-run: error: the value for X contains a NUL character")
    assert "Traceback" not in run.stderr


def test_last_of_set_and_unset_wins(kai_run, write_profiles):
    config = write_profiles("[profiles.p]\n")
    code = "import os; print(os.environ.get('X', 'absent'))"
    run = kai_run(
        "-c",
        str(config),
        "-p",
        "p",
        "--unset",
        "X",
        "--set",
        "X=1",
        "--",
        sys.executable,
        "-c",
        code,
    )
    assert run.stdout == "1\n"
    run = kai_run(
        "-c",
        str(config),
        "-p",
        "p",
        "--set",
        "X=1",
        "--unset",
        "X",
        "--",
        sys.executable,
        "-c",
        code,
    )
    assert run.stdout == "absent\n"


def test_missing_shebang_interpreter_is_126(kai_run, write_profiles, tmp_path):
    config = write_profiles(CORP)
    script = tmp_path / "s.sh"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    run = kai_run("-c", str(config), "-p", "base", "--", str(script))
    assert run.returncode == 126
    assert "interpreter" in run.stderr


def test_parse_cache_is_private(kai_run, write_profiles):
    config = write_profiles('[profiles.p]\nenv = { PASSWORD = "plain" }\n')
    config.chmod(0o600)
    assert kai_run("-c", str(config), "-p", "p", "--", "true").returncode == 0
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "kai-run" / "parsed"
    assert cache.stat().st_mode & 0o077 == 0
    for entry in cache.iterdir():
        assert entry.stat().st_mode & 0o077 == 0


def test_cache_sees_a_rewrite_with_the_same_size_mtime_and_inode(kai_run, write_profiles, tmp_path):
    import shutil

    v1 = write_profiles('[profiles.a]\nenv = { P = "one" }\n', name="v1.toml")
    v2 = write_profiles('[profiles.a]\nenv = { P = "two" }\n', name="v2.toml")
    st = v1.stat()
    os.utime(v2, ns=(st.st_atime_ns, st.st_mtime_ns))
    live = tmp_path / "profiles.toml"
    shutil.copy2(v1, live)
    show = [sys.executable, "-c", "import os; print(os.environ['P'])"]
    assert kai_run("-c", str(live), "-p", "a", "--", *show).stdout == "one\n"
    shutil.copy2(v2, live)  # same inode, same size, mtime copied back
    assert kai_run("-c", str(live), "-p", "a", "--", *show).stdout == "two\n"
