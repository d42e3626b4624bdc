"""The operating system's trust store, as PEM text kai-run can merge into its bundle.

`ca_mode = "system"` trusts what the machine trusts: on a managed laptop the corporate root is
installed into the OS store (by MDM, group policy, or the distribution's `update-ca-trust`), but
requests and httpx use certifi and Node its compiled-in list, so none of them sees it. kai-run
reads the store and hands the roots to the child as a file.

- Linux and the BSDs: the distribution's bundle file, the first that exists of `BUNDLE_FILES`
  (Go's crypto/x509 list). `ssl` is not imported for `get_default_verify_paths()` on the exec path
  (it costs milliseconds): it is asked only when none of the files exists.
- macOS: `security find-certificate -a -p <keychain>` for the system roots, the System keychain
  (where MDM installs corporate roots) and the user's login keychain. It prints every certificate
  whatever its trust settings say (a root the user marked "Never Trust" is still printed). Its
  output is cached in the user cache dir, keyed on the keychains' mtimes and sizes, so `security`
  runs only when a keychain changed.
- Windows: `ssl.enum_certificates("ROOT")`, keeping certificates trusted for everything or for
  server authentication. Not the "CA" store: it holds intermediates, including ones Windows
  fetched on its own (AIA); a bundle makes every certificate in it a trust anchor for clients
  that verify partial chains (Python 3.13's default context does), which would trust an
  intermediate whose root was removed. Roots installed by group policy or for the machine are
  part of "ROOT": Python opens the user's, the machine's and the policy stores together.

Everything is injectable (platform, candidate files, keychains, enumerator) so each branch is
tested on any machine.
"""

from __future__ import annotations

import os
import sys

from kai_launch import paths
from kai_launch.errors import TrustError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    # (certificate bytes, encoding, trust): ssl.enum_certificates' rows
    WindowsRow = tuple[bytes, str, set[str] | bool]

_BEGIN = "-----BEGIN CERTIFICATE-----"

# Go's crypto/x509 root_linux.go, then root_bsd.go: the first existing file is the OS bundle.
BUNDLE_FILES: tuple[str, ...] = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Gentoo, Arch, NixOS
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL 6
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # CentOS, RHEL 7+
    "/etc/ssl/cert.pem",  # Alpine, OpenBSD
    "/usr/local/etc/ssl/cert.pem",  # FreeBSD
    "/usr/local/share/certs/ca-root-nss.crt",  # DragonFly
    "/etc/openssl/certs/ca-certificates.crt",  # NetBSD
)
MACOS_SYSTEM_KEYCHAINS: tuple[str, ...] = (
    "/System/Library/Keychains/SystemRootCertificates.keychain",  # Apple's roots
    "/Library/Keychains/System.keychain",  # admin- and MDM-installed roots
)
SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
_CACHE_NAME = "macos-keychains.pem"
_CACHE_VERSION = "1"


class SystemRoots:
    """The OS store's certificates as PEM, and how many each source contributed."""

    __slots__ = ("parts", "pem", "source")

    def __init__(self, source: str, pem: str, parts: list[tuple[str, int]]) -> None:
        self.source = source  # one line for the bundle's header and messages
        self.pem = pem
        self.parts = parts  # (file, keychain or store, number of certificates)

    @property
    def count(self) -> int:
        return sum(n for _, n in self.parts)


def system_roots(
    where: str,
    *,
    platform: str | None = None,
    candidates: Sequence[str] | None = None,
    keychains: Sequence[str] | None = None,
    enumerate_store: Callable[[str], Iterable[WindowsRow]] | None = None,
) -> SystemRoots:
    """The OS store's roots; raises TrustError (naming `where`) when there are none to read."""
    platform = platform or sys.platform
    if platform == "darwin":
        return macos_roots(where, keychains if keychains is not None else macos_keychains())
    if platform == "win32":
        return windows_roots(where, enumerate_store)
    return bundle_file_roots(where, BUNDLE_FILES if candidates is None else candidates)


def count_pem(text: str) -> int:
    return text.count(_BEGIN)


# --- Linux and the BSDs ----------------------------------------------------------------------


def bundle_file_roots(where: str, candidates: Sequence[str]) -> SystemRoots:
    path = next((p for p in candidates if os.path.isfile(p)), None)
    if path is None:
        path = _openssl_default_cafile()
    if path is None:
        raise TrustError(
            "ca_mode = system, but no operating system CA bundle was found (looked for "
            + ", ".join(candidates)
            + ")",
            where,
            "install the distribution's CA package (ca-certificates), or use ca_mode = append "
            "with the corporate root in ca_bundle",
        )
    try:
        with open(path, encoding="latin-1") as f:
            text = f.read()
    except OSError as e:
        raise TrustError(
            f"cannot read the operating system CA bundle {path}: {e.strerror}",
            where,
            "check its permissions, or use ca_mode = append with the corporate root in ca_bundle",
        ) from None
    count = count_pem(text)
    if not count:
        raise TrustError(
            f"the operating system CA bundle {path} holds no PEM certificate",
            where,
            "regenerate it (update-ca-certificates or update-ca-trust), or use ca_mode = append",
        )
    return SystemRoots(path, text, [(path, count)])


def _openssl_default_cafile() -> str | None:
    import ssl  # only when no well-known file exists: importing it costs milliseconds

    found = ssl.get_default_verify_paths()
    for path in (found.cafile, found.openssl_cafile):
        if path and os.path.isfile(path):
            return path
    return None


# --- macOS ------------------------------------------------------------------------------------


def macos_keychains() -> list[str]:
    """The system roots, the System keychain and the user's login keychain (newer macOS names
    it login.keychain-db)."""
    home = os.path.expanduser("~/Library/Keychains")
    login = os.path.join(home, "login.keychain-db")
    if not os.path.exists(login):
        login = os.path.join(home, "login.keychain")
    return [*MACOS_SYSTEM_KEYCHAINS, login]


def macos_roots(where: str, keychains: Sequence[str]) -> SystemRoots:
    present = [k for k in keychains if os.path.isfile(k)]
    if not present:
        raise TrustError(
            "ca_mode = system, but none of the macOS keychains exists ("
            + ", ".join(keychains)
            + ")",
            where,
            "use ca_mode = append with the corporate root in ca_bundle",
        )
    key = _keychains_key(present)
    cache = os.path.join(paths.user_cache_dir(), "ca", _CACHE_NAME)
    parts = _read_cache(cache, key)
    if parts is None:
        parts = [(k, _security(k, where)) for k in present]
        _write_cache(cache, key, parts)
    pem = "".join(f"# kai-run: from {k}\n{text.strip()}\n" for k, text in parts if text.strip())
    counts = [(k, count_pem(text)) for k, text in parts]
    if not sum(n for _, n in counts):
        raise TrustError(
            "ca_mode = system, but the macOS keychains hold no certificate",
            where,
            "check `security find-certificate -a -p "
            + MACOS_SYSTEM_KEYCHAINS[0]
            + "`, or use ca_mode = append",
        )
    return SystemRoots("macOS keychains (" + ", ".join(present) + ")", pem, counts)


def _keychains_key(keychains: Sequence[str]) -> str:
    import hashlib

    stamp = []
    for k in keychains:
        st = os.stat(k)
        stamp.append(f"{k}\0{st.st_mtime_ns}\0{st.st_size}")
    return hashlib.sha256("\n".join([_CACHE_VERSION, *stamp]).encode()).hexdigest()


def _read_cache(path: str, key: str) -> list[tuple[str, str]] | None:
    """The cached (keychain, PEM) sections when the cache was written for the same keychains."""
    try:
        with open(path, encoding="latin-1") as f:
            text = f.read()
    except OSError:
        return None
    header, _, body = text.partition("\n")
    if header != f"# kai-run: keychains {key}":
        return None
    parts: list[tuple[str, str]] = []
    for section in body.split("# kai-run: from ")[1:]:
        name, _, pem = section.partition("\n")
        parts.append((name, pem))
    return parts


def _write_cache(path: str, key: str, parts: list[tuple[str, str]]) -> None:
    body = "".join(f"# kai-run: from {k}\n{text.strip()}\n" for k, text in parts)
    data = f"# kai-run: keychains {key}\n{body}".encode("latin-1")
    from kai_launch.cachefile import write_quietly

    # Only a cache: when it cannot be written, the next run asks `security` again.
    write_quietly(path, data)


def _security(keychain: str, where: str) -> str:
    import shutil
    import subprocess

    exe = shutil.which("security") or "/usr/bin/security"
    argv = [exe, "find-certificate", "-a", "-p", keychain]
    try:
        proc = subprocess.run(
            argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30, check=False
        )
    except FileNotFoundError:
        raise TrustError(
            "ca_mode = system needs macOS's `security` command, which was not found",
            where,
            "it ships with macOS as /usr/bin/security: put /usr/bin on PATH",
        ) from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TrustError(
            f"cannot run `{' '.join(argv)}`: {e}",
            where,
            "run it in a terminal to see why, or use ca_mode = append",
        ) from None
    if proc.returncode != 0:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TrustError(
            f"`security find-certificate -a -p {keychain}` failed (exit {proc.returncode}"
            + (f": {said[-1]}" if said else "")
            + ")",
            where,
            "run it in a terminal to see why (a locked or damaged keychain?), or use "
            "ca_mode = append with the corporate root in ca_bundle",
        )
    return proc.stdout.decode("latin-1")


# --- Windows ----------------------------------------------------------------------------------


def windows_roots(
    where: str, enumerate_store: Callable[[str], Iterable[WindowsRow]] | None = None
) -> SystemRoots:
    import ssl

    if enumerate_store is None:
        enumerate_store = ssl.enum_certificates  # type: ignore[attr-defined,unused-ignore]
    try:
        rows = list(enumerate_store("ROOT"))
    except OSError as e:
        raise TrustError(
            f"cannot read the Windows certificate store ROOT: {e}",
            where,
            "use ca_mode = append with the corporate root in ca_bundle",
        ) from None
    seen: set[bytes] = set()
    blocks: list[str] = []
    for der, encoding, trust in rows:
        if encoding != "x509_asn" or der in seen or not server_auth_trusted(trust):
            continue
        seen.add(der)
        blocks.append(ssl.DER_cert_to_PEM_cert(der).strip())
    if not blocks:
        raise TrustError(
            "ca_mode = system, but the Windows ROOT store holds no certificate trusted for "
            "server authentication",
            where,
            "use ca_mode = append with the corporate root in ca_bundle",
        )
    source = "Windows certificate store ROOT"
    return SystemRoots(source, "\n".join(blocks) + "\n", [(source, len(blocks))])


def server_auth_trusted(trust: set[str] | bool) -> bool:
    """True: trusted for every purpose; a set: only for those extended key usages."""
    return trust is True or (isinstance(trust, (set, frozenset)) and SERVER_AUTH in trust)
