"""Certificate signing requests and the SPIFFE IDs in certificates.

The CSR names the SPIFFE ID the sidecar asks for (a URI SAN), but controld decides the ID from
the join token (or the current leaf on renewal) and ignores the request.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from meshd.identity.keys import PrivateKey

__all__ = ["build_csr", "csr_der", "csr_pem", "spiffe_id_for", "spiffe_ids"]


def spiffe_id_for(trust_domain: str, namespace: str, service: str) -> str:
    """``spiffe://<trust-domain>/ns/<namespace>/svc/<service>``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/svc/{service}"


def build_csr(
    key: PrivateKey, *, spiffe_id: str | None = None, common_name: str | None = None
) -> x509.CertificateSigningRequest:
    """A CSR for ``key``'s public half, signed by ``key`` (ECDSA-SHA256).

    ``spiffe_id`` becomes a URI SAN (the requested ID); ``common_name`` the subject CN.
    """
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if spiffe_id is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256())


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    """The CSR as PEM text."""
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    """The CSR's DER encoding (what a renewal's signature covers)."""
    return csr.public_bytes(serialization.Encoding.DER)


def spiffe_ids(
    subject: x509.Certificate | x509.CertificateSigningRequest,
) -> list[str]:
    """The ``spiffe://`` URI SANs of a certificate or CSR (none if it has no SAN)."""
    try:
        san = subject.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return [uri for uri in uris if uri.startswith("spiffe://")]
