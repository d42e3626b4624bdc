"""`jvm = true` (proxy and truststore -D options), the hand-written PKCS12 truststore, and
`kai-run env --format maven-settings`.

The JVM tests run the real JDK (`java Client.java`, single-file source launch, JDK 11+) and
`keytool` where they are on PATH, and are skipped only when they are not. The proxy is a real
mitmdump; the Java client asks it for ROUTED_NAME, a `.invalid` name that an addon maps to the
loopback upstream (see tests/test_e2e.py's docstring for why). The JVM also gets
`-Djdk.net.hosts.file` naming a file that only knows localhost, so it cannot send a DNS query
for any other name: a client that tried to go direct fails instead of leaving the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, pkcs12
from hypothesis import given, settings
from hypothesis import strategies as st
from support.mitm import LOOPBACK_GUARD_ADDON, MitmDump
from support.servers import OpenAIUpstream
from typer.testing import CliRunner

from kai_launch import jvm
from kai_launch import pkcs12 as p12
from kai_launch.checks import no_proxy_matches
from kai_launch.cli import app
from kai_launch.environ import Assignment
from kai_launch.pkcs12 import TRUSTSTORE_PASSWORD
from kai_launch.trust import build_bundles, build_truststore, certifi_bundle

JAVA = shutil.which("java")
KEYTOOL = shutil.which("keytool")
needs_java = pytest.mark.skipif(JAVA is None, reason="no java on PATH")
needs_keytool = pytest.mark.skipif(KEYTOOL is None, reason="no keytool on PATH")

ROUTED_NAME = "api.kai-jvm.invalid"
VIA_HEADER = "X-Kai-Jvm-Via"


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def options_of(value: str) -> list[str]:
    return [o for _, _, o in jvm.split_java_options(value)]


def props(value: str) -> dict[str, str]:
    """-D options as a dict (the last one of a key wins, as in Java)."""
    out: dict[str, str] = {}
    for option in options_of(value):
        if option.startswith("-D"):
            key, _, v = option[2:].partition("=")
            out[key] = v
    return out


# --- NO_PROXY -> http.nonProxyHosts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("no_proxy", "expected", "warned"),
    [
        ("corp.example", "corp.example|*.corp.example", []),
        ("10.1.2.3,192.168.0.1", "10.1.2.3|192.168.0.1", []),
        ("::1,fd00::5", "[::1]|[fd00::5]", []),
        ("[fd00::5]:8443", "[fd00::5]", ["port"]),
        ("*", "*", []),
        ("10.*", "10.*", []),
        ("10.0.0.0/8,corp.example", "corp.example|*.corp.example", ["10.0.0.0/8"]),
        ("fd00::/8", "", ["fd00::/8"]),
        ("intranet:8080", "intranet|*.intranet", ["intranet:8080"]),
        ("10.1.2.3:8080", "10.1.2.3", ["10.1.2.3:8080"]),
        ("Corp.Example,corp.example,,", "corp.example|*.corp.example", []),
        ("", "", []),
    ],
)
def test_non_proxy_hosts_translation(no_proxy: str, expected: str, warned: list[str]) -> None:
    hosts, warnings = jvm.non_proxy_hosts(no_proxy)
    assert hosts == expected
    assert len(warnings) == len(warned)
    for word, warning in zip(warned, warnings, strict=True):
        assert word in warning


def test_cidr_warning_names_every_dropped_range() -> None:
    _, warnings = jvm.non_proxy_hosts("10.0.0.0/8,172.16.0.0/12,corp.example")
    (warning,) = warnings
    assert "10.0.0.0/8" in warning and "172.16.0.0/12" in warning
    assert "CIDR" in warning


def java_matches(host: str, non_proxy_hosts: str) -> bool:
    """sun.net.spi.DefaultProxySelector's reading of http.nonProxyHosts (case-insensitive, `*` at
    either end only), for the unit tests; the JDK itself answers in the Java tests below."""
    for raw in non_proxy_hosts.split("|"):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if entry.startswith("*") and host.endswith(entry[1:]):
            return True
        if entry.endswith("*") and host.startswith(entry[:-1]):
            return True
        if host == entry:
            return True
    return False


labels = st.text(alphabet="abcxyz0", min_size=1, max_size=4)
domains = st.lists(labels, min_size=1, max_size=3).map(".".join)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(domains, max_size=4), host=domains)
def test_java_reads_translated_domains_as_no_proxy_does(entries: list[str], host: str) -> None:
    no_proxy = ",".join(entries)
    hosts, warnings = jvm.non_proxy_hosts(no_proxy)
    assert not warnings
    assert java_matches(host, hosts) == no_proxy_matches(host, 443, no_proxy)


@settings(max_examples=200, deadline=None)
@given(octets=st.lists(st.integers(0, 255), min_size=4, max_size=4), other=st.integers(0, 255))
def test_ip_addresses_match_only_themselves(octets: list[int], other: int) -> None:
    ip = ".".join(map(str, octets))
    hosts, _ = jvm.non_proxy_hosts(ip)
    assert hosts == ip
    assert java_matches(ip, hosts)
    different = ".".join(map(str, [*octets[:3], other]))
    assert java_matches(different, hosts) == (different == ip)
    assert not java_matches(f"x.{ip}", hosts)


# --- options ---------------------------------------------------------------------------------


def test_http_and_https_proxies_with_credentials() -> None:
    out = jvm.jvm_options(
        {
            "http_proxy": "http://proxy.corp.example:3128",
            "https_proxy": "http://j%40doe:p%3Ass%20w@[fd00::7]",
            "all_proxy": None,
        },
        "corp.example,localhost",
        None,
    )
    assert out.options == [
        ("http.proxyHost", "proxy.corp.example"),
        ("http.proxyPort", "3128"),
        ("https.proxyHost", "fd00::7"),
        ("https.proxyPort", "80"),  # an http:// proxy's default port, as everywhere in kai-run
        ("https.proxyUser", "j@doe"),
        ("https.proxyPassword", "p:ss w"),
        ("http.nonProxyHosts", "corp.example|*.corp.example|localhost|*.localhost"),
        ("jdk.http.auth.tunneling.disabledSchemes", ""),
        ("jdk.http.auth.proxying.disabledSchemes", ""),
    ]
    assert out.warnings == []


def test_no_credentials_no_disabled_schemes_override() -> None:
    out = jvm.jvm_options({"https_proxy": "http://p:8080"}, "", None)
    keys = [k for k, _ in out.options]
    assert keys == ["https.proxyHost", "https.proxyPort", "http.nonProxyHosts"]


def test_all_proxy_fills_both_schemes() -> None:
    out = dict(jvm.jvm_options({"all_proxy": "http://u:pw@p:8080"}, "", None).options)
    assert out["http.proxyHost"] == out["https.proxyHost"] == "p"
    assert out["http.proxyPassword"] == out["https.proxyPassword"] == "pw"


def test_socks_proxy() -> None:
    out = jvm.jvm_options(
        {"http_proxy": "http://web:3128", "all_proxy": "socks5h://u:s%20ecret@socks:1081"},
        "corp.example",
        None,
    )
    got = dict(out.options)
    assert got["http.proxyHost"] == "web"
    assert "https.proxyHost" not in got  # https falls back to the SOCKS proxy, as in Java
    assert (got["socksProxyHost"], got["socksProxyPort"]) == ("socks", "1081")
    assert got["java.net.socks.username"] == "u"
    assert got["java.net.socks.password"] == "s ecret"
    assert got["socksNonProxyHosts"] == got["http.nonProxyHosts"] == "corp.example|*.corp.example"
    assert "socksProxyVersion" not in got


def test_socks4_sets_the_version_and_default_port() -> None:
    got = dict(jvm.jvm_options({"all_proxy": "socks4://s"}, "", None).options)
    assert got["socksProxyVersion"] == "4"
    assert got["socksProxyPort"] == "1080"


def test_two_socks_proxies_warn() -> None:
    out = jvm.jvm_options({"http_proxy": "socks5://a:1", "https_proxy": "socks5://b:2"}, "", None)
    assert dict(out.options)["socksProxyHost"] == "b"
    assert any("one SOCKS proxy" in w and "socks5://a:1" in w for w in out.warnings)


def test_https_proxy_url_is_left_out_with_a_warning() -> None:
    out = jvm.jvm_options({"https_proxy": "https://u:secret@tls-proxy:443"}, "", None)
    assert out.options == []
    (warning,) = out.warnings
    assert "TLS" in warning and "https.proxyHost" in warning
    assert "secret" not in warning and "u:***@tls-proxy" in warning


def test_truststore_options() -> None:
    got = jvm.jvm_options({}, "", "/c/ca/x.p12")
    assert got.options == [
        ("javax.net.ssl.trustStore", "/c/ca/x.p12"),
        ("javax.net.ssl.trustStoreType", "PKCS12"),
        ("javax.net.ssl.trustStorePassword", TRUSTSTORE_PASSWORD),
    ]
    assert set(jvm.TRUST_KEYS) <= set(got.owned)


# --- quoting and appending ---------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(value=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20))
def test_quoted_option_is_one_word_for_the_jvm(value: str) -> None:
    option = f"-Dk={value}"
    quoted = jvm.quote_java_option(option)
    assert options_of(f"-Xmx1g {quoted} -Dz=1") == ["-Xmx1g", option, "-Dz=1"]


def test_quoting_only_when_needed() -> None:
    assert jvm.quote_java_option("-Dx=a|b*") == "-Dx=a|b*"
    assert jvm.quote_java_option("-Dx=a b") == '"-Dx=a b"'
    assert jvm.quote_java_option('-Dx=a"b') == '"-Dx=a"\'"\'"b"'


def test_maven_words() -> None:
    assert jvm.maven_word("-Dx=a|b", windows=False) == "-Dx=a|b"
    assert jvm.maven_word('-Dx=a"b', windows=False) == '-Dx=a"b'  # mvn keeps quotes literally
    assert jvm.maven_word("-Dx=a b", windows=False) is None
    assert jvm.maven_word("-Dx=a|b", windows=True) == '"-Dx=a|b"'  # cmd would pipe it
    assert jvm.maven_word("-Dx=ab", windows=True) == "-Dx=ab"


def test_append_keeps_the_users_options_and_replaces_kai_runs() -> None:
    options = jvm.jvm_options({"https_proxy": "http://new:1"}, "", "/t.p12")
    base = "-Xmx2g '-Dmy.opt=a b' -Dhttps.proxyHost=old -Dhttp.proxyHost=older -Djavax.net.ssl.trustStore=/old"
    value, warnings = jvm.append_options(jvm.JAVA_TOOL_OPTIONS, base, options)
    assert value.startswith("-Xmx2g '-Dmy.opt=a b' -Dhttps.proxyHost=new ")
    got = options_of(value)
    assert "-Dhttp.proxyHost=older" not in got  # kai-run owns every proxy key
    assert got.count("-Djavax.net.ssl.trustStore=/t.p12") == 1
    assert "-Djavax.net.ssl.trustStore=/old" not in got
    assert warnings == []
    again, _ = jvm.append_options(jvm.JAVA_TOOL_OPTIONS, value, options)
    assert again == value  # idempotent


def test_append_keeps_the_parents_truststore_when_the_profile_has_none() -> None:
    options = jvm.jvm_options({"https_proxy": "http://new:1"}, "", None)
    value, _ = jvm.append_options(
        jvm.JAVA_TOOL_OPTIONS, "-Djavax.net.ssl.trustStore=/mine.jks", options
    )
    assert props(value)["javax.net.ssl.trustStore"] == "/mine.jks"


def test_maven_opts_leaves_out_what_mvn_would_split() -> None:
    options = jvm.jvm_options({"https_proxy": "http://u:p%20w@h:1"}, "", None)
    value, warnings = jvm.append_options(jvm.MAVEN_OPTS, "-Xmx1g", options)
    assert "proxyPassword" not in value
    assert value.split()[:2] == ["-Xmx1g", "-Dhttps.proxyHost=h"]
    (warning,) = warnings
    assert "-Dhttps.proxyPassword" in warning and "p w" not in warning
    again, _ = jvm.append_options(jvm.MAVEN_OPTS, value, options)
    assert again == value


@pytest.mark.parametrize("name", jvm.JVM_VARIABLES)
def test_assignment_masks_passwords(name: str) -> None:
    value = '-Xmx1g "-Dhttp.proxyPassword=a b" -Dhttps.proxyPassword=s3 -Djava.net.socks.password=x -Dhttp.proxyUser=jdoe -Dother.secretKey=k'
    if name == jvm.MAVEN_OPTS:
        value = value.replace('"-Dhttp.proxyPassword=a b"', "-Dhttp.proxyPassword=ab")
    shown = Assignment(name, value, "test").shown()
    assert "a b" not in shown and "s3" not in shown and "=x" not in shown and "=k" not in shown
    assert "-Dhttp.proxyPassword=***" in shown and "-Dhttps.proxyPassword=***" in shown
    assert "-Djava.net.socks.password=***" in shown and "-Dother.secretKey=***" in shown
    assert "-Dhttp.proxyUser=jdoe" in shown and shown.startswith("-Xmx1g ")
    assert Assignment(name, value, "test").shown(reveal=True) == value


# --- through build_plan and the CLI ------------------------------------------------------------

PROFILES = """
    [profiles.base]
    https_proxy = "http://proxy.corp.example:3128"
    http_proxy = "http://proxy.corp.example:3129"
    no_proxy = ["corp.example", "10.0.0.0/8"]
    jvm = true

    [profiles.base.proxy_auth]
    username = "jdoe"
    password = { env = "CORP_PW" }

    [profiles.child]
    extends = "base"

    [profiles.off]
    extends = "base"
    jvm = false

    [profiles.own]
    extends = "base"
    env = { JAVA_TOOL_OPTIONS = "-Xss4m -Dhttps.proxyHost=stale", MAVEN_OPTS = "-Xmx3g" }
"""


def env_json(*args: str, env: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    result = invoke(*args, "--format", "json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["set"], result.stderr


def test_jvm_is_inherited_and_a_child_can_turn_it_off(write_profiles) -> None:
    path = write_profiles(PROFILES)
    got, stderr = env_json("-c", str(path), "env", "-p", "child", env={"CORP_PW": "pw 1"})
    java = props(got["JAVA_TOOL_OPTIONS"])
    assert java["https.proxyHost"] == "proxy.corp.example"
    assert java["https.proxyPort"] == "3128" and java["http.proxyPort"] == "3129"
    assert java["https.proxyPassword"] == "pw 1"
    assert java["http.nonProxyHosts"].startswith("corp.example|*.corp.example|localhost")
    assert "-Dhttps.proxyPassword" not in got["MAVEN_OPTS"]  # whitespace: left out of MAVEN_OPTS
    assert "10.0.0.0/8" in stderr and "http.nonProxyHosts" in stderr
    got, _ = env_json("-c", str(path), "env", "-p", "off", env={"CORP_PW": "pw"})
    assert "JAVA_TOOL_OPTIONS" not in got and "MAVEN_OPTS" not in got


def test_jvm_must_be_a_boolean(write_profiles) -> None:
    path = write_profiles('[profiles.x]\njvm = "yes"\n')
    result = invoke("-c", str(path), "env", "-p", "x")
    assert result.exit_code == 2
    assert "key 'jvm'" in result.stderr and "true or false" in result.stderr


def test_profiles_set_jvm(write_profiles) -> None:
    path = write_profiles('[profiles.x]\nhttps_proxy = "http://p:1"\n')
    result = invoke("-c", str(path), "profiles", "set", "x", "jvm", "true")
    assert result.exit_code == 0, result.output
    assert "jvm = true" in path.read_text()


def test_base_is_the_parent_value_or_the_profiles_own(write_profiles) -> None:
    path = write_profiles(PROFILES)
    parent = {"CORP_PW": "pw", "JAVA_TOOL_OPTIONS": "-Xmx1g -Dhttps.proxyHost=outer"}
    got, _ = env_json("-c", str(path), "env", "-p", "child", env=parent)
    assert got["JAVA_TOOL_OPTIONS"].startswith("-Xmx1g -Dhttp.proxyHost=proxy.corp.example ")
    assert "outer" not in got["JAVA_TOOL_OPTIONS"]
    got, _ = env_json("-c", str(path), "env", "-p", "own", env=parent)
    assert got["JAVA_TOOL_OPTIONS"].startswith("-Xss4m -Dhttp.proxyHost=proxy.corp.example ")
    assert "stale" not in got["JAVA_TOOL_OPTIONS"] and "-Xmx1g" not in got["JAVA_TOOL_OPTIONS"]
    assert got["MAVEN_OPTS"].startswith("-Xmx3g -Dhttp.proxyHost=")


def child_env(kai_run, config: Path, *args: str, env: dict[str, str] | None = None):
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    run = kai_run("-c", str(config), *args, "--", sys.executable, "-c", code, env=env)
    assert run.returncode == 0, run
    return json.loads(run.stdout)


def test_clean_env_starts_from_nothing(kai_run, write_profiles) -> None:
    path = write_profiles(PROFILES)
    env = {"CORP_PW": "pw", "JAVA_TOOL_OPTIONS": "-Xmx1g", "MAVEN_OPTS": "-Xmx1g"}
    seen = child_env(kai_run, path, "-p", "child", "--clean-env", env=env)
    assert seen["JAVA_TOOL_OPTIONS"].startswith("-Dhttp.proxyHost=")
    assert seen["MAVEN_OPTS"].startswith("-Dhttp.proxyHost=")


def test_nested_kai_run_does_not_pile_up(kai_run, write_profiles) -> None:
    path = write_profiles(PROFILES)
    env = {"CORP_PW": "pw", "JAVA_TOOL_OPTIONS": "-Xmx1g"}
    outer = child_env(kai_run, path, "-p", "child", env=env)
    inner = child_env(kai_run, path, "-p", "child", env={**outer})
    assert inner["JAVA_TOOL_OPTIONS"] == outer["JAVA_TOOL_OPTIONS"]
    assert inner["MAVEN_OPTS"] == outer["MAVEN_OPTS"]
    assert options_of(outer["JAVA_TOOL_OPTIONS"]).count("-Dhttps.proxyPassword=pw") == 1
    # An inner profile without credentials drops the outer one's.
    path2 = write_profiles('[profiles.plain]\nhttps_proxy = "http://p2:1"\njvm = true\n', "p2.toml")
    plain = child_env(kai_run, path2, "-p", "plain", env={**outer})
    assert "proxyPassword" not in plain["JAVA_TOOL_OPTIONS"]
    assert "-Xmx1g" in plain["JAVA_TOOL_OPTIONS"]
    assert props(plain["JAVA_TOOL_OPTIONS"])["https.proxyHost"] == "p2"


def test_profiles_show_masks_and_reveal_shows(write_profiles) -> None:
    path = write_profiles(PROFILES)
    env = {"CORP_PW": "hunter2 x", "JAVA_TOOL_OPTIONS": "-Dmy.keyStorePassword=hidden"}
    result = invoke("-c", str(path), "profiles", "show", "child", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "hidden" not in result.output
    variables = json.loads(result.stdout)["variables"]
    java = variables["JAVA_TOOL_OPTIONS"]
    assert "-Dhttps.proxyPassword=***" in java["value"]
    assert "-Dmy.keyStorePassword=***" in java["value"]
    assert "-Dhttps.proxyUser=jdoe" in java["value"]
    assert java["origin"].startswith("jvm = true, profile 'base'")
    assert "jvm" in json.loads(result.stdout)["settings"]
    result = invoke("-c", str(path), "profiles", "show", "child", "--json", "--reveal", env=env)
    java = json.loads(result.stdout)["variables"]["JAVA_TOOL_OPTIONS"]["value"]
    assert '"-Dhttps.proxyPassword=hunter2 x"' in java


def test_truststore_in_the_options(write_profiles, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "corp.pem"))
    path = write_profiles('[profiles.x]\njvm = true\nca_bundle = "corp.pem"\nca_mode = "replace"\n')
    got, _ = env_json("-c", str(path), "env", "-p", "x")
    java = props(got["JAVA_TOOL_OPTIONS"])
    store = java["javax.net.ssl.trustStore"]
    assert store == props(got["MAVEN_OPTS"])["javax.net.ssl.trustStore"]
    assert os.path.dirname(store) == os.path.dirname(got["SSL_CERT_FILE"])
    assert java["javax.net.ssl.trustStoreType"] == "PKCS12"
    assert java["javax.net.ssl.trustStorePassword"] == TRUSTSTORE_PASSWORD
    loaded = pkcs12.load_pkcs12(Path(store).read_bytes(), TRUSTSTORE_PASSWORD.encode())
    (only,) = loaded.additional_certs
    assert only.certificate == x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    # No proxies: no proxy options at all.
    assert not any(k.startswith(("http", "socks")) for k in java)


# Some distributions ship a root with a non-positive serial; cryptography only warns about it.
@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_system_mode_alone_gives_the_jvm_the_os_roots(write_profiles) -> None:
    # ca_mode = "system" without ca_bundle: the OS store (where MDM puts the corporate root) is
    # what every other client trusts, so the JVM gets it too.
    path = write_profiles('[profiles.x]\njvm = true\nca_mode = "system"\n')
    got, _ = env_json("-c", str(path), "env", "-p", "x")
    store = props(got["JAVA_TOOL_OPTIONS"])["javax.net.ssl.trustStore"]
    loaded = pkcs12.load_pkcs12(Path(store).read_bytes(), TRUSTSTORE_PASSWORD.encode())
    pem = Path(got["SSL_CERT_FILE"]).read_text(encoding="latin-1")
    assert len(loaded.additional_certs) == pem.count("-----BEGIN CERTIFICATE-----") > 0


def test_insecure_warns_that_the_jvm_still_verifies(write_profiles) -> None:
    path = write_profiles("[profiles.x]\njvm = true\ninsecure = true\n")
    result = invoke("-c", str(path), "env", "-p", "x")
    assert result.exit_code == 0
    assert "does not reach the JVM" in result.stderr


# --- maven-settings ----------------------------------------------------------------------------


def maven(path: Path, profile: str, env: dict[str, str] | None = None) -> tuple[str, ET.Element]:
    result = invoke("-c", str(path), "env", "-p", profile, "--format", "maven-settings", env=env)
    assert result.exit_code == 0, result.output
    return result.stdout, ET.fromstring(result.stdout)


def test_maven_settings(write_profiles) -> None:
    path = write_profiles(PROFILES)
    text, root = maven(path, "off", {"CORP_PW": "p<&>\"'w"})  # works without jvm = true too
    assert root.tag == "proxies"
    proxies = {p.findtext("id"): p for p in root.findall("proxy")}
    assert set(proxies) == {"kai-run-off-http", "kai-run-off-https"}
    https = proxies["kai-run-off-https"]
    assert https.findtext("active") == "true"
    assert https.findtext("protocol") == "https"
    assert https.findtext("host") == "proxy.corp.example"
    assert https.findtext("port") == "3128"
    assert proxies["kai-run-off-http"].findtext("port") == "3129"
    assert https.findtext("username") == "jdoe"
    assert https.findtext("password") == "p<&>\"'w"
    assert https.findtext("nonProxyHosts") == (
        "corp.example|*.corp.example|localhost|*.localhost|127.0.0.1|[::1]"
    )
    assert "10.0.0.0/8" in text.split("<proxies>")[0]  # a comment about the dropped range


def test_maven_settings_without_a_proxy(write_profiles) -> None:
    path = write_profiles('[profiles.direct--x]\ndescription = "no proxy"\n')
    text, root = maven(path, "direct--x")
    assert root.tag == "proxies" and len(root) == 0
    assert "sets no HTTP proxy" in text


def test_maven_settings_socks_and_tls_proxies_are_comments(write_profiles) -> None:
    path = write_profiles(
        '[profiles.s]\nall_proxy = "socks5://u:pw@127.0.0.1:1080"\n'
        'https_proxy = "https://127.0.0.1:8443"\n'
    )
    text, root = maven(path, "s")
    assert len(root) == 0
    assert "SOCKS" in text and "plain HTTP" in text and "pw" not in text.replace("proxy", "")


# --- PKCS12 --------------------------------------------------------------------------------------


def ders(n: int) -> list[bytes]:
    return [
        x509.load_pem_x509_certificate(trustme.CA().cert_pem.bytes()).public_bytes(Encoding.DER)
        for _ in range(n)
    ]


def test_pkcs12_is_byte_identical_to_cryptographys() -> None:
    certs = ders(3)
    names = ["first", "zweite ü", "third"]
    ref = pkcs12.serialize_java_truststore(
        [
            pkcs12.PKCS12Certificate(x509.load_der_x509_certificate(d), n.encode())
            for d, n in zip(certs, names, strict=True)
        ],
        NoEncryption(),
    )
    # cryptography writes a MAC keyed by the empty password with a random salt: use the same.
    tail = ref[-14:]
    assert tail[:2] == b"\x04\x08" and tail[-4:] == b"\x02\x02\x08\x00"
    mine = p12.truststore(certs, "", names=names, salt=tail[2:10], iterations=2048)
    assert mine == ref


def test_pkcs12_loads_with_cryptography_and_the_mac_is_checked() -> None:
    certs = ders(2)
    data = p12.truststore(certs)
    loaded = pkcs12.load_pkcs12(data, TRUSTSTORE_PASSWORD.encode())
    assert loaded.key is None and loaded.cert is None
    assert [c.certificate.public_bytes(Encoding.DER) for c in loaded.additional_certs] == certs
    names = [c.friendly_name for c in loaded.additional_certs]
    assert all(n and n.startswith(b"testing ca #") for n in names)
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(data, b"wrong")
    assert p12.truststore(certs) == data  # deterministic


def test_aliases_are_unique_and_readable() -> None:
    pem = Path(certifi_bundle()).read_text(encoding="latin-1")
    certs = p12.pem_to_der(pem)
    names = p12.aliases(certs)
    assert len(set(names)) == len(names) == len(certs)
    assert all(n == n.lower() and n != "certificate" for n in names)
    assert p12.aliases([certs[0], certs[0]])[1].endswith(" (2)")
    assert p12.subject_label(b"\x30\x03\x02\x01\x00") == ""  # not a certificate: no crash


@needs_keytool
def test_keytool_lists_every_certificate_as_trusted(tmp_path: Path) -> None:
    own = trustme.CA()
    own.cert_pem.write_to_path(str(tmp_path / "corp.pem"))
    bundles = build_bundles([(str(tmp_path / "corp.pem"), "test")], "append")
    store = build_truststore(bundles.merged, "test")
    expected = len(p12.pem_to_der(Path(bundles.merged).read_text(encoding="latin-1")))
    assert expected > 100  # certifi's roots and ours
    proc = subprocess.run(
        [KEYTOOL, "-list", "-keystore", store, "-storetype", "PKCS12", "-storepass", "changeit"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Your keystore contains {expected} entries" in proc.stdout
    assert proc.stdout.count("trustedCertEntry") == expected
    assert "testing ca #" in proc.stdout.lower()
    wrong = subprocess.run(
        [KEYTOOL, "-list", "-keystore", store, "-storetype", "PKCS12", "-storepass", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode != 0  # the MAC is checked


def test_truststore_cache_file(tmp_path: Path) -> None:
    own = trustme.CA()
    own.cert_pem.write_to_path(str(tmp_path / "corp.pem"))
    bundles = build_bundles([(str(tmp_path / "corp.pem"), "test")], "append")
    start = time.perf_counter()
    store = build_truststore(bundles.merged, "test")
    miss = time.perf_counter() - start
    count = len(p12.pem_to_der(Path(bundles.merged).read_text(encoding="latin-1")))
    print(f"truststore cache miss: {count} certificates in {miss * 1000:.1f} ms")
    assert miss < 1.0
    assert os.path.dirname(store) == os.path.dirname(bundles.merged)
    assert re.fullmatch(r"[0-9a-f]{32}\.p12", os.path.basename(store))
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    assert not [f for f in os.listdir(os.path.dirname(store)) if f.endswith(".tmp")]
    before = os.stat(store).st_mtime_ns
    start = time.perf_counter()
    assert build_truststore(bundles.merged, "test") == store
    assert time.perf_counter() - start < 0.05
    assert os.stat(store).st_mtime_ns == before  # reused, not rewritten
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    other_bundle = build_bundles([(str(tmp_path / "other.pem"), "t")], "append").merged
    assert build_truststore(other_bundle, "t") != store


# --- the real JVM --------------------------------------------------------------------------------

PROPS_JAVA = """
public class Props {
    public static void main(String[] args) {
        for (String key : args) {
            System.out.println(key + "=" + System.getProperty(key));
        }
    }
}
"""

SELECTOR_JAVA = """
import java.net.*;

public class Selector {
    public static void main(String[] args) throws Exception {
        for (String url : args) {
            Proxy p = ProxySelector.getDefault().select(new URI(url)).get(0);
            System.out.println(url + " " + p.type());
        }
    }
}
"""

CLIENT_JAVA = """
import java.net.*;
import java.net.http.*;
import java.io.*;

/** GET args[0] with HttpURLConnection and with java.net.http.HttpClient; proxy credentials
 * from the https.proxyUser/https.proxyPassword properties, as Gradle reads them. */
public class Client {
    public static void main(String[] args) throws Exception {
        String user = System.getProperty("https.proxyUser");
        String pw = System.getProperty("https.proxyPassword", "");
        Authenticator auth = new Authenticator() {
            protected PasswordAuthentication getPasswordAuthentication() {
                if (user != null && getRequestorType() == RequestorType.PROXY) {
                    return new PasswordAuthentication(user, pw.toCharArray());
                }
                return null;
            }
        };
        Authenticator.setDefault(auth);
        int failures = 0;
        try {
            HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
            c.setConnectTimeout(20000);
            c.setReadTimeout(20000);
            String body = new String(c.getInputStream().readAllBytes(), "UTF-8");
            System.out.println("urlconnection " + c.getResponseCode() + " via="
                + c.getHeaderField("__VIA__") + " " + body.length());
        } catch (Exception e) {
            failures++;
            System.out.println("urlconnection failed: " + e);
        }
        try {
            HttpClient client = HttpClient.newBuilder().authenticator(auth).build();
            HttpResponse<String> r = client.send(
                HttpRequest.newBuilder(URI.create(args[0])).timeout(java.time.Duration.ofSeconds(20)).build(),
                HttpResponse.BodyHandlers.ofString());
            System.out.println("httpclient " + r.statusCode() + " via="
                + r.headers().firstValue("__VIA__").orElse("null") + " " + r.body().length());
        } catch (Exception e) {
            failures++;
            System.out.println("httpclient failed: " + e);
        }
        System.exit(failures);
    }
}
""".replace("__VIA__", VIA_HEADER)

ROUTE_ADDON = f'''
"""Test addon: send {ROUTED_NAME} to the upstream on 127.0.0.1 and mark every response."""
from mitmproxy import http

NAME = {ROUTED_NAME!r}


class Route:
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == NAME:
            flow.request.host = "127.0.0.1"

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == NAME:
            flow.request.host = "127.0.0.1"

    def server_connect(self, data) -> None:
        # The upstream's certificate names localhost: verify it as such.
        if data.server.address and data.server.address[0] == "127.0.0.1":
            data.server.sni = "localhost"

    def response(self, flow: http.HTTPFlow) -> None:
        flow.response.headers[{VIA_HEADER!r}] = "mitmdump"


addons = [Route()]
'''


def java_file(tmp_path: Path, source: str, name: str) -> Path:
    directory = tmp_path / "java"
    directory.mkdir(exist_ok=True)
    hosts = directory / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
    path = directory / f"{name}.java"
    path.write_text(source)
    return path


def java_argv(source: Path, *args: str) -> list[str]:
    assert JAVA is not None
    hosts = source.parent / "hosts"
    return [JAVA, f"-Djdk.net.hosts.file={hosts}", str(source), *args]


@needs_java
def test_the_jvm_reads_the_options_as_written(kai_run, write_profiles, tmp_path: Path) -> None:
    """Quotes, spaces and `|` survive the JVM's own JAVA_TOOL_OPTIONS parser."""
    path = write_profiles(
        """
        [profiles.x]
        jvm = true
        https_proxy = "http://127.0.0.1:3128"
        no_proxy = ["corp.example", "fd00::5"]
        [profiles.x.proxy_auth]
        username = "j doe"
        password = { env = "PW" }
        """
    )
    password = "a 'b' \"c\" $HOME `x` \\ ü"
    source = java_file(tmp_path, PROPS_JAVA, "Props")
    keys = ["https.proxyUser", "https.proxyPassword", "http.nonProxyHosts", "https.proxyPort"]
    run = kai_run(
        "-c", str(path), "-p", "x", "--", *java_argv(source, *keys),
        env={"PW": password, "JAVA_TOOL_OPTIONS": "-Dhttps.proxyPort=1 '-Dmine=x y'"},
    )  # fmt: skip
    assert run.returncode == 0, run
    assert run.stdout.splitlines() == [
        "https.proxyUser=j doe",
        f"https.proxyPassword={password}",
        "http.nonProxyHosts=corp.example|*.corp.example|[fd00::5]|localhost|*.localhost|127.0.0.1|[::1]",
        "https.proxyPort=3128",
    ]
    # The pitfall the README names: the JVM echoes the variable, password and all, to stderr.
    assert "Picked up JAVA_TOOL_OPTIONS" in run.stderr


@needs_java
def test_the_jdks_proxy_selector_agrees_with_no_proxy(kai_run, write_profiles, tmp_path) -> None:
    path = write_profiles(
        """
        [profiles.x]
        jvm = true
        http_proxy = "http://127.0.0.1:3128"
        https_proxy = "http://127.0.0.1:3128"
        no_proxy = ["corp.example", "10.1.2.3", "fd00::5", "10.0.0.0/8", "intranet:8080"]
        """
    )
    urls = {
        "https://corp.example/": "DIRECT",
        "https://a.b.corp.example/": "DIRECT",
        "https://xcorp.example/": "HTTP",
        "https://corp.example.org/": "HTTP",
        "http://10.1.2.3/": "DIRECT",
        "http://10.1.2.30/": "HTTP",
        "http://10.9.9.9/": "HTTP",  # the CIDR range is lost on Java (and warned about)
        "https://[fd00::5]/": "DIRECT",
        "https://[fd00::6]/": "HTTP",
        "http://[::1]:8080/": "DIRECT",
        "http://127.0.0.1/": "DIRECT",
        "http://localhost/": "DIRECT",
        "http://intranet:9999/": "DIRECT",
        "https://api.openai.com/": "HTTP",
    }
    source = java_file(tmp_path, SELECTOR_JAVA, "Selector")
    run = kai_run("-c", str(path), "-p", "x", "--", *java_argv(source, *urls))
    assert run.returncode == 0, run
    assert dict(line.split() for line in run.stdout.splitlines()) == urls
    assert "10.0.0.0/8" in run.stderr and "intranet:8080" in run.stderr


@pytest.fixture
def routed_upstream(tmp_path: Path):
    with OpenAIUpstream(workdir=tmp_path / "upstream") as server:
        yield server


def start_mitm(mitm_binary: Path, tmp_path: Path, upstream, proxyauth: str | None = None):
    route = tmp_path / "route_jvm.py"
    route.write_text(ROUTE_ADDON)
    # The route addon first: the loopback guard after it sees 127.0.0.1 and lets it through.
    return MitmDump(
        mitm_binary,
        confdir=tmp_path / "mitm",
        proxyauth=proxyauth,
        upstream_ca=upstream.ca_pem_path,
        addons=[route, LOOPBACK_GUARD_ADDON],
        loopback_only=False,
    )


def java_profile(write_profiles, proxy: str, ca: Path | None, extra: str = "") -> Path:
    bundle = f'ca_bundle = "{ca}"\n' if ca is not None else ""
    return write_profiles(
        f'[profiles.j]\njvm = true\nhttp_proxy = "{proxy}"\nhttps_proxy = "{proxy}"\n{bundle}{extra}'
    )


@needs_java
def test_java_https_through_the_proxy_needs_the_profiles_ca(
    kai_run, write_profiles, mitm_binary, routed_upstream, tmp_path
) -> None:
    source = java_file(tmp_path, CLIENT_JAVA, "Client")
    url = f"https://{ROUTED_NAME}:{routed_upstream.port}/v1/models"
    with start_mitm(mitm_binary, tmp_path, routed_upstream) as mitm:
        with_ca = java_profile(write_profiles, mitm.url, mitm.ca_cert_path)
        run = kai_run("-c", str(with_ca), "-p", "j", "--", *java_argv(source, url), timeout=120)
        assert run.returncode == 0, run
        lines = run.stdout.splitlines()
        assert lines[0].startswith("urlconnection 200 via=mitmdump "), run
        assert lines[1].startswith("httpclient 200 via=mitmdump "), run
        # Both reached the upstream, asking for the name only the proxy could route.
        hosts = [r.header("Host") for r in routed_upstream.requests]
        assert hosts == [f"{ROUTED_NAME}:{routed_upstream.port}"] * 2
        assert mitm.log_text().count(f"GET https://127.0.0.1:{routed_upstream.port}/v1/models") == 2

        without = java_profile(write_profiles, mitm.url, None)
        run = kai_run("-c", str(without), "-p", "j", "--", *java_argv(source, url), timeout=120)
        assert run.returncode == 2, run  # both clients failed
        for line in run.stdout.splitlines():
            assert "failed" in line and "PKIX path building failed" in line, run
        assert len(routed_upstream.requests) == 2  # nothing new got through


@needs_java
def test_without_jvm_true_java_ignores_the_proxy(
    kai_run, write_profiles, mitm_binary, routed_upstream, tmp_path
) -> None:
    source = java_file(tmp_path, CLIENT_JAVA, "Client")
    url = f"https://{ROUTED_NAME}:{routed_upstream.port}/v1/models"
    with start_mitm(mitm_binary, tmp_path, routed_upstream) as mitm:
        config = java_profile(write_profiles, mitm.url, mitm.ca_cert_path)
        config.write_text(config.read_text().replace("jvm = true", "jvm = false"))
        run = kai_run("-c", str(config), "-p", "j", "--", *java_argv(source, url), timeout=120)
        assert run.returncode == 2, run
        # HTTPS_PROXY is set, but Java went direct: the name is unknown to it (no DNS query).
        assert "UnknownHostException" in run.stdout or "ConnectException" in run.stdout, run
        assert routed_upstream.requests == []


@needs_java
def test_java_basic_auth_over_connect(
    kai_run, write_profiles, mitm_binary, routed_upstream, tmp_path
) -> None:
    source = java_file(tmp_path, CLIENT_JAVA, "Client")
    url = f"https://{ROUTED_NAME}:{routed_upstream.port}/v1/models"
    with start_mitm(mitm_binary, tmp_path, routed_upstream, proxyauth="kai:p@ss;w0rd") as mitm:
        config = java_profile(
            write_profiles,
            mitm.url,
            mitm.ca_cert_path,
            '[profiles.j.proxy_auth]\nusername = "kai"\npassword = { env = "KAI_PW" }\n',
        )
        env = {"KAI_PW": "p@ss;w0rd"}
        run = kai_run(
            "-c", str(config), "-p", "j", "--", *java_argv(source, url), env=env, timeout=120
        )
        assert run.returncode == 0, run
        assert run.stdout.count(" 200 via=mitmdump ") == 2, run
        # The JDK's default (Basic disabled for CONNECT) comes back when the override is undone
        # on the command line, which the JVM reads after JAVA_TOOL_OPTIONS.
        argv = java_argv(source, url)
        argv.insert(1, "-Djdk.http.auth.tunneling.disabledSchemes=Basic")
        run = kai_run("-c", str(config), "-p", "j", "--", *argv, env=env, timeout=120)
        assert run.returncode == 2, run
        assert "407" in run.stdout, run
        assert len(routed_upstream.requests) == 2


def test_exec_path_with_jvm_imports_nothing_heavy(write_profiles, tmp_path: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "corp.pem"))
    path = write_profiles(
        '[profiles.x]\njvm = true\nca_bundle = "corp.pem"\nhttps_proxy = "http://u:p@127.0.0.1:1"\n'
    )
    child = [sys.executable, "-c", "import os; print(os.environ['JAVA_TOOL_OPTIONS'])"]
    argv = [sys.executable, "-X", "importtime", "-m", "kai_launch", "-c", str(path), "-p", "x"]
    for _ in ("cache miss", "cache hit"):
        proc = subprocess.run(
            [*argv, "--", *child],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "-Djavax.net.ssl.trustStore=" in proc.stdout
        imported = {
            line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line
        }
        for heavy in ("typer", "rich", "requests", "tomlkit", "cryptography", "click"):
            assert heavy not in imported, heavy


def test_a_bad_proxy_url_from_env_names_its_key(write_profiles) -> None:
    path = write_profiles('[profiles.x]\njvm = true\nenv = { https_proxy = "proxy:3128" }\n')
    result = invoke("-c", str(path), "env", "-p", "x")
    assert result.exit_code == 2
    assert "has no scheme" in result.stderr
    assert "profile 'x'" in result.stderr and "key 'env.https_proxy'" in result.stderr


def test_a_lone_proxy_user_is_a_token_and_hidden() -> None:
    options = jvm.jvm_options({"https_proxy": "http://tok3n@p:1"}, "", None)
    value, _ = jvm.append_options(jvm.JAVA_TOOL_OPTIONS, "", options)
    assert "-Dhttps.proxyUser=tok3n" in value
    shown = Assignment(jvm.JAVA_TOOL_OPTIONS, value, "t").shown()
    assert "tok3n" not in shown and "-Dhttps.proxyUser=***" in shown


@needs_java
def test_the_jdk_uses_the_socks_proxy_where_no_http_proxy_applies(
    kai_run, write_profiles, tmp_path
) -> None:
    path = write_profiles(
        """
        [profiles.s]
        jvm = true
        http_proxy = "http://127.0.0.1:3128"
        all_proxy = "socks5h://127.0.0.1:1080"
        no_proxy = ["corp.example"]
        """
    )
    urls = {
        "http://example.org/": "HTTP",
        "https://example.org/": "SOCKS",
        "socket://db.example.org:5432": "SOCKS",
        "https://a.corp.example/": "DIRECT",
        "socket://db.corp.example:5432": "DIRECT",
    }
    source = java_file(tmp_path, SELECTOR_JAVA, "Selector")
    run = kai_run("-c", str(path), "-p", "s", "--", *java_argv(source, *urls))
    assert run.returncode == 0, run
    assert dict(line.split() for line in run.stdout.splitlines()) == urls


def test_nothing_to_add_sets_nothing(kai_run, write_profiles) -> None:
    # An empty JAVA_TOOL_OPTIONS would still make every JVM print "Picked up JAVA_TOOL_OPTIONS: ".
    path = write_profiles("[profiles.x]\njvm = true\n")
    seen = child_env(kai_run, path, "-p", "x")
    assert "JAVA_TOOL_OPTIONS" not in seen and "MAVEN_OPTS" not in seen
    seen = child_env(kai_run, path, "-p", "x", env={"JAVA_TOOL_OPTIONS": "-Dhttp.proxyHost=old"})
    assert "JAVA_TOOL_OPTIONS" not in seen
    seen = child_env(kai_run, path, "-p", "x", env={"JAVA_TOOL_OPTIONS": "-Xmx1g"})
    assert seen["JAVA_TOOL_OPTIONS"] == "-Xmx1g"


def test_maven_settings_from_the_installed_cli(kai_run, write_profiles) -> None:
    path = write_profiles('[profiles.m]\nall_proxy = "http://u:p%26w@127.0.0.1:3128"\n')
    run = kai_run("-c", str(path), "env", "-p", "m", "--format", "maven-settings")
    assert run.returncode == 0, run
    root = ET.fromstring(run.stdout)
    assert [p.findtext("protocol") for p in root.findall("proxy")] == ["http", "https"]
    assert {p.findtext("password") for p in root.findall("proxy")} == {"p&w"}
    assert "&amp;" in run.stdout


def test_maven_opts_on_windows_quotes_and_stays_idempotent() -> None:
    options = jvm.jvm_options({"https_proxy": "http://u:p%20w@h:1"}, "a.example", None)
    value, warnings = jvm.append_options(jvm.MAVEN_OPTS, "-Xmx1g", options, windows=True)
    assert warnings == []
    assert '"-Dhttps.proxyPassword=p w"' in value
    assert '"-Dhttp.nonProxyHosts=a.example|*.a.example"' in value  # cmd would pipe a bare |
    words = [w for _, _, w in jvm.split_maven_opts(value, windows=True)]
    assert "-Dhttps.proxyPassword=p w" in words
    again, _ = jvm.append_options(jvm.MAVEN_OPTS, value, options, windows=True)
    assert again == value


@pytest.mark.parametrize("name", ["_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"])
def test_a_later_jvm_variable_overriding_ours_is_warned_about(write_profiles, name: str) -> None:
    path = write_profiles('[profiles.x]\njvm = true\nhttps_proxy = "http://p:1"\n')
    env = {name: "-Xmx1g -Dhttps.proxyHost=elsewhere -Dhttps.proxyPort=9 -Dmine=1"}
    result = invoke("-c", str(path), "env", "-p", "x", env=env)
    assert result.exit_code == 0
    assert f"{name} sets https.proxyHost, https.proxyPort" in result.stderr
    assert "elsewhere" not in result.stderr
    quiet = invoke("-c", str(path), "env", "-p", "x", env={name: "-Xmx1g"})
    assert name not in quiet.stderr


@needs_java
def test_jdk_java_options_really_wins(kai_run, write_profiles, tmp_path) -> None:
    """Why the warning above exists: the launcher reads JDK_JAVA_OPTIONS after JAVA_TOOL_OPTIONS."""
    path = write_profiles('[profiles.x]\njvm = true\nhttps_proxy = "http://127.0.0.1:3128"\n')
    source = java_file(tmp_path, PROPS_JAVA, "Props")
    env = {"JDK_JAVA_OPTIONS": "-Dhttps.proxyHost=elsewhere"}
    run = kai_run("-c", str(path), "-p", "x", "--", *java_argv(source, "https.proxyHost"), env=env)
    assert run.returncode == 0, run
    assert run.stdout.strip() == "https.proxyHost=elsewhere"
    assert "JDK_JAVA_OPTIONS sets https.proxyHost" in run.stderr


# --- doctor ----------------------------------------------------------------------------------


def doctor_rows(path: Path, profile: str, env: dict[str, str] | None = None):
    result = invoke("doctor", "-c", str(path), "-p", profile, "--timeout", "2", "--json", env=env)
    assert result.exit_code in (0, 1), result.output
    return {r["check"]: r for r in json.loads(result.stdout)}, result.output


def test_doctor_jvm_checks(write_profiles, tmp_path: Path) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "corp.pem"))
    path = write_profiles(
        """
        [profiles.j]
        jvm = true
        https_proxy = "http://jdoe:hunter2@127.0.0.1:9"
        no_proxy = ["corp.example", "10.0.0.0/8"]
        ca_bundle = "corp.pem"
        [profiles.plain]
        https_proxy = "http://127.0.0.1:9"
        """
    )
    rows, output = doctor_rows(path, "j")
    assert "hunter2" not in output
    options = rows["jvm.options"]
    assert options["status"] == "warn"
    assert "https via 127.0.0.1:9" in options["message"]
    assert "10.0.0.0/8" in options["message"] and options["hint"]
    store = rows["jvm.truststore"]
    assert store["status"] == "ok", store
    assert "(the profile's 1 CA among them)" in store["message"]
    assert store["target"].endswith(".p12")

    # A damaged file is reused as it is (content-addressed): doctor says what to do.
    Path(store["target"]).write_bytes(b"not a keystore")
    rows, _ = doctor_rows(path, "j")
    assert rows["jvm.truststore"]["status"] == "fail"
    assert "delete the file" in rows["jvm.truststore"]["hint"]

    rows, _ = doctor_rows(path, "plain")
    assert not [c for c in rows if c.startswith("jvm.")]


def test_doctor_jvm_options_ok_and_overrides(write_profiles) -> None:
    path = write_profiles('[profiles.j]\njvm = true\nhttps_proxy = "http://127.0.0.1:9"\n')
    rows, _ = doctor_rows(path, "j")
    assert rows["jvm.options"]["status"] == "ok", rows["jvm.options"]
    assert "jvm.truststore" not in rows  # no ca_bundle
    rows, _ = doctor_rows(path, "j", env={"_JAVA_OPTIONS": "-Dhttps.proxyHost=x"})
    assert rows["jvm.options"]["status"] == "warn"
    assert "_JAVA_OPTIONS sets https.proxyHost" in rows["jvm.options"]["message"]
