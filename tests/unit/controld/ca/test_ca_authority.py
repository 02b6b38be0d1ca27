"""Roots, leaf signing from CSRs and chain verification (``controld.ca.authority``)."""

from __future__ import annotations

import base64
import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from ca_support import make_csr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from controld.ca import CAFileError, CSRError, RenewalRefused, RootCA, generate_root
from controld.ca.authority import (
    BACKDATE,
    DEFAULT_LEAF_TTL,
    leaf_spiffe_id,
    load_csr,
    sign_leaf,
    sign_server,
    spiffe_id,
    verify_leaf,
)

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
WEB = "spiffe://mesh.local/ns/default/svc/web"


def test_generated_root_is_a_p256_ca() -> None:
    root = generate_root(now=NOW)
    key = root.cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    constraints = root.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = root.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert root.cert.not_valid_before_utc == NOW - BACKDATE
    assert root.cert.issuer == root.cert.subject
    assert len(root.id) == 16 and root.id != generate_root(now=NOW).id


def test_import_round_trip_and_refusals() -> None:
    root = generate_root()
    again = RootCA.from_pem(root.cert_pem().encode(), root.key_pem())
    assert again.id == root.id
    other = generate_root()
    with pytest.raises(CAFileError, match="does not match"):
        RootCA.from_pem(root.cert_pem().encode(), other.key_pem())
    with pytest.raises(CAFileError, match="cannot load"):
        RootCA.from_pem(b"not pem", root.key_pem())
    # A leaf is not a CA.
    csr, _ = make_csr()
    _, public = load_csr(csr)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = sign_leaf(root, leaf_key.public_key(), WEB)
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    leaf_key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CAFileError, match="not a CA"):
        RootCA.from_pem(leaf_pem, leaf_key_pem)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CAFileError, match="ECDSA"):
        RootCA.from_pem(root.cert_pem().encode(), rsa_pem)
    assert public is not None


def test_leaf_is_a_spiffe_svid() -> None:
    root = generate_root(now=NOW)
    # The CSR asks for another identity: ignored, only its key is used.
    csr, key = make_csr(uri="spiffe://mesh.local/ns/default/svc/admin")
    _, public = load_csr(csr)
    leaf = sign_leaf(root, public, WEB, now=NOW)
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    assert leaf_spiffe_id(leaf) == WEB
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_before_utc == NOW - BACKDATE
    assert leaf.not_valid_after_utc == NOW + DEFAULT_LEAF_TTL
    assert leaf.issuer == root.cert.subject
    assert leaf.serial_number != sign_leaf(root, public, WEB, now=NOW).serial_number
    # The leaf verifies with cryptography's own path validation, as server and client.
    store = Store([root.cert])
    builder = PolicyBuilder().store(store).time(NOW + timedelta(hours=1))
    verified = builder.build_client_verifier().verify(leaf, [])
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier(WEB) in verified.subjects
    assert verify_leaf(leaf, [root.cert], now=NOW) == WEB


def test_leaf_ttl_is_capped_by_the_root() -> None:
    root = generate_root(now=NOW, ttl=timedelta(hours=2))
    _, public = load_csr(make_csr()[0])
    leaf = sign_leaf(root, public, WEB, now=NOW, ttl=timedelta(hours=5))
    assert leaf.not_valid_after_utc == root.cert.not_valid_after_utc


def test_identity_must_be_a_spiffe_id() -> None:
    root = generate_root()
    _, public = load_csr(make_csr()[0])
    with pytest.raises(ValueError, match="SPIFFE"):
        sign_leaf(root, public, "https://example.com/web")
    assert spiffe_id("td.example", "ns1", "api") == "spiffe://td.example/ns/ns1/svc/api"


def test_ed25519_csr_is_accepted() -> None:
    root = generate_root()
    csr, key = make_csr(ed25519.Ed25519PrivateKey.generate())
    _, public = load_csr(csr)
    leaf = sign_leaf(root, public, WEB)
    assert verify_leaf(leaf, [root.cert]) == WEB
    assert isinstance(key, ed25519.Ed25519PrivateKey)


def test_bad_csrs_are_refused() -> None:
    with pytest.raises(CSRError, match="PEM"):
        load_csr("garbage")
    p384, _ = make_csr(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(CSRError, match="P-256"):
        load_csr(p384)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(CSRError, match="P-256"):
        load_csr(rsa_csr)
    # Flip the signature's last byte: the CSR still parses, its signature doesn't verify.
    good, _ = make_csr()
    der = bytearray(x509.load_pem_x509_csr(good.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    body = base64.encodebytes(bytes(der)).decode()
    tampered = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CSRError, match="signature"):
        load_csr(tampered)


def test_verification_refusals() -> None:
    root, other = generate_root(now=NOW), generate_root(now=NOW)
    _, public = load_csr(make_csr()[0])
    leaf = sign_leaf(root, public, WEB, now=NOW)
    with pytest.raises(RenewalRefused, match="bundle"):
        verify_leaf(leaf, [other.cert], now=NOW)
    with pytest.raises(RenewalRefused, match="bundle"):
        verify_leaf(leaf, [root.cert], now=NOW + DEFAULT_LEAF_TTL + timedelta(seconds=1))
    with pytest.raises(RenewalRefused, match="no trust roots"):
        verify_leaf(leaf, [], now=NOW)
    assert verify_leaf(leaf, [other.cert, root.cert], now=NOW) == WEB


def test_controld_server_certificate() -> None:
    root = generate_root(now=NOW)
    _, public = load_csr(make_csr()[0])
    ip = ipaddress.ip_address("127.0.0.1")
    cert = sign_server(root, public, "td.example", dns_names=("localhost",), ips=(ip,), now=NOW)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://td.example/controld"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ip]
    # Chains to the root, but it is no workload identity: it can't renew as one.
    with pytest.raises(RenewalRefused, match="not a workload identity"):
        verify_leaf(cert, [root.cert], now=NOW)
