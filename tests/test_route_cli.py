"""`kai-run route URL`: the command line around kai_launch.route.

The answers for requests, urllib and httpx are checked against what those libraries do in a
real child started by kai-run itself (`kai-run -p NAME -- python child.py`), so the environment
compared is exactly the one kai-run gives. Nothing is sent anywhere: the child captures each
request before it connects (requests, urllib) or only asks httpx which transport it mounted.
test_route.py covers the library-level table in depth.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from typer.testing import CliRunner

from kai_launch.cli import app
from kai_launch.route import CLIENTS

PROXY = "http://user:s3cret@127.0.0.1:3128"
SHOWN = "http://user:***@127.0.0.1:3128"

CHILD = r"""
import json, sys

class Seen(Exception):
    pass

def with_requests(url):
    import requests
    from requests.adapters import HTTPAdapter

    class Capture(HTTPAdapter):
        def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
            pool = self.get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
            proxy = None if pool.proxy is None else f"{pool.proxy.host}:{pool.proxy.port}"
            raise Seen({"proxy": proxy, "ca_file": verify if isinstance(verify, str) else None})

    session = requests.Session()
    session.mount("http://", Capture())
    session.mount("https://", Capture())
    try:
        session.get(url)
    except Seen as seen:
        return seen.args[0]

def with_urllib(url):
    import urllib.request as ur

    def record(req):
        proxied = req._tunnel_host is not None or req.selector == req.full_url
        raise Seen({"proxy": req.host if proxied else None})

    class Http(ur.HTTPHandler):
        def http_open(self, req):
            record(req)

    class Https(ur.HTTPSHandler):
        def https_open(self, req):
            record(req)

    try:
        ur.build_opener(Http(), Https()).open(url, timeout=1)
    except Seen as seen:
        return seen.args[0]

def with_httpx(client, url):
    import httpx
    transport = client._transport_for_url(httpx.URL(url))
    if transport is client._transport:
        return {"proxy": None}
    u = transport._pool._proxy_url
    return {"proxy": f"{u.host.decode()}:{u.port}"}

import httpx
client = httpx.Client()
print(json.dumps({
    url: {"requests": with_requests(url), "urllib": with_urllib(url), "httpx": with_httpx(client, url)}
    for url in sys.argv[1:]
}))
"""

URLS = [
    "http://example.test/",
    "https://api.example.test/v1",
    "https://example.test:8443/",
    "http://notexample.test/",
    "http://10.1.2.3:8080/",
    "https://[::1]:8443/",
    "https://localhost:8000/v1",
    "http://LLM.Corp.Test/",
]
# (profile no_proxy, extra --set options): leading dots, wildcards, ports, IPs, CIDR, case, and
# a lower-case no_proxy from --set that disagrees with the upper-case one.
CASES = {
    "plain": (["example.test"], []),
    "leading-dot": ([".example.test"], []),
    "wildcard": (["*.example.test"], []),
    "port": (["example.test:8443"], []),
    "ipv4": (["10.1.2.3"], []),
    "cidr": (["10.0.0.0/8"], []),
    "upper-case": (["LLM.CORP.TEST"], []),
    "case-conflict": (["example.test"], ["--set", "no_proxy=llm.corp.test"]),
}


def host_port(proxy: str | None) -> str | None:
    if proxy is None:
        return None
    return proxy.split("://", 1)[-1].rsplit("@", 1)[-1]


def route_json(path: Path, profile: str, url: str, extra: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(
        app, ["-c", str(path), "-p", profile, *extra, "route", url, "--json"]
    )
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


@pytest.mark.parametrize("case", list(CASES))
def test_route_agrees_with_the_real_libraries(
    kai_run, write_profiles, child_script, tmp_path, case
):
    no_proxy, extra = CASES[case]
    ca = tmp_path / "corp.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    path = write_profiles(f"""
        [profiles.{case}]
        http_proxy = "{PROXY}"
        https_proxy = "{PROXY}"
        no_proxy = {json.dumps(no_proxy)}
        ca_bundle = "{ca}"
    """)
    child = kai_run(
        "-c", str(path), "-p", case, *extra, "--", sys.executable, str(child_script), *URLS
    )
    assert child.returncode == 0, child
    real = json.loads(child.stdout)
    for url in URLS:
        report = route_json(path, case, url, extra)
        clients = report["clients"]
        for lib in ("requests", "urllib", "httpx"):
            assert host_port(clients[lib]["proxy"]) == real[url][lib]["proxy"], (
                url,
                lib,
                clients[lib],
            )
        assert clients["requests"]["ca_file"] == real[url]["requests"]["ca_file"]
        for answer in clients.values():
            assert answer["proxy"] in (None, SHOWN)


def test_json_shape_and_redaction(kai_run, write_profiles):
    path = write_profiles(f"""
        [profiles.corp]
        https_proxy = "{PROXY}"
        no_proxy = ["10.0.0.0/8"]
    """)
    run = kai_run("route", "https://10.1.2.3/v1", "-c", str(path), "-p", "corp", "--json")
    assert run.returncode == 0, run
    data = json.loads(run.stdout)  # all of stdout is the one JSON object
    assert set(data) == {"url", "clients", "disagreements"}
    assert all(isinstance(line, str) for line in data["disagreements"])
    assert data["url"] == "https://10.1.2.3/v1"
    assert list(data["clients"]) == list(CLIENTS)
    for answer in data["clients"].values():
        assert set(answer) == {"proxy", "ca_file", "note"}
        assert answer["proxy"] in (None, SHOWN)
        assert isinstance(answer["note"], str)
        assert answer["note"]
    assert data["clients"]["httpx"]["proxy"] == SHOWN  # httpx ignores the CIDR entry
    assert data["clients"]["requests"]["proxy"] is None
    assert "trust_env" in data["clients"]["aiohttp"]["note"]
    assert "s3cret" not in run.stdout + run.stderr


def test_text_output_one_row_per_client_and_disagreements(write_profiles):
    path = write_profiles(f"""
        [profiles.corp]
        https_proxy = "{PROXY}"
        no_proxy = ["10.0.0.0/8"]
    """)
    result = CliRunner().invoke(
        app, ["route", "https://10.1.2.3/v1", "-c", str(path), "-p", "corp"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "route for https://10.1.2.3/v1"
    rows = {line.split()[0]: line for line in lines[1 : 1 + len(CLIENTS)]}
    assert list(rows) == list(CLIENTS)
    assert SHOWN in rows["httpx"]
    assert " direct " in rows["requests"]
    assert "disagreements:" in lines
    after = lines[lines.index("disagreements:") + 1 :]
    assert after
    assert any("httpx" in line and "10.0.0.0/8" in line for line in after)
    assert all(line.startswith("  - ") for line in after)
    assert "s3cret" not in result.stdout


def test_loopback_goes_direct_for_every_client(write_profiles):
    path = write_profiles(f"""
        [profiles.corp]
        https_proxy = "{PROXY}"
        http_proxy = "{PROXY}"
    """)
    data = route_json(path, "corp", "http://localhost:8000/v1", [])
    assert {name: a["proxy"] for name, a in data["clients"].items()} == dict.fromkeys(CLIENTS)
    result = CliRunner().invoke(
        app, ["route", "http://localhost:8000/v1", "-c", str(path), "-p", "corp"]
    )
    # CA files may differ (none is configured), but no client disagrees about the route.
    disagreements = [line for line in result.stdout.splitlines() if line.startswith("  - ")]
    assert not [line for line in disagreements if "direct" in line or " use" in line]


def test_route_errors_exit_2(kai_run, write_profiles):
    path = write_profiles("""
        [profiles.corp]
        description = "x"
    """)
    bad = kai_run("route", "ftp://example.test/", "-c", str(path), "-p", "corp")
    assert bad.returncode == 2
    assert "kai-run: error:" in bad.stderr
    assert bad.stdout == ""
    unknown = kai_run("route", "https://example.test/", "-c", str(path), "-p", "nope")
    assert unknown.returncode == 2
    assert "unknown profile" in unknown.stderr


def test_help_has_examples(kai_run):
    for command in ("route", "doctor"):
        run = kai_run(command, "--help")
        assert run.returncode == 0
        assert "Examples:" in run.stdout
        assert f"kai-run {command}" in run.stdout


def test_ipv6_cidr_shows_httpx_failing(write_profiles, monkeypatch):
    path = write_profiles(f"""
        [profiles.v6]
        https_proxy = "{PROXY}"
        no_proxy = ["2001:db8::/32"]
    """)
    url = "https://api.example.test/v1"
    data = route_json(path, "v6", url, [])
    httpx = data["clients"]["httpx"]
    assert httpx["proxy"] is None
    assert httpx["note"].startswith("error: cannot create a client: httpx.Client() raises")
    assert data["clients"]["httpx2"]["proxy"] == SHOWN
    plain = CliRunner().invoke(app, ["route", url, "-c", str(path), "-p", "v6"])
    rows = {line.split()[0]: line.split() for line in plain.stdout.splitlines()[1:]}
    assert rows["httpx"][1] == "error"
    assert any(line.startswith("  - httpx fails but ") for line in plain.stdout.splitlines())


def test_rich_table_says_error_for_a_client_that_fails(capsys, monkeypatch):
    from kai_launch import render
    from kai_launch.route import route

    report = route(
        "https://api.example.test/v1",
        {"HTTPS_PROXY": PROXY, "https_proxy": PROXY, "NO_PROXY": "2001:db8::/32"},
    )
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "400")  # a wide terminal: no folded notes
    render.route_report(report, as_json=False)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    httpx = next(line for line in out.splitlines() if line.split()[:1] == ["httpx"])
    assert httpx.split()[1] == "error"
    assert "error: cannot create a client" in out
    assert "httpx fails but" in out
