"""A PKCS12 truststore (RFC 7292) written by hand: certificates only, for the JVM.

The JVM does not read PEM bundles: `javax.net.ssl.trustStore` wants a keystore. A PKCS12 file is
one the JDK reads on every version kai-run cares about, and one `keytool` and OpenSSL can inspect.
It is written here with a few lines of DER rather than with `cryptography`, which the exec path
must not import (its import alone costs more than the whole exec path may spend).

Layout (what `cryptography`'s `serialize_java_truststore(..., NoEncryption())` writes too):

    PFX { version 3,
          authSafe ContentInfo(data, AuthenticatedSafe {
              ContentInfo(data, SafeContents { certBag, certBag, ... }) }),
          macData { DigestInfo(sha256, HMAC), salt, iterations } }

Each certBag carries a friendlyName (the JDK's alias) and the Oracle "trusted key usage"
attribute (2.16.840.1.113894.746875.1.1 = anyExtendedKeyUsage): without it the JDK loads a bag
that holds a certificate but no key as nothing at all, with it as a trustedCertEntry.
The bags are not encrypted: the file holds only public certificates, so the password only keys
the MAC, and it is a fixed, documented one (TRUSTSTORE_PASSWORD). The MAC is HMAC-SHA256 with
the key from RFC 7292 appendix B's KDF, which JDK 8u301+, 11.0.12+ and every JDK 12+ verify.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac

TRUSTSTORE_PASSWORD = "changeit"  # the JDK's own cacerts password: familiar, and nothing to hide
# OpenSSL's and cryptography's default. The MAC guards public certificates with a public password,
# so more rounds (the JDK writes 10000) would only slow down the cache miss.
MAC_ITERATIONS = 2048

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"

# Object identifiers, already DER-encoded (tag 06, length, value).
_OID_DATA = bytes.fromhex("06092a864886f70d010701")  # 1.2.840.113549.1.7.1
_OID_CERT_BAG = bytes.fromhex("060b2a864886f70d010c0a0103")  # 1.2.840.113549.1.12.10.1.3
_OID_X509_CERT = bytes.fromhex("060a2a864886f70d01091601")  # 1.2.840.113549.1.9.22.1
_OID_FRIENDLY_NAME = bytes.fromhex("06092a864886f70d010914")  # 1.2.840.113549.1.9.20
# 2.16.840.1.113894.746875.1.1
_OID_ORACLE_TRUSTED_KEY_USAGE = bytes.fromhex("060c6086480186f966adca7b0101")
_OID_ANY_EXTENDED_KEY_USAGE = bytes.fromhex("0604551d2500")  # 2.5.29.37.0
_OID_SHA256 = bytes.fromhex("0609608648016503040201")  # 2.16.840.1.101.3.4.2.1
_OID_COMMON_NAME = bytes.fromhex("550403")  # 2.5.4.3 (value only: compared, not written)
_OID_ORG_UNIT = bytes.fromhex("55040b")  # 2.5.4.11
_OID_ORG = bytes.fromhex("55040a")  # 2.5.4.10

_SEQUENCE, _SET, _INTEGER, _OCTET_STRING, _NULL, _BMP_STRING = 0x30, 0x31, 0x02, 0x04, 0x05, 0x1E
_CONTEXT_0 = 0xA0  # [0] EXPLICIT, constructed


# --- DER writing ---------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _seq(*items: bytes) -> bytes:
    return _tlv(_SEQUENCE, b"".join(items))


def _set_of(*items: bytes) -> bytes:
    # DER orders the members of a SET OF by their encodings.
    return _tlv(_SET, b"".join(sorted(items)))


def _integer(value: int) -> bytes:
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _bmp_string(text: str) -> bytes:
    return _tlv(_BMP_STRING, text.encode("utf-16-be"))


def _content_info_data(payload: bytes) -> bytes:
    return _seq(_OID_DATA, _tlv(_CONTEXT_0, _tlv(_OCTET_STRING, payload)))


def _cert_bag(der: bytes, alias: str) -> bytes:
    cert_bag = _seq(_OID_X509_CERT, _tlv(_CONTEXT_0, _tlv(_OCTET_STRING, der)))
    attributes = _set_of(
        _seq(_OID_FRIENDLY_NAME, _set_of(_bmp_string(alias))),
        _seq(_OID_ORACLE_TRUSTED_KEY_USAGE, _set_of(_OID_ANY_EXTENDED_KEY_USAGE)),
    )
    return _seq(_OID_CERT_BAG, _tlv(_CONTEXT_0, cert_bag), attributes)


# --- the MAC (RFC 7292 appendix B) ---------------------------------------------------------


def derive_key(password: str, salt: bytes, iterations: int, size: int = 32) -> bytes:
    """RFC 7292 appendix B.2 with SHA-256 (u = 32, v = 64) and ID 3, the MAC key."""
    u, v = 32, 64

    def stretch(data: bytes) -> bytes:
        if not data:
            return b""
        length = v * -(-len(data) // v)
        return (data * (length // len(data) + 1))[:length]

    d = bytes([3]) * v
    # The password is a BMPString with a two-byte NUL terminator (so "" is two zero bytes).
    i = bytearray(stretch(salt) + stretch(password.encode("utf-16-be") + b"\x00\x00"))
    out = b""
    while len(out) < size:
        a = hashlib.sha256(d + i).digest()
        for _ in range(iterations - 1):
            a = hashlib.sha256(a).digest()
        out += a
        if len(out) >= size:
            break
        b = int.from_bytes((a * (v // u + 1))[:v], "big") + 1
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j : j + v], "big") + b) % (1 << (v * 8))
            i[j : j + v] = block.to_bytes(v, "big")
    return out[:size]


# --- reading what goes in ------------------------------------------------------------------


def pem_to_der(text: str) -> list[bytes]:
    """The DER certificates of a PEM text, in order, each once. Text outside the blocks (certifi's
    comments, kai-run's `# from` lines) is skipped."""
    found: dict[bytes, None] = {}
    start = text.find(_BEGIN)
    while start >= 0:
        end = text.find(_END, start)
        if end < 0:
            break
        body = text[start + len(_BEGIN) : end]
        try:
            der = binascii.a2b_base64(body.encode("ascii"))
        except (binascii.Error, UnicodeEncodeError):
            der = b""
        if der[:1] == b"\x30":
            found.setdefault(der, None)
        start = text.find(_BEGIN, end)
    return list(found)


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        n = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + n > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + n


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, cstart, cend = _read_tlv(data, start)
        out.append((tag, cstart, cend))
        start = cend
    return out


def subject_label(der: bytes) -> str:
    """The subject's CN (else OU, else O) of a DER certificate; "" when there is none or the DER is
    not a certificate this reader understands. Only for the alias `keytool -list` shows."""
    try:
        _, cs, ce = _read_tlv(der, 0)  # Certificate
        _, ts, te = _children(der, cs, ce)[0]  # TBSCertificate
        fields = _children(der, ts, te)
        if fields[0][0] == _CONTEXT_0:  # [0] version
            fields = fields[1:]
        _, ss, se = fields[4]  # serial, signature, issuer, validity, subject
        values: dict[bytes, str] = {}
        for _, rs, re_ in _children(der, ss, se):  # RDN (SET)
            for _, as_, ae in _children(der, rs, re_):  # AttributeTypeAndValue
                (_, os_, oe), (vtag, vs, ve) = _children(der, as_, ae)[:2]
                raw = der[vs:ve]
                value = raw.decode("utf-16-be" if vtag == _BMP_STRING else "utf-8", "replace")
                values.setdefault(der[os_:oe], value)
    except (IndexError, ValueError):
        return ""
    for oid in (_OID_COMMON_NAME, _OID_ORG_UNIT, _OID_ORG):
        if values.get(oid, "").strip():
            return values[oid].strip()
    return ""


def aliases(certificates: list[bytes]) -> list[str]:
    """One alias per certificate: its lower-cased subject name, unique (the JDK lower-cases aliases
    and keeps one entry per alias)."""
    out: list[str] = []
    seen: set[str] = set()
    for der in certificates:
        base = " ".join(subject_label(der).lower().split()) or "certificate"
        alias, n = base, 1
        while alias in seen:
            n += 1
            alias = f"{base} ({n})"
        seen.add(alias)
        out.append(alias)
    return out


# --- the file ------------------------------------------------------------------------------


def truststore(
    certificates: list[bytes],
    password: str = TRUSTSTORE_PASSWORD,
    *,
    names: list[str] | None = None,
    salt: bytes | None = None,
    iterations: int = MAC_ITERATIONS,
) -> bytes:
    """The PKCS12 file holding `certificates` (DER) as trusted certificate entries.

    `names` are the friendlyNames (default: `aliases()`); `salt` defaults to one derived from the
    content, so the same certificates always give the same file.
    """
    labels = aliases(certificates) if names is None else names
    bags = b"".join(_cert_bag(der, alias) for der, alias in zip(certificates, labels, strict=True))
    auth_safe = _seq(_content_info_data(_seq(bags)))
    if salt is None:
        salt = hashlib.sha256(b"kai-run pkcs12 salt\0" + auth_safe).digest()[:16]
    key = derive_key(password, salt, iterations)
    digest = hmac.new(key, auth_safe, hashlib.sha256).digest()
    mac_data = _seq(
        _seq(_seq(_OID_SHA256, _tlv(_NULL, b"")), _tlv(_OCTET_STRING, digest)),
        _tlv(_OCTET_STRING, salt),
        _integer(iterations),
    )
    return _seq(_integer(3), _content_info_data(auth_safe), mac_data)
