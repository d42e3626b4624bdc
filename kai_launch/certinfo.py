"""What a certificate says about itself: subject, issuer, CA flag, validity, fingerprint.

`doctor` uses this for two things: describing each certificate of a CA bundle (is it a CA, when does
it expire) and naming the issuer of a certificate a server presented when verification failed
("issued by mitmproxy"). `cryptography` is imported inside the functions: only `doctor` pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from kai_launch.errors import TrustError

if TYPE_CHECKING:
    from cryptography import x509

# The attributes a person recognises a certificate by, most telling first. RFC 4514 order is the
# reverse of the DER order, which puts the country first for some CAs and the OU first for
# others; a fixed order reads the same for every certificate.
_NAME_ORDER: Final = ("CN", "O", "OU", "L", "ST", "C")


@dataclass(frozen=True)
class CertInfo:
    """One certificate, reduced to what a human needs to decide whether to trust it."""

    subject: str  # CN first: "CN=mitmproxy, O=mitmproxy"
    issuer: str
    is_ca: bool
    not_before: datetime  # timezone-aware, UTC
    not_after: datetime
    fingerprint_sha256: str  # upper-case hex pairs joined by ':', as browsers and openssl show it
    subject_short: str = ""  # the CN when there is one, else `subject`: for one-line messages
    issuer_short: str = ""
    names: tuple[
        str, ...
    ] = ()  # subjectAltName DNS names and IP addresses, for hostname mismatches

    @property
    def self_signed(self) -> bool:
        """Subject and issuer are the same name: a root, or a leaf signed with its own key."""
        return self.subject == self.issuer

    def days_left(self, now: datetime | None = None) -> float:
        """Days until `not_after`; negative once expired."""
        now = now or datetime.now(UTC)
        return (self.not_after - now).total_seconds() / 86400

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.days_left(now) < 0

    def not_yet_valid(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) < self.not_before


def format_name(name: x509.Name) -> str:
    """`CN=..., O=..., OU=...` in a fixed, human order; unknown attributes follow in DER order."""
    pairs = [(a.rfc4514_attribute_name, str(a.value)) for a in name]
    rank = {key: i for i, key in enumerate(_NAME_ORDER)}
    pairs.sort(key=lambda kv: rank.get(kv[0], len(rank)))  # stable: ties keep DER order
    return ", ".join(f"{k}={v}" for k, v in pairs)


def short_name(name: x509.Name) -> str:
    """The CN when the name has one ("mitmproxy"), else the whole name in `format_name` order."""
    from cryptography.x509.oid import NameOID

    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    return format_name(name)


def _describe(cert: x509.Certificate) -> CertInfo:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        # X.509 v1 roots have no extensions at all; OpenSSL still accepts a self-signed v1
        # certificate as a trust anchor, so call it a CA exactly then.
        is_ca = cert.version == x509.Version.v1 and cert.subject == cert.issuer
    except ValueError:
        # A malformed extension elsewhere in the certificate must not hide the rest of it.
        is_ca = False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(
            [*san.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        )
    except (x509.ExtensionNotFound, ValueError):
        names = ()
    return CertInfo(
        subject=format_name(cert.subject),
        issuer=format_name(cert.issuer),
        is_ca=is_ca,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        subject_short=short_name(cert.subject),
        issuer_short=short_name(cert.issuer),
        names=names,
    )


def describe_der(der: bytes) -> CertInfo:
    """Describe one DER certificate, typically the one a server presented in a TLS handshake."""
    from cryptography import x509

    try:
        return _describe(x509.load_der_x509_certificate(der))
    except ValueError as e:
        raise TrustError(f"cannot parse the certificate: {e}") from e


def describe_pem(data: bytes, where: str = "<pem>") -> list[CertInfo]:
    """Every certificate in PEM text, in file order. Raises TrustError when there is none."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        # cryptography says "Unable to load PEM file" for both "no certificate" and "a broken
        # one"; tell the two apart, since the fixes differ.
        what = (
            "holds a certificate that cannot be parsed"
            if b"-----BEGIN CERTIFICATE-----" in data
            else "holds no PEM certificate"
        )
        raise TrustError(
            f"CA bundle {what}",
            where,
            hint="a CA bundle is PEM text with -----BEGIN CERTIFICATE----- blocks "
            "(convert DER with: openssl x509 -inform der -in FILE -out FILE.pem)",
        ) from e
    return [_describe(c) for c in certs]


def read_pem_file(path: str) -> list[CertInfo]:
    """Every certificate in a PEM bundle. Raises TrustError when missing, unreadable or empty."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise TrustError("CA bundle file not found", path) from e
    except IsADirectoryError as e:
        raise TrustError("CA bundle path is a directory, not a file", path) from e
    except OSError as e:
        raise TrustError(f"cannot read CA bundle: {e.strerror or e}", path) from e
    return describe_pem(data, path)
