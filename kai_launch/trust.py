"""CA bundles: check the profile's PEM files and write the merged bundle the child trusts.

SSL_CERT_FILE, REQUESTS_CA_BUNDLE and friends each *replace* their client's whole trust store, so
pointing them at the corporate root alone breaks every public endpoint. kai-run therefore writes one
merged bundle (`append`: certifi's roots + the profile's CAs; `replace`: the profile's CAs only;
`system`: the operating system store's roots (kai_launch.systemca) + the profile's CAs) into
the user cache dir, named by a hash of its content, so it is written once and reused.
NODE_EXTRA_CA_CERTS is different: Node adds it to its own roots, so it gets the profile's CAs only
(in `system` mode the OS roots too: see environ._trust).
The JVM reads no PEM: for it the merged bundle is also written as a PKCS12 truststore (pkcs12.py),
next to it, named by a hash of the bundle's content, so it too is built once per content.
"""

from __future__ import annotations

import os
import sys

from kai_launch import paths
from kai_launch.errors import TrustError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kai_launch.systemca import SystemRoots

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


class Bundles:
    """The files the child's CA variables point at."""

    __slots__ = ("counts", "merged", "own", "sources")

    def __init__(
        self,
        merged: str,
        own: str,
        sources: list[str],
        counts: list[tuple[str, str, int]] | None = None,
    ) -> None:
        self.merged = merged  # certifi/OS roots + profile CAs (append/system), or profile CAs
        self.own = own  # the profile's CAs only, for NODE_EXTRA_CA_CERTS ("" when none)
        self.sources = sources
        # What the merged bundle holds, in order: (kind, source, certificates), kind being
        # "certifi", "os" (a file, keychain or store of the OS) or "file" (a ca_bundle entry).
        self.counts = counts or []


def pem_certificates(path: str, where: str) -> list[str]:
    """The certificate blocks of a PEM file; raises TrustError when there is none."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise TrustError(
            f"CA file {path} does not exist",
            where,
            "fix the path in ca_bundle, or export the CA to that file",
        ) from None
    except IsADirectoryError:
        raise TrustError(
            f"CA file {path} is a directory", where, "name the PEM file itself"
        ) from None
    except OSError as e:
        raise TrustError(f"cannot read CA file {path}: {e.strerror}", where) from None
    blocks = [b.replace("\r\n", "\n") for b in _blocks(raw.decode("latin-1")) if _valid_block(b)]
    if not blocks:
        hint = "the file must hold at least one -----BEGIN CERTIFICATE----- block"
        if raw[:1] == b"\x30":
            hint = f"it looks like DER: convert it with `openssl x509 -inform der -in {path} -out ca.pem`"
        raise TrustError(f"CA file {path} holds no PEM certificate", where, hint)
    return blocks


def _valid_block(block: str) -> bool:
    import binascii

    body = block[len(_BEGIN) : -len(_END)]
    try:
        der = binascii.a2b_base64(body.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError):
        return False
    return der[:1] == b"\x30"  # an ASN.1 SEQUENCE, as every X.509 certificate is


def _blocks(text: str) -> list[str]:
    """The -----BEGIN/END CERTIFICATE----- blocks of `text`, as written."""
    out: list[str] = []
    start = text.find(_BEGIN)
    while start >= 0:
        end = text.find(_END, start)
        if end < 0:
            break
        out.append(text[start : end + len(_END)])
        start = text.find(_BEGIN, end)
    return out


def _body(block: str) -> str:
    return "".join(block[len(_BEGIN) : -len(_END)].split())


def certifi_bundle() -> str:
    """certifi's cacert.pem, found without importing certifi (importlib.resources is slow to load)."""
    for entry in sys.path:
        candidate = os.path.join(entry or ".", "certifi", "cacert.pem")
        if os.path.isfile(candidate):
            return candidate
    import certifi  # a zipped or otherwise unusual install

    return str(certifi.where())


def build_bundles(
    files: list[tuple[str, str]],
    mode: str,
    *,
    where: str = "ca_mode",
    roots: SystemRoots | None = None,
) -> Bundles:
    """files: (absolute path, where) pairs. Writes (or reuses) the merged and own bundles.

    mode "system" reads the OS store (`roots` when given), naming `where` in its errors.
    """
    per_file = [(path, pem_certificates(path, file_where)) for path, file_where in files]
    counts: list[tuple[str, str, int]] = []
    if mode == "replace":
        roots_text = header = ""
    elif mode == "system":
        if roots is None:
            from kai_launch.systemca import system_roots

            roots = system_roots(where)
        counts = [("os", source, n) for source, n in roots.parts]
        roots_text = roots.pem.rstrip()
        header = f"# kai-run: operating system roots from {roots.source}\n"
    else:
        root = certifi_bundle()
        with open(root, encoding="latin-1") as f:
            roots_text = f.read().rstrip()
        counts = [("certifi", root, roots_text.count(_BEGIN))]
        header = f"# kai-run: public roots from {root}\n"
    # A CA already among the roots (or in an earlier file) is not added again, so the counts
    # doctor shows are what each source really contributed.
    seen = {_body(b) for b in _blocks(roots_text)} if per_file and roots_text else set()
    own_parts: list[str] = []
    for path, blocks in per_file:
        new = [b for b in blocks if _body(b) not in seen]
        seen.update(_body(b) for b in new)
        counts.append(("file", path, len(new)))
        if new:
            own_parts.append(f"# kai-run: from {path}\n" + "\n".join(new) + "\n")
    own = "".join(own_parts)
    merged = f"{header}{roots_text}\n{own}" if header else own
    # "" when there is nothing of the profile's own (system mode without ca_bundle).
    return Bundles(_store(merged), _store(own) if own else "", [p for p, _ in files], counts)


def _store(content: str) -> str:
    import hashlib

    data = content.encode("latin-1")
    name = hashlib.sha256(data).hexdigest()[:32] + ".pem"
    directory = os.path.join(paths.user_cache_dir(), "ca")
    target = os.path.join(directory, name)
    if os.path.isfile(target):
        return target
    from kai_launch.cachefile import write_private

    try:
        write_private(target, data)
    except OSError as e:
        raise TrustError(
            f"cannot write the merged CA bundle: {e.strerror}",
            directory,
            "check that the cache dir is writable",
        ) from None
    return target


def build_truststore(pem_path: str, where: str) -> str:
    """The PKCS12 truststore holding the certificates of the PEM bundle `pem_path` (the merged
    bundle): `<hash>.p12` in the same cache dir, the hash over the bundle's content and the
    file format's version. An existing file is reused: only a miss decodes the certificates."""
    import hashlib

    from kai_launch import pkcs12
    from kai_launch.cachefile import write_private

    try:
        with open(pem_path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise TrustError(f"cannot read CA bundle {pem_path}: {e.strerror}", where) from None
    key = hashlib.sha256(f"kai-run pkcs12 v1\0{pkcs12.TRUSTSTORE_PASSWORD}\0".encode() + pem)
    directory = os.path.join(paths.user_cache_dir(), "ca")
    target = os.path.join(directory, key.hexdigest()[:32] + ".p12")
    if os.path.isfile(target):
        return target
    data = pkcs12.truststore(pkcs12.pem_to_der(pem.decode("latin-1")))
    try:
        write_private(target, data)
    except OSError as e:
        raise TrustError(
            f"cannot write the JVM truststore: {e.strerror}",
            directory,
            "check that the cache dir is writable",
        ) from None
    return target
