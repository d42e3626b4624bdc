"""certinfo on real certificates: trustme CAs and leaves, and CAs built with cryptography."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kai_launch.certinfo import describe_der, read_pem_file, short_name
from kai_launch.errors import TrustError

NOW = dt.datetime.now(dt.UTC)


def build_ca(
    cn: str | None, org: str, not_before: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]
    attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    name = x509.Name(attrs)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_trustme_ca(tmp_path: Path) -> None:
    ca = trustme.CA(organization_name="Kai Corp Root")
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    [info] = read_pem_file(str(path))
    assert info.is_ca
    assert info.self_signed
    # trustme names have no CN: the short name falls back to the whole name, O first.
    assert info.subject.startswith("O=Kai Corp Root, OU=Testing CA #")
    assert info.subject_short == info.subject
    assert info.not_after.tzinfo is not None
    assert info.days_left() > 300  # trustme CAs last until the year 3000
    assert not info.is_expired()
    pairs = info.fingerprint_sha256.split(":")
    assert len(pairs) == 32 and all(len(p) == 2 and p == p.upper() for p in pairs)


def test_bundle_keeps_file_order(tmp_path: Path) -> None:
    first = build_ca("First Root", "Kai", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=9))
    second = build_ca("Second Root", "Kai", NOW, NOW + dt.timedelta(days=99))
    path = tmp_path / "bundle.pem"
    path.write_bytes(b"# comments between blocks are fine\n" + pem(first) + pem(second))
    infos = read_pem_file(str(path))
    assert [i.subject_short for i in infos] == ["First Root", "Second Root"]
    assert 8 < infos[0].days_left() < 9.01


def test_expired_ca(tmp_path: Path) -> None:
    cert = build_ca(
        "Kai Expired Root", "Kai Corp", NOW - dt.timedelta(days=400), NOW - dt.timedelta(days=35)
    )
    path = tmp_path / "expired.pem"
    path.write_bytes(pem(cert))
    [info] = read_pem_file(str(path))
    assert info.is_ca
    assert info.is_expired()
    assert -36 < info.days_left() < -34
    assert info.subject == "CN=Kai Expired Root, O=Kai Corp, C=DE"
    assert info.subject_short == "Kai Expired Root"
    assert info.issuer_short == "Kai Expired Root"
    # A caller can ask "was it valid then?" with an explicit clock.
    assert info.days_left(NOW - dt.timedelta(days=40)) > 0


def test_not_yet_valid() -> None:
    cert = build_ca("Future", "Kai", NOW + dt.timedelta(days=2), NOW + dt.timedelta(days=30))
    info = describe_der(cert.public_bytes(serialization.Encoding.DER))
    assert info.not_yet_valid()
    assert not info.is_expired()


def test_leaf_from_der() -> None:
    ca = trustme.CA(organization_name="Kai Intercept")
    leaf = ca.issue_cert("api.example.test", "127.0.0.1", common_name="api.example.test")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER
    )
    info = describe_der(der)
    assert not info.is_ca
    assert not info.self_signed
    assert info.subject_short == "api.example.test"
    assert "Kai Intercept" in info.issuer_short
    assert info.names == ("api.example.test", "127.0.0.1")


def test_short_name() -> None:
    with_cn = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mitmproxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mitmproxy"),
        ]
    )
    assert short_name(with_cn) == "mitmproxy"
    without_cn = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corp"),
        ]
    )
    assert short_name(without_cn) == "O=Corp, C=US"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no PEM certificate"),
        (b"just some text\n", "holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "cannot be parsed",
        ),
    ],
)
def test_bad_bundles(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(TrustError, match=message) as info:
        read_pem_file(str(path))
    assert info.value.where == str(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="not found") as info:
        read_pem_file(str(tmp_path / "missing.pem"))
    assert info.value.where == str(tmp_path / "missing.pem")
    with pytest.raises(TrustError, match="directory"):
        read_pem_file(str(tmp_path))


def test_der_file_is_not_pem(tmp_path: Path) -> None:
    cert = build_ca("Der Root", "Kai", NOW, NOW + dt.timedelta(days=9))
    path = tmp_path / "root.der"
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(TrustError) as info:
        read_pem_file(str(path))
    assert info.value.hint is not None and "openssl x509 -inform der" in info.value.hint


def test_describe_der_rejects_garbage() -> None:
    with pytest.raises(TrustError):
        describe_der(b"\x30\x03\x02\x01\x00")
