"""Certificates for the mTLS bench: one ECDSA P-256 root and a leaf per service.

Each leaf carries the service's SPIFFE ID (what meshd checks) and a DNS name (what nginx can
check with ``proxy_ssl_name``; nginx does not match URI SANs), so both pairs of the suite use
the same key material. meshd reads only the ``spiffe://`` URI SAN and ignores the DNS one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "bench.test"
VALIDITY = dt.timedelta(days=1)


def spiffe_id(service: str) -> str:
    """The SPIFFE ID of ``service`` in the bench's trust domain (namespace ``default``)."""
    return f"spiffe://{TRUST_DOMAIN}/ns/default/svc/{service}"


def dns_name(service: str) -> str:
    """The DNS SAN of ``service``'s leaf (nginx's ``proxy_ssl_name``)."""
    return f"{service}.{TRUST_DOMAIN}"


@dataclass(frozen=True)
class LeafFiles:
    """Where one service's certificate and key were written."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """The root (the trust bundle of every peer) and each service's leaf files."""

    root: Path
    leaves: dict[str, LeafFiles]


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_key_usage(ca=ca), critical=True)
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def write_pki(out: Path, services: tuple[str, ...]) -> Pki:
    """Write ``root.pem`` and ``<service>.crt`` / ``<service>.key`` for ``services`` into ``out``.

    Leaves are for both server and client auth, valid for a day, with a SAN of the service's
    SPIFFE ID (URI) and :func:`dns_name` (DNS).
    """
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshd bench root")])
    root = _builder(root_name, root_name, root_key, ca=True).sign(root_key, hashes.SHA256())
    root_path = out / "root.pem"
    root_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    leaves = {}
    for service in services:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(spiffe_id(service)),
            x509.DNSName(dns_name(service)),
        ]
        cert = (
            _builder(x509.Name([]), root_name, key, ca=False)
            # An empty subject makes the SAN critical (RFC 5280 4.2.1.6).
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        files = LeafFiles(out / f"{service}.crt", out / f"{service}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, files.key)
        leaves[service] = files
    return Pki(root_path, leaves)
