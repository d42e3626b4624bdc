"""ca_mode = "system": the operating system's trust store + the profile's CAs.

Linux is tested against this machine's real distribution bundle, and, for "the corporate root is
installed in the OS store", against a bundle file in tmp_path put in front of the well-known list
(never by touching /etc). macOS runs a fake `security` executable (a real process on PATH);
Windows gets its certificate rows from a fake enumerator. Real clients (requests, httpx) run as
children of a real kai-run and verify a real loopback HTTPS server (trustme).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trustme
from typer.testing import CliRunner

from kai_launch import systemca
from kai_launch.cli import app
from kai_launch.environ import CA_BUNDLE_VARIABLES
from kai_launch.errors import TrustError

OS_BUNDLE = next((p for p in systemca.BUNDLE_FILES if os.path.isfile(p)), None)
needs_os_bundle = pytest.mark.skipif(
    OS_BUNDLE is None or not sys.platform.startswith("linux"),
    reason="no distribution CA bundle on this machine",
)
CA_VARIABLES = (*CA_BUNDLE_VARIABLES, "NODE_EXTRA_CA_CERTS")

PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"
GET_WITH = {
    "requests": "import requests, sys; print(requests.get(sys.argv[1], timeout=10).status_code)",
    "httpx": "import httpx, sys; print(httpx.get(sys.argv[1], timeout=10).status_code)",
}


def blocks(text: str) -> list[str]:
    """The certificate blocks of a PEM text, normalised for comparison."""
    out, rest = [], text.replace("\r\n", "\n")
    while "-----BEGIN CERTIFICATE-----" in rest:
        start = rest.index("-----BEGIN CERTIFICATE-----")
        end = rest.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
        out.append(rest[start:end].strip())
        rest = rest[end:]
    return out


def child_env(kai_run, config: Path, profile: str) -> dict[str, str]:
    run = kai_run("-c", str(config), "-p", profile, "--", sys.executable, "-c", PRINT_ENV)
    assert run.returncode == 0, run
    return json.loads(run.stdout)


def exported(config: Path, profile: str) -> dict[str, str]:
    """`kai-run env --format json` in-process, so monkeypatched sources apply."""
    result = CliRunner().invoke(app, ["-c", str(config), "env", "-p", profile, "--format", "json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)["set"]


# --- Linux: the real distribution bundle -----------------------------------------------------


@needs_os_bundle
def test_real_os_bundle_and_own_ca_are_all_in_the_merged_file(kai_run, write_profiles, tmp_path):
    assert OS_BUNDLE is not None
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "corp-root.pem"))
    config = write_profiles('[profiles.sys]\nca_mode = "system"\nca_bundle = "corp-root.pem"\n')
    env = child_env(kai_run, config, "sys")
    merged = env["SSL_CERT_FILE"]
    assert merged.startswith(os.environ["XDG_CACHE_HOME"])
    # NODE_EXTRA_CA_CERTS too: Node never reads the OS store, so it needs the OS roots as well.
    assert {env[v] for v in CA_VARIABLES} == {merged}
    text = Path(merged).read_text(encoding="latin-1")
    os_blocks = blocks(Path(OS_BUNDLE).read_text(encoding="latin-1"))
    assert len(os_blocks) > 10
    merged_blocks = blocks(text)
    assert set(os_blocks) <= set(merged_blocks)
    assert ca.cert_pem.bytes().decode().strip() in merged_blocks
    assert len(merged_blocks) == len(os_blocks) + 1
    assert f"operating system roots from {OS_BUNDLE}" in text
    # Content addressed: a second run reuses the same file without rewriting it.
    mtime = Path(merged).stat().st_mtime_ns
    assert child_env(kai_run, config, "sys")["SSL_CERT_FILE"] == merged
    assert Path(merged).stat().st_mtime_ns == mtime


@needs_os_bundle
def test_only_ca_mode_system_sets_every_ca_variable(kai_run, write_profiles):
    """The managed-laptop case: no ca_bundle at all, and requests/httpx still get the OS roots
    instead of certifi's."""
    assert OS_BUNDLE is not None
    config = write_profiles('[profiles.laptop]\nca_mode = "system"\n')
    env = child_env(kai_run, config, "laptop")
    merged = env["SSL_CERT_FILE"]
    assert {env[v] for v in CA_VARIABLES} == {merged}
    merged_blocks = blocks(Path(merged).read_text(encoding="latin-1"))
    assert merged_blocks == blocks(Path(OS_BUNDLE).read_text(encoding="latin-1"))
    code = (
        "import requests; s = requests.Session(); "
        "print(s.merge_environment_settings('https://x.invalid/', {}, None, None, None)['verify'])"
    )
    run = kai_run("-c", str(config), "-p", "laptop", "--", sys.executable, "-c", code)
    assert run.returncode == 0, run
    assert run.stdout.strip() == merged


@needs_os_bundle
@pytest.mark.parametrize("client", ["requests", "httpx"])
def test_real_client_verifies_a_loopback_server_with_system_mode(
    kai_run, write_profiles, upstream, client
):
    config = write_profiles(
        f'[profiles.sys]\nca_mode = "system"\nca_bundle = ["{upstream.ca_pem_path}"]\n'
    )
    url = f"{upstream.url}/v1/models"
    run = kai_run("-c", str(config), "-p", "sys", "--", sys.executable, "-c", GET_WITH[client], url)
    assert run.returncode == 0, run
    assert run.stdout.strip() == "200"
    assert [r.path for r in upstream.requests] == ["/v1/models"]
    # Without the profile the client trusts certifi only and refuses the same server.
    plain = subprocess.run(
        [sys.executable, "-c", GET_WITH[client], url], capture_output=True, text=True, timeout=30
    )
    assert plain.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in plain.stderr


def test_ca_installed_in_the_os_store_is_trusted(write_profiles, upstream, tmp_path, monkeypatch):
    """The corporate root is in the OS bundle, not in any ca_bundle: system mode trusts it,
    append mode (certifi) does not."""
    store = tmp_path / "etc" / "ca-certificates.crt"
    store.parent.mkdir()
    other = trustme.CA().cert_pem.bytes().decode()
    store.write_text(other + upstream.ca.cert_pem.bytes().decode(), encoding="ascii")
    monkeypatch.setattr(systemca, "BUNDLE_FILES", (str(tmp_path / "missing.crt"), str(store)))
    config = write_profiles(
        '[profiles.sys]\nca_mode = "system"\n'
        f'[profiles.app-with]\nca_bundle = "{tmp_path / "unrelated.pem"}"\n'
    )
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "unrelated.pem"))
    env = exported(config, "sys")
    merged = Path(env["REQUESTS_CA_BUNDLE"]).read_text(encoding="latin-1")
    assert blocks(merged) == blocks(store.read_text())
    url = f"{upstream.url}/v1/models"
    child = {**os.environ, **env}
    run = subprocess.run(
        [sys.executable, "-c", GET_WITH["requests"], url],
        env=child,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "200"
    run = subprocess.run(
        [sys.executable, "-c", GET_WITH["httpx"], url],
        env=child,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    # append mode: certifi + an unrelated CA; the OS store's root is not there.
    app_env = {**os.environ, **exported(config, "app-with")}
    run = subprocess.run(
        [sys.executable, "-c", GET_WITH["requests"], url],
        env=app_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in run.stderr


def test_first_existing_candidate_wins(tmp_path):
    first, second = tmp_path / "a.crt", tmp_path / "b.crt"
    second.write_text(trustme.CA().cert_pem.bytes().decode())
    roots = systemca.system_roots("w", platform="linux", candidates=[str(first), str(second)])
    assert roots.source == str(second)
    assert roots.parts == [(str(second), 1)]
    first.write_text(trustme.CA().cert_pem.bytes().decode() * 1)
    roots = systemca.system_roots("w", platform="freebsd14", candidates=[str(first), str(second)])
    assert roots.source == str(first)


def test_exec_path_in_system_mode_imports_nothing_heavy_not_even_ssl(write_profiles):
    if OS_BUNDLE is None:
        pytest.skip("no distribution CA bundle: the ssl fallback is expected then")
    config = write_profiles('[profiles.sys]\nca_mode = "system"\n')
    argv = ["-m", "kai_launch", "-c", str(config), "-p", "sys", "--", "true"]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "kai_launch.systemca" in imported
    for heavy in ("ssl", "_ssl", "typer", "rich", "requests", "cryptography", "click", "tomlkit"):
        assert heavy not in imported, heavy


# --- errors ----------------------------------------------------------------------------------


def test_no_os_bundle_is_a_clear_error(write_profiles, tmp_path, monkeypatch):
    monkeypatch.setattr(systemca, "BUNDLE_FILES", (str(tmp_path / "none.crt"),))
    # As on a machine where OpenSSL's compiled-in default file does not exist either.
    monkeypatch.setattr(systemca, "_openssl_default_cafile", lambda: None)
    config = write_profiles('[profiles.sys]\nca_mode = "system"\n')
    result = CliRunner().invoke(app, ["-c", str(config), "env", "-p", "sys"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("kai-run: error: ca_mode = system, but no operating system CA")
    assert str(tmp_path / "none.crt") in lines[0]
    assert f"({config}" in lines[0] and "profile 'sys'" in lines[0] and "key 'ca_mode'" in lines[0]
    assert lines[1].startswith("  hint: ") and "ca-certificates" in lines[1]
    assert "Traceback" not in result.stderr


def test_without_candidates_openssls_default_file_is_the_fallback(tmp_path):
    import ssl

    paths = ssl.get_default_verify_paths()
    default = next(
        (p for p in (paths.cafile, paths.openssl_cafile) if p and os.path.isfile(p)), None
    )
    if default is None:
        pytest.skip("OpenSSL has no default CA file here")
    roots = systemca.bundle_file_roots("w", [str(tmp_path / "nothing.crt")])
    assert roots.source == default and roots.count > 0


def test_empty_or_unreadable_os_bundle(tmp_path):
    empty = tmp_path / "empty.crt"
    empty.write_text("# nothing here\n")
    with pytest.raises(TrustError) as e:
        systemca.system_roots("the-where", platform="linux", candidates=[str(empty)])
    assert "holds no PEM certificate" in e.value.what and e.value.where == "the-where"
    assert e.value.hint and "update-ca-certificates" in e.value.hint


# --- macOS: a fake `security` -------------------------------------------------------------------


@pytest.fixture
def fake_security(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `security` on PATH that logs its arguments and prints the keychain file (PEM here);
    exits 1 like the real one for a keychain named *broken*."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "security.log"
    script = bin_dir / "security"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            echo "$*" >> {log}
            for last; do :; done
            case "$last" in
              *broken*) echo "security: SecKeychainOpen: The specified keychain could not be found." >&2; exit 50;;
            esac
            cat "$last"
            """
        )
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(os.name == "nt", reason="a /bin/sh script stands in for security")
def test_macos_keychains_through_security_and_its_cache(tmp_path, fake_security):
    roots_kc, system_kc, login_kc = (tmp_path / n for n in ("roots.kc", "System.kc", "login.kc"))
    apple = [trustme.CA().cert_pem.bytes().decode() for _ in range(3)]
    corp = trustme.CA().cert_pem.bytes().decode()
    roots_kc.write_text("".join(apple))
    system_kc.write_text(corp)
    login_kc.write_text("")
    keychains = [str(roots_kc), str(system_kc), str(login_kc), str(tmp_path / "absent.kc")]

    roots = systemca.system_roots("w", platform="darwin", keychains=keychains)
    assert calls(fake_security) == [f"find-certificate -a -p {k}" for k in keychains[:3]]
    assert roots.parts == [(keychains[0], 3), (keychains[1], 1), (keychains[2], 0)]
    assert blocks(roots.pem) == blocks("".join(apple) + corp)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "kai-run" / "ca" / "macos-keychains.pem"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600

    # Second run: from the cache, `security` is not run.
    again = systemca.system_roots("w", platform="darwin", keychains=keychains)
    assert len(calls(fake_security)) == 3
    assert again.pem == roots.pem and again.parts == roots.parts

    # MDM installs a second corporate root: the System keychain's mtime and size change.
    corp2 = trustme.CA().cert_pem.bytes().decode()
    system_kc.write_text(corp + corp2)
    st = system_kc.stat()
    os.utime(system_kc, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    changed = systemca.system_roots("w", platform="darwin", keychains=keychains)
    assert len(calls(fake_security)) == 6
    assert (keychains[1], 2) in changed.parts
    assert corp2.strip() in blocks(changed.pem)

    # Only the mtime changes (same size): still noticed.
    os.utime(login_kc, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    systemca.system_roots("w", platform="darwin", keychains=keychains)
    assert len(calls(fake_security)) == 9


@pytest.mark.skipif(os.name == "nt", reason="a /bin/sh script stands in for security")
def test_macos_through_kai_run_build_bundles(tmp_path, fake_security):
    """The merged bundle in system mode on macOS: keychains first, then the profile's CAs."""
    from kai_launch.trust import build_bundles

    kc = tmp_path / "System.kc"
    kc.write_text(trustme.CA().cert_pem.bytes().decode())
    own = tmp_path / "own.pem"
    trustme.CA().cert_pem.write_to_path(str(own))
    roots = systemca.system_roots("w", platform="darwin", keychains=[str(kc)])
    made = build_bundles([(str(own), "x")], "system", roots=roots)
    assert made.counts == [("os", str(kc), 1), ("file", str(own), 1)]
    text = Path(made.merged).read_text()
    assert blocks(text) == blocks(kc.read_text()) + blocks(own.read_text())


@pytest.mark.skipif(os.name == "nt", reason="a /bin/sh script stands in for security")
def test_macos_security_failure_and_missing_keychains(tmp_path, fake_security, monkeypatch):
    broken = tmp_path / "broken.kc"
    broken.write_text("x")
    with pytest.raises(TrustError) as e:
        systemca.system_roots("where-it-is", platform="darwin", keychains=[str(broken)])
    assert f"security find-certificate -a -p {broken}` failed (exit 50" in e.value.what
    assert "could not be found" in e.value.what
    assert e.value.where == "where-it-is" and e.value.hint

    with pytest.raises(TrustError) as e:
        systemca.system_roots("w", platform="darwin", keychains=[str(tmp_path / "none.kc")])
    assert "none of the macOS keychains exists" in e.value.what

    empty = tmp_path / "empty.kc"
    empty.write_text("")
    with pytest.raises(TrustError) as e:
        systemca.system_roots("w", platform="darwin", keychains=[str(empty)])
    assert "hold no certificate" in e.value.what

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    other = tmp_path / "other.kc"
    other.write_text("y")
    if not os.path.exists("/usr/bin/security"):
        with pytest.raises(TrustError) as e:
            systemca.system_roots("w", platform="darwin", keychains=[str(other)])
        assert "`security` command, which was not found" in e.value.what


def test_macos_default_keychains_include_system_and_login(monkeypatch, tmp_path):
    kcs = systemca.macos_keychains()
    assert kcs[:2] == list(systemca.MACOS_SYSTEM_KEYCHAINS)
    assert kcs[2] == str(Path(os.environ["HOME"]) / "Library/Keychains/login.keychain")
    (Path(os.environ["HOME"]) / "Library/Keychains").mkdir(parents=True)
    (Path(os.environ["HOME"]) / "Library/Keychains/login.keychain-db").write_text("")
    assert systemca.macos_keychains()[2].endswith("login.keychain-db")


# --- Windows: a fake enumerator ------------------------------------------------------------------


def _der(ca: trustme.CA) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode())


def test_windows_keeps_roots_trusted_for_server_auth():
    everything, server, codesign, pkcs7 = (trustme.CA() for _ in range(4))
    rows = [
        (_der(everything), "x509_asn", True),
        (_der(server), "x509_asn", {systemca.SERVER_AUTH, "1.3.6.1.5.5.7.3.2"}),
        (_der(codesign), "x509_asn", {"1.3.6.1.5.5.7.3.3"}),  # code signing only
        (_der(everything), "x509_asn", True),  # the same root from the machine's store
        (_der(pkcs7), "pkcs_7_asn", True),
    ]
    asked: list[str] = []

    def enumerate_store(name: str):
        asked.append(name)
        return rows

    roots = systemca.system_roots("w", platform="win32", enumerate_store=enumerate_store)
    assert asked == ["ROOT"]
    assert roots.parts == [("Windows certificate store ROOT", 2)]
    assert blocks(roots.pem) == [
        everything.cert_pem.bytes().decode().strip(),
        server.cert_pem.bytes().decode().strip(),
    ]
    assert systemca.server_auth_trusted(True)
    assert not systemca.server_auth_trusted(set())
    assert not systemca.server_auth_trusted(False)

    with pytest.raises(TrustError) as e:
        systemca.system_roots("w", platform="win32", enumerate_store=lambda _: rows[2:3])
    assert "no certificate trusted for server authentication" in e.value.what

    def failing(_: str):
        raise OSError("access denied")

    with pytest.raises(TrustError) as e:
        systemca.system_roots("w", platform="win32", enumerate_store=failing)
    assert "access denied" in e.value.what


# --- profiles add --from-env: a shell that trusts the OS bundle ---------------------------------


def test_from_env_turns_the_os_bundle_into_ca_mode_system(tmp_path, monkeypatch, write_profiles):
    from kai_launch import edit

    store = tmp_path / "etc" / "ca-certificates.crt"
    store.parent.mkdir()
    trustme.CA().cert_pem.write_to_path(str(store))
    link = tmp_path / "cert.pem"
    link.symlink_to(store)  # as /etc/ssl/cert.pem often is
    monkeypatch.setattr(systemca, "BUNDLE_FILES", (str(store),))
    corp = tmp_path / "corp.pem"
    trustme.CA().cert_pem.write_to_path(str(corp))
    warnings: list[str] = []
    environ = {
        "SSL_CERT_FILE": str(link),
        "REQUESTS_CA_BUNDLE": str(store),
        "NODE_EXTRA_CA_CERTS": str(corp),
    }
    assert edit.profile_from_env(environ, warnings) == {
        "ca_bundle": [str(corp)],
        "ca_mode": "system",
    }
    assert edit.profile_from_env({"SSL_CERT_FILE": str(store)}, warnings) == {"ca_mode": "system"}
    # Any other whole-store file is still taken as the shell's exact trust: replace.
    assert edit.profile_from_env({"SSL_CERT_FILE": str(corp)}, warnings) == {
        "ca_bundle": [str(corp)],
        "ca_mode": "replace",
    }
    # End to end: the written profile builds a bundle from the OS store.
    config = write_profiles("")
    result = CliRunner().invoke(
        app,
        ["profiles", "add", "here", "--from-env", "-c", str(config)],
        env={"SSL_CERT_FILE": str(store)},
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert 'ca_mode = "system"' in config.read_text()
    assert blocks(Path(exported(config, "here")["SSL_CERT_FILE"]).read_text()) == blocks(
        store.read_text()
    )


def test_system_mode_without_ca_bundle_writes_only_the_merged_file(tmp_path):
    from kai_launch.trust import build_bundles

    store = tmp_path / "os.crt"
    trustme.CA().cert_pem.write_to_path(str(store))
    roots = systemca.system_roots("w", platform="linux", candidates=[str(store)])
    made = build_bundles([], "system", roots=roots)
    assert made.own == ""
    assert made.counts == [("os", str(store), 1)]
    cached = sorted(
        p.name for p in (Path(os.environ["XDG_CACHE_HOME"]) / "kai-run" / "ca").iterdir()
    )
    assert cached == [Path(made.merged).name]


def test_a_ca_already_in_the_os_store_is_not_counted_twice(tmp_path) -> None:
    import shutil

    from kai_launch.trust import build_bundles

    bundle = next((p for p in systemca.BUNDLE_FILES if os.path.isfile(p)), None)
    if bundle is None or sys.platform != "linux":
        pytest.skip("no distribution CA bundle here")
    copy = tmp_path / "os-copy.pem"
    shutil.copyfile(bundle, copy)
    own = trustme.CA()
    own.cert_pem.write_to_path(str(tmp_path / "corp.pem"))
    made = build_bundles([(str(copy), "t"), (str(tmp_path / "corp.pem"), "t")], "system")
    (os_kind, _, roots), (_, _, from_copy), (_, _, from_corp) = made.counts
    assert os_kind == "os" and roots > 0
    assert (from_copy, from_corp) == (0, 1)
    text = Path(made.merged).read_text(encoding="latin-1")
    assert text.count("-----BEGIN CERTIFICATE-----") == roots + 1
