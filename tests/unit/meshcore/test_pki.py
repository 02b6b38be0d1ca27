"""meshcore.pki.signed_by: which root signed a certificate (name and signature)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshcore.pki import signed_by

pytestmark = pytest.mark.timeout(30)

_NOW = datetime.datetime.now(datetime.UTC)


def _cert(
    subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(minutes=1))
        .not_valid_after(_NOW + datetime.timedelta(hours=1))
        .sign(signer, hashes.SHA256())
    )


def test_signed_by_needs_the_name_and_the_signature() -> None:
    root_key, other_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert("mesh root", "mesh root", root_key, root_key)
    # Same name, another key: a rotated-in root, or an impostor.
    same_name = _cert("mesh root", "mesh root", other_key, other_key)
    other_name = _cert("other root", "other root", root_key, root_key)
    leaf = _cert("leaf", "mesh root", leaf_key, root_key)

    assert signed_by(leaf, root)
    assert not signed_by(leaf, same_name)
    assert not signed_by(leaf, other_name)
    assert not signed_by(root, leaf)
