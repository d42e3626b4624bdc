"""PAC files (`pac_url`): real PAC files served by a loopback HTTP(S) server or read from disk,
evaluated by the real pypac/dukpy, exported to real child processes (requests reads them).

The PACs here only call shExpMatch, dnsDomainIs, localHostOrDomainIs and isPlainHostName, which
resolve nothing; the names they route are under `.invalid` and are never looked up (an autouse
guard refuses any lookup of a non-loopback name in this process). A client that must really go
through the proxy the PAC names asks a real mitmdump for a `.invalid` name that a test addon maps
to the loopback upstream, as in test_e2e.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.servers import HangingServer, StaticServer, closed_port
from typer.testing import CliRunner

from kai_launch import pac as pacmod
from kai_launch.cli import app

PROXY = "proxy.kai-pac.invalid:3128"
AGREE_PAC = """
function FindProxyForURL(url, host) {
  if (dnsDomainIs(host, ".corp.invalid") || isPlainHostName(host)) return "DIRECT";
  if (localHostOrDomainIs(host, "intranet.other.invalid")) return "DIRECT";
  return "PROXY proxy.kai-pac.invalid:3128; DIRECT";
}
"""
DISAGREE_PAC = """
function FindProxyForURL(url, host) {
  if (dnsDomainIs(host, ".corp.invalid")) return "DIRECT";
  if (shExpMatch(host, "*.eu.invalid")) return "PROXY proxy-eu.invalid:8080";
  if (shExpMatch(host, "*.socks.invalid")) return "SOCKS5 socks.invalid:1080; DIRECT";
  return "PROXY proxy-us.invalid:3128";
}
"""
API = "https://api.openai.invalid/v1/models"
LLM = "https://llm.corp.invalid/v1"
WIKI = "http://wiki/start"

CHILD = textwrap.dedent(
    """
    import json, os, sys
    import requests.utils
    urls = sys.argv[1:]
    out = {
        "env": dict(os.environ),
        "selected": {u: requests.utils.select_proxy(u, requests.utils.get_environ_proxies(u)) for u in urls},
    }
    print(json.dumps(out))
    """
)


# Every test: no lookup of a non-loopback name in this process.
pytestmark = pytest.mark.usefixtures("resolver_guard")


@pytest.fixture
def server() -> Iterator[StaticServer]:
    with StaticServer() as s:
        yield s


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def profile_text(name: str, pac_url: str, urls: list[str], extra: str = "") -> str:
    return (
        f"[profiles.{name}]\npac_url = {json.dumps(pac_url)}\n"
        f"check_urls = {toml_list(urls)}\n{textwrap.dedent(extra)}"
    )


def child_view(kai_run, config: Path, *args: str, urls: list[str], env=None, **kw):
    run = kai_run("-c", str(config), *args, "--", sys.executable, "-c", CHILD, *urls, env=env, **kw)
    assert run.returncode == 0, run
    return json.loads(run.stdout), run


def cli(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def cache_files() -> list[Path]:
    return sorted((Path(os.environ["XDG_CACHE_HOME"]) / "kai-run" / "pac").glob("*.json"))


def age_cache(seconds: float) -> None:
    """Pretend every cached PAC was fetched `seconds` ago."""
    for path in cache_files():
        data = json.loads(path.read_text())
        data["fetched_at"] -= seconds
        path.write_text(json.dumps(data))


# --- what the child gets ------------------------------------------------------------------------


def test_agreement_exports_the_proxy_and_no_proxy_from_direct_targets(
    kai_run, write_profiles, server
):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(
        profile_text(
            "corp",
            url,
            [API, LLM, WIKI, "https://intranet.other.invalid/"],
            """
            no_proxy = ["written.example"]
            [profiles.corp.proxy_auth]
            username = "jdoe"
            password = { env = "PAC_PROXY_PW" }
            """,
        )
    )
    urls = [API, LLM, WIKI, "https://a.llm.corp.invalid/", "http://example.invalid/"]
    view, run = child_view(
        kai_run,
        config,
        "-p",
        "corp",
        urls=urls,
        env={"PAC_PROXY_PW": "p@ss", "https_proxy": "http://stale.invalid:1"},
    )
    proxy = "http://jdoe:p%40ss@proxy.kai-pac.invalid:3128"
    env = view["env"]
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        assert env[name] == proxy, name
    assert env["ALL_PROXY"] == env["all_proxy"] == ""  # the PAC only fills http/https
    no_proxy = env["NO_PROXY"].split(",")
    assert env["NO_PROXY"] == env["no_proxy"]
    for host in ("written.example", "llm.corp.invalid", "wiki", "intranet.other.invalid"):
        assert host in no_proxy, host
    assert "api.openai.invalid" not in no_proxy
    # requests itself, in the child, routes by these variables.
    assert view["selected"][API] == proxy
    assert view["selected"]["http://example.invalid/"] == proxy
    for direct in (LLM, WIKI, "https://a.llm.corp.invalid/"):
        assert view["selected"][direct] is None, direct
    assert "p@ss" not in run.stderr and "warning" not in run.stderr
    assert server.hits == {"/proxy.pac": 1}
    ua = dict(server.headers_seen[0])["User-Agent"]
    assert ua.startswith("kai-run/")


MAP_ADDON = """
from mitmproxy import http

class RouteToLoopback:
    # requestheaders: before the loopback guard's `request` hook (the guard is loaded first).
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.host.endswith(".kai-pac.invalid"):
            flow.request.host = "127.0.0.1"

addons = [RouteToLoopback()]
"""


def test_a_real_requests_child_goes_through_the_proxy_the_pac_names(
    kai_run, write_profiles, server, mitmdump, plain_upstream, tmp_path
):
    addon = tmp_path / "map_addon.py"
    addon.write_text(MAP_ADDON)
    mitm = mitmdump(addon=addon)
    pac = (
        "function FindProxyForURL(url, host) {\n"
        f'  if (dnsDomainIs(host, ".kai-pac.invalid")) return "PROXY 127.0.0.1:{mitm.port}";\n'
        '  return "DIRECT";\n}\n'
    )
    target = f"http://api.kai-pac.invalid:{plain_upstream.port}/v1/models"
    config = write_profiles(profile_text("corp", server.serve("/p.pac", pac), [target]))
    run = kai_run(
        "-c",
        str(config),
        "-p",
        "corp",
        "--",
        sys.executable,
        "-c",
        "import sys, requests; r = requests.get(sys.argv[1], timeout=20); "
        "r.raise_for_status(); print(r.json()['data'][0]['id'])",
        target,
    )
    assert run.returncode == 0, (run, mitm.log_tail())
    assert run.stdout.strip() == plain_upstream.model
    seen = plain_upstream.requests[-1]
    assert seen.path == "/v1/models"
    # It went through the proxy (the .invalid name resolves nowhere; the addon mapped it).
    assert f"127.0.0.1:{plain_upstream.port}/v1/models" in mitm.log_text()


def test_disagreement_warns_with_each_route_and_uses_the_first_check_urls_proxy(
    kai_run, write_profiles, server
):
    url = server.serve("/proxy.pac", DISAGREE_PAC)
    urls = [
        "https://api.eu.invalid/v1",
        "https://api.us.invalid/v1",
        "https://s.socks.invalid/",
        LLM,
    ]
    config = write_profiles(
        profile_text(
            "corp",
            url,
            urls,
            '[profiles.corp.proxy_auth]\nusername = "jdoe"\npassword = "hunter2"\n',
        )
    )
    view, run = child_view(kai_run, config, "-p", "corp", urls=urls)
    assert view["env"]["HTTPS_PROXY"] == "http://jdoe:hunter2@proxy-eu.invalid:8080"
    assert view["env"]["HTTP_PROXY"] == "http://jdoe:hunter2@proxy-eu.invalid:8080"
    assert "llm.corp.invalid" in view["env"]["NO_PROXY"].split(",")
    warning = [line for line in run.stderr.splitlines() if "different proxies" in line]
    assert len(warning) == 1, run.stderr
    text = warning[0]
    assert text.startswith("kai-run: warning: the PAC file")
    assert "https://api.eu.invalid/v1 -> PROXY proxy-eu.invalid:8080" in text
    assert "https://api.us.invalid/v1 -> PROXY proxy-us.invalid:3128" in text
    assert "https://s.socks.invalid/ -> SOCKS5 socks.invalid:1080" in text
    assert f"{LLM} -> DIRECT" in text
    assert (
        "uses http://proxy-eu.invalid:8080 (the proxy of the first check URL that gets one)" in text
    )
    assert "hunter2" not in run.stderr


def test_explicit_https_proxy_wins_over_the_pac(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", DISAGREE_PAC)
    urls = ["https://api.eu.invalid/v1", "https://api.us.invalid/v1"]
    config = write_profiles(
        profile_text("corp", url, urls, 'https_proxy = "http://written.invalid:9999"\n')
    )
    view, run = child_view(kai_run, config, "-p", "corp", urls=urls)
    assert view["env"]["HTTPS_PROXY"] == view["env"]["https_proxy"] == "http://written.invalid:9999"
    assert view["env"]["HTTP_PROXY"] == "http://proxy-eu.invalid:8080"  # http:// is the PAC's
    assert "https:// URLs use the profile's https_proxy http://written.invalid:9999" in run.stderr
    assert "http:// URLs use http://proxy-eu.invalid:8080" in run.stderr


def test_explicit_all_proxy_wins_for_every_scheme(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(
        profile_text("corp", url, [API, LLM], 'all_proxy = "socks5h://127.0.0.1:1"\n')
    )
    view, run = child_view(kai_run, config, "-p", "corp", urls=[API])
    assert view["env"]["HTTPS_PROXY"] == view["env"]["HTTP_PROXY"] == ""
    assert view["env"]["ALL_PROXY"] == "socks5h://127.0.0.1:1"
    assert "llm.corp.invalid" in view["env"]["NO_PROXY"].split(",")
    assert "all_proxy is written" in run.stderr


def test_child_profile_pac_url_wins_in_extends(kai_run, write_profiles, server, tmp_path):
    server.serve("/other.pac", 'function FindProxyForURL(u, h) { return "PROXY other.invalid:1"; }')
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(
        f"""
        [profiles.base]
        pac_url = {json.dumps(server.url("/other.pac"))}
        check_urls = [{json.dumps(API)}]

        [profiles.child]
        extends = "base"
        pac_url = {json.dumps(url)}
        """
    )
    view, _ = child_view(kai_run, config, "-p", "child", urls=[])
    assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert server.hits == {"/proxy.pac": 1}


# --- file: PACs -----------------------------------------------------------------------------------


def test_file_pac_absolute_relative_home_and_var(kai_run, write_profiles, tmp_path):
    conf_dir = tmp_path / "conf"
    (conf_dir / "pacs").mkdir(parents=True)
    (conf_dir / "pacs" / "rel.pac").write_text(
        'function FindProxyForURL(u, h) { return "PROXY rel.invalid:1"; }'
    )
    home = Path(os.environ["HOME"])
    (home / "home.pac").write_text(
        'function FindProxyForURL(u, h) { return "HTTPS home.invalid:2"; }'
    )
    abs_pac = tmp_path / "abs dir" / "abs.pac"
    abs_pac.parent.mkdir()
    abs_pac.write_text('function FindProxyForURL(u, h) { return "SOCKS abs.invalid:3"; }')
    (tmp_path / "var.pac").write_text(
        'function FindProxyForURL(u, h) { return "SOCKS4 var.invalid:4"; }'
    )
    config = write_profiles(
        profile_text("rel", "file:pacs/rel.pac", [API])
        + profile_text("home", "file:~/home.pac", [API])
        + profile_text("abs", "file://" + str(abs_pac).replace(" ", "%20"), [API])
        + profile_text("var", "file:${PAC_DIR}/var.pac", [API]),
        directory=conf_dir,
    )
    expected = {
        "rel": "http://rel.invalid:1",
        "home": "https://home.invalid:2",
        "abs": "socks5://abs.invalid:3",
        "var": "socks4://var.invalid:4",
    }
    for name, proxy in expected.items():
        # cwd elsewhere: a relative file: path is relative to the profile's file.
        view, _ = child_view(
            kai_run, config, "-p", name, urls=[], env={"PAC_DIR": str(tmp_path)}, cwd=home
        )
        assert view["env"]["HTTPS_PROXY"] == proxy, name


def test_file_pac_is_reread_when_it_changes(kai_run, write_profiles, tmp_path):
    pac = tmp_path / "proxy.pac"
    pac.write_text('function FindProxyForURL(u, h) { return "PROXY one.invalid:1"; }')
    config = write_profiles(profile_text("f", "file:proxy.pac", [API]))
    view, _ = child_view(kai_run, config, "-p", "f", urls=[])
    assert view["env"]["HTTPS_PROXY"] == "http://one.invalid:1"
    pac.write_text('function FindProxyForURL(u, h) { return "PROXY second.invalid:22"; }')
    view, _ = child_view(kai_run, config, "-p", "f", urls=[])
    assert view["env"]["HTTPS_PROXY"] == "http://second.invalid:22"


def test_missing_file_pac_is_an_error(kai_run, write_profiles):
    config = write_profiles(profile_text("f", "file:nope.pac", [API]))
    run = kai_run("-c", str(config), "-p", "f", "--", "true")
    assert run.returncode == 2
    assert "PAC file" in run.stderr and "nope.pac does not exist" in run.stderr
    assert "key 'pac_url'" in run.stderr and "hint:" in run.stderr


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"ftp://wpad.invalid/proxy.pac"', "scheme 'ftp:'"),
        ('"wpad.invalid/proxy.pac"', "no scheme"),
        ('"http:///proxy.pac"', "has no host"),
        ('"file:"', "names no file"),
        ("3", "expected a string"),
    ],
)
def test_bad_pac_url_is_a_one_line_error_with_file_line_and_key(
    kai_run, write_profiles, value, words
):
    config = write_profiles(
        f'[profiles.ok]\ndescription = "x"\n\n[profiles.bad]\ncheck_urls = ["{API}"]\n'
        f"pac_url = {value}\n"
    )
    run = kai_run("-c", str(config), "-p", "ok", "--", "true")
    assert run.returncode == 2, run
    first, hint = run.stderr.splitlines()
    assert words in first
    assert f"{config}, line 6, profile 'bad', key 'pac_url'" in first
    assert hint.startswith("  hint:") and "file:" in hint


def test_profiles_set_validates_pac_url(kai_run, write_profiles, tmp_path):
    config = write_profiles('[profiles.x]\ndescription = "d"\n')
    bad = kai_run("-c", str(config), "profiles", "set", "x", "pac_url", "gopher://x/p.pac")
    assert bad.returncode == 2 and "scheme 'gopher:'" in bad.stderr
    # A relative file: path on the command line is relative to the current directory, as
    # for ca_bundle.
    work = tmp_path / "work"
    work.mkdir()
    good = kai_run("-c", str(config), "profiles", "set", "x", "pac_url", "file:p.pac", cwd=work)
    assert good.returncode == 0, good
    assert f'pac_url = "file:{work / "p.pac"}"' in config.read_text()
    good = kai_run("-c", str(config), "profiles", "set", "x", "pac_url", "file:~/p.pac")
    assert 'pac_url = "file:~/p.pac"' in config.read_text()


def test_copy_to_another_file_makes_a_relative_file_pac_absolute():
    from kai_launch import edit

    site_dir = Path(os.environ["XDG_CONFIG_DIRS"]) / "kai-run"
    site_dir.mkdir(parents=True)
    (site_dir / "profiles.toml").write_text(
        f'[profiles.corp]\npac_url = "file:pacs/corp.pac"\ncheck_urls = ["{API}"]\n'
    )
    result = edit.copy_profile(edit.edit_target(None, {}), "corp", "mine")
    text = Path(result.path).read_text()
    assert f'pac_url = "file:{site_dir / "pacs" / "corp.pac"}"' in text


def test_pac_url_without_check_urls_says_to_add_them(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(f"[profiles.x]\npac_url = {json.dumps(url)}\n")
    run = kai_run("-c", str(config), "-p", "x", "--", "true")
    assert run.returncode == 2
    assert "no check_urls" in run.stderr
    assert "hint: add check_urls" in run.stderr
    assert server.hits == {}  # nothing fetched for nothing


# --- fetch failures -------------------------------------------------------------------------------


def test_404_is_an_error_naming_the_status(kai_run, write_profiles, server):
    config = write_profiles(profile_text("x", server.url("/missing.pac"), [API]))
    run = kai_run("-c", str(config), "-p", "x", "--", "true")
    assert run.returncode == 2, run
    first = run.stderr.splitlines()[0]
    assert first.startswith("kai-run: error: fetching the PAC file http://127.0.0.1:")
    assert "HTTP 404" in first and "profile 'x'" in first and "key 'pac_url'" in first
    assert "Traceback" not in run.stderr


def test_connection_refused_is_an_error(write_profiles):
    port = closed_port()
    config = write_profiles(profile_text("x", f"http://127.0.0.1:{port}/proxy.pac", [API]))
    result = cli("-c", str(config), "env", "-p", "x")
    assert result.exit_code == 2
    assert "connection refused" in result.stderr
    assert "reachable from this network without a proxy" in result.stderr


def test_hanging_pac_server_times_out(write_profiles):
    with HangingServer() as hang:
        config = write_profiles(profile_text("x", f"{hang.url}/proxy.pac", [API]))
        from kai_launch.config import load_config
        from kai_launch.profiles import resolve_profile

        profile = resolve_profile(load_config(str(config), os.environ), "x")
        start = time.monotonic()
        with pytest.raises(pacmod.PacError) as info:
            pacmod.for_profile(profile, os.environ, timeout=0.5)
        assert time.monotonic() - start < 5
        assert "no answer within 0.5 s" in info.value.what
        # doctor's --timeout governs the fetch too
        start = time.monotonic()
        code, rows = doctor("-c", str(config), "-p", "x", "--timeout", "0.5")
        assert time.monotonic() - start < 10
        assert code == 1
        assert row(rows, "pac")["status"] == "fail"
        assert "no answer within 0.5 s" in row(rows, "pac")["message"]


def test_the_pac_is_fetched_directly_not_through_the_parents_proxy(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API]))
    dead = f"http://127.0.0.1:{closed_port()}"
    view, _ = child_view(
        kai_run,
        config,
        "-p",
        "x",
        urls=[],
        env={"HTTP_PROXY": dead, "http_proxy": dead, "ALL_PROXY": dead, "NO_PROXY": ""},
    )
    assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert server.hits == {"/proxy.pac": 1}


def test_https_pac_is_verified_with_the_profiles_ca_bundle(kai_run, write_profiles, tmp_path):
    ca = trustme.CA()
    ca_file = tmp_path / "pac-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with StaticServer(ca=ca) as tls:
        url = tls.serve("/proxy.pac", AGREE_PAC)
        assert url.startswith("https://")
        config = write_profiles(
            profile_text("trusted", url, [API], f'ca_bundle = "{ca_file}"\n')
            + profile_text("untrusted", tls.serve("/other.pac", AGREE_PAC), [API])
        )
        view, _ = child_view(kai_run, config, "-p", "trusted", urls=[])
        assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
        run = kai_run("-c", str(config), "-p", "untrusted", "--", "true")
        assert run.returncode == 2
        assert "TLS verification failed" in run.stderr
        assert "add the CA" in run.stderr and "ca_bundle" in run.stderr


# --- malformed PACs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("js", "words"),
    [
        ("function FindProxyForURL(url, host) { return ", "SyntaxError"),
        ("var notAPac = 1;", "FindProxyForURL"),
        ('function FindProxyForURL(u, h) { return "BOGUS thing"; }', "'BOGUS thing'"),
        ("function FindProxyForURL(u, h) { return 5; }", "returned 5"),
        (
            'function FindProxyForURL(u, h) { if (h == "0.0.0.0") return "DIRECT"; '
            'throw new Error("pac exploded"); }',
            "pac exploded",
        ),
    ],
)
def test_malformed_pac_is_an_error(kai_run, write_profiles, server, js, words):
    config = write_profiles(profile_text("x", server.serve("/proxy.pac", js), [API]))
    run = kai_run("-c", str(config), "-p", "x", "--", "true")
    assert run.returncode == 2, run
    assert words in run.stderr
    assert "kai-run: error: the PAC file" in run.stderr
    assert "hint:" in run.stderr and "Traceback" not in run.stderr


def test_pac_that_never_answers_is_stopped(write_profiles, server, monkeypatch):
    js = "function FindProxyForURL(u, h) { while (true) {} }"
    config = write_profiles(profile_text("x", server.serve("/loop.pac", js), [API]))
    from kai_launch.config import load_config
    from kai_launch.profiles import resolve_profile

    profile = resolve_profile(load_config(str(config), os.environ), "x")
    monkeypatch.setattr(pacmod, "EVAL_MIN_TIMEOUT", 2.0)
    start = time.monotonic()
    with pytest.raises(pacmod.PacError) as info:
        pacmod.for_profile(profile, os.environ, timeout=2.0)
    assert time.monotonic() - start < 8
    assert "did not answer within 2 s" in info.value.what
    assert "loops" in (info.value.hint or "")


# --- the cache ------------------------------------------------------------------------------------


def test_cache_is_reused_without_a_fetch_then_refetched_after_max_age(
    kai_run, write_profiles, server
):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API, LLM]))
    for _ in range(3):
        view, _ = child_view(kai_run, config, "-p", "x", urls=[])
        assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert server.hits == {"/proxy.pac": 1}
    (cached,) = cache_files()
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700
    record = json.loads(cached.read_text())
    assert record["location"] == url and record["text"] == AGREE_PAC
    assert record["answers"] == {API: "PROXY proxy.kai-pac.invalid:3128; DIRECT", LLM: "DIRECT"}
    assert not list(cached.parent.glob("*.tmp"))
    # Past MAX_AGE the PAC is fetched (and evaluated) again.
    server.serve("/proxy.pac", 'function FindProxyForURL(u, h) { return "PROXY new.invalid:1"; }')
    age_cache(pacmod.MAX_AGE + 60)
    view, _ = child_view(kai_run, config, "-p", "x", urls=[])
    assert view["env"]["HTTPS_PROXY"] == "http://new.invalid:1"
    assert server.hits == {"/proxy.pac": 2}


def test_stale_cache_is_used_with_a_warning_when_the_refetch_fails(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API]))
    child_view(kai_run, config, "-p", "x", urls=[])
    age_cache(13 * 3600)
    server.serve("/proxy.pac", "gone", status=503, content_type="text/plain")
    view, run = child_view(kai_run, config, "-p", "x", urls=[])
    assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert "warning: fetching the PAC file" in run.stderr
    assert "HTTP 503" in run.stderr
    assert "using the copy cached 13.0 h ago" in run.stderr
    assert server.hits == {"/proxy.pac": 2}
    # The next runs do not wait on the failing server again (for RETRY_AFTER).
    view, run = child_view(kai_run, config, "-p", "x", urls=[])
    assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert "could not be fetched lately" in run.stderr and "next try in 10 min" in run.stderr
    assert server.hits == {"/proxy.pac": 2}
    # --refresh-pac with the server down: the same fallback, not an error.
    server.close()
    view, run = child_view(kai_run, config, "--refresh-pac", "-p", "x", urls=[])
    assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert "connection refused" in run.stderr and "cached 13.0 h ago" in run.stderr


def test_a_corrupt_cache_file_is_refetched_not_an_error(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API]))
    child_view(kai_run, config, "-p", "x", urls=[])
    (cached,) = cache_files()
    cached.write_text("{not json")
    view, _ = child_view(kai_run, config, "-p", "x", urls=[])
    assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert server.hits == {"/proxy.pac": 2}
    assert json.loads(cached.read_text())["text"] == AGREE_PAC


def test_refresh_pac_refetches_on_the_exec_path_env_doctor_route_and_show(
    kai_run, write_profiles, server
):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API]))
    child_view(kai_run, config, "-p", "x", urls=[])
    assert server.hits == {"/proxy.pac": 1}
    server.serve("/proxy.pac", 'function FindProxyForURL(u, h) { return "PROXY fresh.invalid:7"; }')
    view, _ = child_view(kai_run, config, "-p", "x", urls=[])
    assert view["env"]["HTTPS_PROXY"] == f"http://{PROXY}"  # cached
    view, _ = child_view(kai_run, config, "-p", "x", "--refresh-pac", urls=[])
    assert view["env"]["HTTPS_PROXY"] == "http://fresh.invalid:7"
    assert server.hits == {"/proxy.pac": 2}
    expected = 2
    for args in (
        ["env", "-p", "x", "--refresh-pac"],
        ["profiles", "show", "x", "--refresh-pac"],
        ["route", API, "-p", "x", "--refresh-pac"],
        ["--refresh-pac", "env", "-p", "x"],
    ):
        result = cli("-c", str(config), *args)
        assert result.exit_code == 0, (args, result.output)
        assert "fresh.invalid:7" in result.stdout, args
        expected += 1
        assert server.hits == {"/proxy.pac": expected}, args
    _, rows = doctor("-c", str(config), "-p", "x", "--refresh-pac")
    assert server.hits == {"/proxy.pac": expected + 1}
    assert row(rows, "pac")["message"].startswith("fetched ")
    cli("-c", str(config), "env", "-p", "x")  # without the flag: cached
    assert server.hits == {"/proxy.pac": expected + 1}


def test_warm_exec_path_imports_no_pypac_dukpy_or_requests(write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API, LLM]))
    base = [sys.executable, "-m", "kai_launch", "-c", str(config), "-p", "x", "--"]
    cold = subprocess.run(
        [sys.executable, "-X", "importtime", *base[1:], "true"], capture_output=True, text=True
    )
    assert cold.returncode == 0, cold.stderr
    # The cold path fetched with requests and evaluated (pypac runs in a child process).
    assert "requests" in _imported(cold.stderr)
    (cached,) = cache_files()
    assert json.loads(cached.read_text())["answers"] == {
        API: "PROXY proxy.kai-pac.invalid:3128; DIRECT",
        LLM: "DIRECT",
    }
    server.close()  # a warm run must not need it
    warm = subprocess.run(
        [sys.executable, "-X", "importtime", *base[1:], "env"], capture_output=True, text=True
    )
    assert warm.returncode == 0, warm.stderr
    imported = _imported(warm.stderr)
    assert imported, "importtime printed nothing"
    for heavy in ("pypac", "dukpy", "_dukpy", "requests", "urllib3", "publicsuffixlist", "typer"):
        assert heavy not in imported, heavy
    assert f"HTTPS_PROXY=http://{PROXY}" in warm.stdout
    assert "kai-run: warning" not in warm.stderr


def _imported(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


# --- doctor and route -----------------------------------------------------------------------------


def doctor(*args: str) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(app, ["doctor", *args, "--json"])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def row(rows: list[dict[str, Any]], check: str) -> dict[str, Any]:
    found = [r for r in rows if r["check"] == check]
    assert len(found) == 1, (check, rows)
    return found[0]


LOOPBACK_PAC = """
function FindProxyForURL(url, host) {
  if (host == "127.0.0.1") return "DIRECT";
  return "PROXY 127.0.0.1:%d";
}
"""


def test_doctor_pac_check_passes_and_lists_each_targets_route(
    write_profiles, server, plain_upstream, resolver_guard
):
    proxy_port = closed_port()
    url = server.serve("/proxy.pac", LOOPBACK_PAC % proxy_port)
    direct = f"http://127.0.0.1:{plain_upstream.port}/v1/models"
    proxied = "https://api.kai-pac.invalid/v1/models"
    config = write_profiles(profile_text("x", url, [direct, proxied]))
    _, rows = doctor("-c", str(config), "-p", "x", "--timeout", "2")
    pac = row(rows, "pac")
    assert pac["status"] == "ok", pac
    assert pac["target"] == url
    message = pac["message"]
    assert message.startswith(f"fetched {url} in ")
    assert "; parsed and evaluated for 2 URLs in " in message
    assert f"{direct} -> DIRECT" in message
    assert f"{proxied} -> PROXY 127.0.0.1:{proxy_port}" in message
    assert f"exports http://127.0.0.1:{proxy_port}" in message
    assert pac["duration_ms"] > 0
    # The PAC's proxy is the one doctor probes (closed: fails fast, the pac row stays ok).
    tcp = row(rows, "proxy.tcp")
    assert tcp["status"] == "fail" and tcp["target"] == f"http://127.0.0.1:{proxy_port}"
    assert f"the PAC file's answer (pac_url {url})" in tcp["hint"]
    assert [r["check"] for r in rows][:2] == ["config", "pac"]
    assert resolver_guard == []
    # Second run: doctor fetches again (is the PAC server up now?), the answers of the same
    # PAC are reused.
    _, rows = doctor("-c", str(config), "-p", "x", "--timeout", "2")
    message = row(rows, "pac")["message"]
    assert message.startswith(f"fetched {url} in ")
    assert "answers for 2 URLs cached with it" in message
    assert server.hits == {"/proxy.pac": 2}


def test_doctor_pac_check_fails_with_a_hint(write_profiles, server):
    config = write_profiles(
        profile_text("missing", server.url("/missing.pac"), [API])
        + profile_text(
            "broken", server.serve("/b.pac", "function FindProxyForURL(url, host) {"), [API]
        )
        + f"[profiles.nourls]\npac_url = {json.dumps(server.url('/b.pac'))}\n"
    )
    for name, words in (
        ("missing", "HTTP 404"),
        ("broken", "SyntaxError"),
        ("nourls", "no check_urls"),
    ):
        code, rows = doctor("-c", str(config), "-p", name)
        assert code == 1, name
        pac = row(rows, "pac")
        assert pac["status"] == "fail", pac
        assert words in pac["message"], pac
        assert pac["hint"], pac
        assert row(rows, "config")["status"] == "ok"


def test_doctor_pac_disagreement_warns(write_profiles, server):
    config = write_profiles(
        profile_text(
            "x",
            server.serve("/proxy.pac", DISAGREE_PAC),
            ["https://api.eu.invalid/v1", "https://api.us.invalid/v1"],
            'https_proxy = "http://127.0.0.1:9"\nhttp_proxy = "http://127.0.0.1:9"\n',
        )
    )
    _, rows = doctor("-c", str(config), "-p", "x", "--timeout", "1")
    pac = row(rows, "pac")
    assert pac["status"] == "warn"
    assert "different proxies" in pac["hint"]


def test_route_shows_the_pacs_answer_beside_the_clients(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", DISAGREE_PAC)
    config = write_profiles(profile_text("x", url, ["https://api.eu.invalid/v1"]))
    run = kai_run("-c", str(config), "route", "https://api.us.invalid/v1", "-p", "x")
    assert run.returncode == 0, run
    lines = run.stdout.splitlines()
    assert lines[0] == "route for https://api.us.invalid/v1"
    assert lines[1].split()[:3] == ["PAC", "file", "http://proxy-us.invalid:3128"]
    assert 'FindProxyForURL returned "PROXY proxy-us.invalid:3128"' in lines[1]
    assert any(line.split()[:2] == ["requests", "http://proxy-eu.invalid:8080"] for line in lines)
    assert "but the PAC file says http://proxy-us.invalid:3128" in run.stdout
    as_json = kai_run("-c", str(config), "route", "https://api.us.invalid/v1", "-p", "x", "--json")
    data = json.loads(as_json.stdout)
    assert data["pac"]["proxy"] == "http://proxy-us.invalid:3128"
    assert data["pac"]["answer"] == "PROXY proxy-us.invalid:3128"
    assert data["clients"]["requests"]["proxy"] == "http://proxy-eu.invalid:8080"


def test_route_shows_what_a_launch_does_for_a_url_not_in_check_urls(
    kai_run, write_profiles, server
):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API]))
    new = "https://new.corp.invalid/x"
    run = kai_run("-c", str(config), "route", new, "-p", "x", "--json")
    data = json.loads(run.stdout)
    # The PAC says DIRECT, but a launch exports the check URLs' proxy and no NO_PROXY entry
    # for this host: the clients use the proxy, and route says how to fix it.
    assert data["pac"]["proxy"] is None and data["pac"]["answer"] == "DIRECT"
    assert data["clients"]["requests"]["proxy"] == f"http://{PROXY}"
    assert data["clients"]["curl"]["proxy"] == f"http://{PROXY}"
    assert any("add this URL to check_urls" in line for line in data["disagreements"])
    launched, _ = child_view(kai_run, config, "-p", "x", urls=[new])
    assert launched["selected"][new] == f"http://{PROXY}"


# --- the pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "proxy"),
    [
        ("DIRECT", None),
        ("direct", None),
        ("PROXY p.invalid:3128", "http://p.invalid:3128"),
        ("HTTP p.invalid:80", "http://p.invalid:80"),
        ("HTTPS p.invalid:443", "https://p.invalid:443"),
        ("SOCKS s.invalid:1080", "socks5://s.invalid:1080"),
        ("SOCKS5 s.invalid:1080", "socks5://s.invalid:1080"),
        ("SOCKS4 s.invalid:1080", "socks4://s.invalid:1080"),
        ("proxy [::1]:8080", "http://[::1]:8080"),
    ],
)
def test_parse_entry(entry, proxy):
    assert pacmod.parse_entry(entry) == proxy


@pytest.mark.parametrize("entry", ["PROXY", "PROXY host", "FTP h:1", "PROXY h:x", "PROXY a b"])
def test_parse_entry_rejects(entry):
    with pytest.raises(ValueError):
        pacmod.parse_entry(entry)


def test_direct_host_that_would_cover_a_proxied_target_is_not_added(
    kai_run, write_profiles, server
):
    pac = (
        'function FindProxyForURL(u, h) { if (h == "corp.invalid") return "DIRECT"; '
        'return "PROXY p.invalid:1"; }'
    )
    config = write_profiles(
        profile_text(
            "x",
            server.serve("/p.pac", pac),
            ["https://api.corp.invalid/", "https://corp.invalid/"],
        )
    )
    view, run = child_view(kai_run, config, "-p", "x", urls=[])
    assert "corp.invalid" not in view["env"]["NO_PROXY"].split(",")
    assert "NO_PROXY cannot tell them apart" in run.stderr


def test_verbose_says_where_the_pac_came_from(kai_run, write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API, LLM]))
    run = kai_run("-c", str(config), "-p", "x", "-v", "--", "true")
    assert run.returncode == 0, run
    assert f"kai-run: PAC: fetched {url} in " in run.stderr
    assert f"{API} -> PROXY {PROXY}; {LLM} -> DIRECT" in run.stderr
    run = kai_run("-c", str(config), "-p", "x", "-v", "--", "true")
    assert f"kai-run: PAC: cached copy of {url} (fetched " in run.stderr


def test_profiles_show_names_the_pac_as_the_origin(write_profiles, server):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(profile_text("x", url, [API, LLM]))
    result = cli("-c", str(config), "profiles", "show", "x", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["pac_url"]["value"] == url
    assert data["variables"]["HTTPS_PROXY"]["origin"] == f"PAC file {url}"
    assert f"DIRECT in PAC file {url}" in data["variables"]["NO_PROXY"]["origin"]


def test_doctor_pac_check_warns_on_a_stale_copy(write_profiles, server):
    url = server.serve("/proxy.pac", LOOPBACK_PAC % closed_port())
    config = write_profiles(profile_text("x", url, ["http://127.0.0.1:9/"]))
    doctor("-c", str(config), "-p", "x", "--timeout", "1")
    age_cache(20 * 3600)
    server.serve("/proxy.pac", "down", status=502, content_type="text/plain")
    _, rows = doctor("-c", str(config), "-p", "x", "--timeout", "1")
    pac = row(rows, "pac")
    assert pac["status"] == "warn", pac
    assert pac["message"].startswith(f"stale cached copy of {url} (fetched 20.0 h ago)")
    assert "HTTP 502" in pac["hint"] and "cached 20.0 h ago" in pac["hint"]


def test_config_check_reports_a_missing_file_pac_and_missing_check_urls(kai_run, write_profiles):
    config = write_profiles(
        profile_text("missing", "file:nope.pac", [API])
        + '[profiles.nourls]\npac_url = "http://127.0.0.1:9/p.pac"\n'
        + profile_text("fine", "http://127.0.0.1:9/p.pac", [API])
    )
    run = kai_run("config", "check", "-c", str(config))
    assert run.returncode == 1, run
    assert "nope.pac does not exist" in run.stdout
    assert "no check_urls" in run.stdout
    assert "2 problems" in run.stdout  # and nothing was fetched for `fine`


def test_route_with_proxy_auth_agrees_with_the_pac_and_fetches_no_token(
    kai_run, write_profiles, server
):
    url = server.serve("/proxy.pac", AGREE_PAC)
    config = write_profiles(
        profile_text("x", url, [API])
        + '\n[profiles.x.proxy_auth]\nusername = "jdoe"\npassword = "pw"\n'
        + "[profiles.x.env.TOKEN.oauth2]\n"
        + f'token_url = "http://127.0.0.1:{closed_port()}/token"\n'
        + 'client_id = "c"\nclient_secret = { env = "UNSET_SECRET" }\n'
    )
    run = kai_run("-c", str(config), "route", API, "-p", "x", "--json")
    assert run.returncode == 0, run
    data = json.loads(run.stdout)
    assert data["clients"]["requests"]["proxy"] == f"http://jdoe:***@{PROXY}"
    # Same proxy with and without credentials; aiohttp and node have their own lines.
    assert not [line for line in data["disagreements"] if "PAC file says" in line]


def test_evaluation_ignores_modules_in_the_current_directory(kai_run, write_profiles, tmp_path):
    # A checkout with its own json.py must not be imported by the PAC-evaluating child.
    pac = tmp_path / "proxy.pac"
    pac.write_text(AGREE_PAC)
    config = write_profiles(profile_text("x", f"file://{pac}", [API]))
    work = tmp_path / "checkout"
    work.mkdir()
    marker = tmp_path / "ran"
    (work / "json.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(9)\n")
    # The console script, as a user runs it (`python -m` would put the directory on sys.path
    # for kai-run itself).
    script = Path(sys.executable).with_name("kai-run")
    run = subprocess.run(
        [str(script), "-c", str(config), "-p", "x", "--", sys.executable, "-I", "-c", CHILD],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["env"]["HTTPS_PROXY"] == f"http://{PROXY}"
    assert not marker.exists()


def test_disagreement_with_a_written_http_proxy_says_what_each_scheme_uses(
    kai_run, write_profiles, server
):
    url = server.serve("/proxy.pac", DISAGREE_PAC)
    config = write_profiles(
        profile_text(
            "x",
            url,
            ["https://api.eu.invalid/v1", "https://api.us.invalid/v1"],
            'http_proxy = "http://written.invalid:1"\n',
        )
    )
    _, run = child_view(kai_run, config, "-p", "x", urls=[])
    assert (
        "https:// URLs use http://proxy-eu.invalid:8080 (the proxy of the first check URL that "
        "gets one), http:// URLs use the profile's http_proxy http://written.invalid:1"
    ) in run.stderr


def test_doctor_with_an_unusable_pac_probes_no_target_and_url_needs_check_urls(
    write_profiles, server, resolver_guard
):
    url = server.serve("/proxy.pac", "gone", status=404, content_type="text/plain")
    config = write_profiles(profile_text("x", url, ["https://api.kai-pac.invalid/v1"]))
    code, rows = doctor("-c", str(config), "-p", "x", "--timeout", "2")
    assert code == 1 and row(rows, "pac")["status"] == "fail"
    target = row(rows, "target.route")
    assert target["status"] == "skip" and "PAC file cannot be used" in target["message"]
    assert resolver_guard == []
    # --url cannot stand in for check_urls: a launch would refuse the profile.
    config = write_profiles(f"[profiles.y]\npac_url = {json.dumps(url)}\n", name="y.toml")
    code, rows = doctor("-c", str(config), "-p", "y", "--url", "http://127.0.0.1:9/")
    assert code == 1
    assert "has no check_urls" in row(rows, "pac")["message"]


def test_a_page_without_find_proxy_for_url_is_named_as_such(write_profiles, server):
    url = server.serve("/login.pac", "<html><body>Please log in</body></html>")
    config = write_profiles(profile_text("x", url, [API]))
    _, rows = doctor("-c", str(config), "-p", "x", "--timeout", "2")
    pac = row(rows, "pac")
    assert pac["status"] == "fail"
    assert pac["message"].endswith("cannot be used: it defines no FindProxyForURL function")
    assert "login" in pac["hint"]
