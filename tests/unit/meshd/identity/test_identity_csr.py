from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from meshd.identity.csr import build_csr, csr_der, csr_pem, spiffe_id_for, spiffe_ids
from meshd.identity.keys import generate_key, same_public_key

SPIFFE = "spiffe://mesh.test/ns/default/svc/web"


def test_spiffe_id_format() -> None:
    assert spiffe_id_for("mesh.test", "default", "web") == SPIFFE


def test_csr_carries_key_uri_san_and_valid_signature() -> None:
    key = generate_key()
    csr = build_csr(key, spiffe_id=SPIFFE, common_name="web")
    parsed = x509.load_pem_x509_csr(csr_pem(csr).encode())
    assert parsed.is_signature_valid
    assert same_public_key(key, parsed.public_key())
    assert spiffe_ids(parsed) == [SPIFFE]
    assert parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web"
    assert csr_der(csr) == parsed.public_bytes(serialization.Encoding.DER)


def test_csr_without_requested_id_has_no_san() -> None:
    csr = build_csr(generate_key())
    assert csr.is_signature_valid
    assert spiffe_ids(csr) == []
    assert list(csr.subject) == []
