"""The CA's cryptography: roots (ECDSA P-256), leaf signing from CSRs, chain verification.

Leaves are SPIFFE X.509-SVIDs: one URI SAN ``spiffe://<trust-domain>/ns/<ns>/svc/<service>``,
key usage ``digitalSignature``, extended key usage ``serverAuth`` + ``clientAuth``, a random
serial, and a ``not_before`` 60 s in the past so a peer whose clock is slightly behind accepts
a fresh certificate. The identity always comes from the caller (the join token or the current
leaf), never from the CSR: only the CSR's public key is used.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from controld.ca.errors import CAFileError, CSRError, RenewalRefused
from meshcore.api.ca import SPIFFE_ID_PATTERN

__all__ = [
    "BACKDATE",
    "DEFAULT_LEAF_TTL",
    "DEFAULT_ROOT_TTL",
    "RootCA",
    "controld_spiffe_id",
    "generate_root",
    "leaf_spiffe_id",
    "load_csr",
    "sign_leaf",
    "sign_server",
    "spiffe_id",
    "verify_leaf",
]

#: Lifetime of a leaf unless asked otherwise.
DEFAULT_LEAF_TTL = timedelta(hours=24)
#: Lifetime of a generated root.
DEFAULT_ROOT_TTL = timedelta(days=3650)
#: How far ``not_before`` is set in the past (clock skew between hosts).
BACKDATE = timedelta(seconds=60)

_SPIFFE_RE = re.compile(SPIFFE_ID_PATTERN)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Public keys a leaf may certify.
LeafKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class RootCA:
    """A root certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def id(self) -> str:
        """Short stable name: the first 16 hex digits of the certificate's SHA-256."""
        return self.cert.fingerprint(hashes.SHA256()).hex()[:16]

    def cert_pem(self) -> str:
        """The certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM (written only to a 0600 file)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, *, source: str = "root") -> RootCA:
        """Import a root: an ECDSA CA certificate and its matching private key.

        Raises :class:`~controld.ca.errors.CAFileError` naming ``source`` when either doesn't
        parse, the key isn't ECDSA, the certificate isn't a CA or the key doesn't match it.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CAFileError(f"{source}: cannot load certificate or key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAFileError(f"{source}: the CA key must be ECDSA")
        if cert.public_key() != key.public_key():
            raise CAFileError(f"{source}: the key does not match the certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise CAFileError(f"{source}: the certificate is not a CA (basicConstraints)")
        return cls(cert, key)


def spiffe_id(trust_domain: str, namespace: str, service: str) -> str:
    """``spiffe://<trust_domain>/ns/<namespace>/svc/<service>``."""
    return f"spiffe://{trust_domain}/ns/{namespace}/svc/{service}"


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def generate_root(
    *, ttl: timedelta = DEFAULT_ROOT_TTL, now: datetime | None = None, name: str = "meshd root CA"
) -> RootCA:
    """A fresh self-signed ECDSA P-256 root."""
    now = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshd"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {now:%Y-%m-%dT%H:%M:%SZ}"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return RootCA(cert, key)


def load_csr(pem: str) -> tuple[x509.CertificateSigningRequest, LeafKey]:
    """Parse a PEM CSR and check its self-signature and key type (ECDSA P-256 or Ed25519).

    Raises :class:`~controld.ca.errors.CSRError`.
    """
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise CSRError(f"not a PEM certificate signing request: {exc}") from exc
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CSRError(f"unsupported CSR key: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise CSRError(f"CSR key must be ECDSA P-256 or Ed25519, got {key.curve.name}")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CSRError("CSR key must be ECDSA P-256 or Ed25519")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CSRError(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise CSRError("CSR signature is not valid")
    return csr, key


def sign_leaf(
    root: RootCA,
    public_key: LeafKey,
    identity: str,
    *,
    ttl: timedelta = DEFAULT_LEAF_TTL,
    now: datetime | None = None,
    instance_id: str | None = None,
) -> x509.Certificate:
    """An X.509-SVID for ``identity`` (a SPIFFE ID) certifying ``public_key``, signed by
    ``root``. The leaf never outlives the root. ``instance_id`` (the enrolled instance's
    identity id, :mod:`controld.ca.identities`) goes in the subject CN, so a renewal names
    the instance it continues."""
    if not _SPIFFE_RE.match(identity):
        raise ValueError(f"not a SPIFFE ID of this mesh: {identity!r}")
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
    return _sign(root, public_key, sans, ttl, now, common_name=instance_id)


def controld_spiffe_id(trust_domain: str) -> str:
    """controld's own identity: ``spiffe://<trust domain>/controld`` (never a workload's)."""
    return f"spiffe://{trust_domain}/controld"


def sign_server(
    root: RootCA,
    public_key: LeafKey,
    trust_domain: str,
    *,
    dns_names: tuple[str, ...] = (),
    ips: tuple[IPAddress, ...] = (),
    ttl: timedelta = DEFAULT_LEAF_TTL,
    now: datetime | None = None,
) -> x509.Certificate:
    """controld's TLS certificate: URI SAN :func:`controld_spiffe_id` plus ``dns_names`` and
    ``ips`` (for clients that check host names), signed by ``root``."""
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(controld_spiffe_id(trust_domain))
    ]
    sans += [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    return _sign(root, public_key, sans, ttl, now)


def _sign(
    root: RootCA,
    public_key: LeafKey,
    sans: list[x509.GeneralName],
    ttl: timedelta,
    now: datetime | None,
    *,
    common_name: str | None = None,
) -> x509.Certificate:
    now = _now(now)
    not_after = min(now + ttl, root.cert.not_valid_after_utc)
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshd")]
    if common_name is not None:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(root.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # SPIFFE: the SAN carries the identity. Not critical: the subject isn't empty
        # (RFC 5280 4.2.1.6, which path validation enforces).
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
            critical=False,
        )
        .sign(root.key, hashes.SHA256())
    )


def leaf_spiffe_id(cert: x509.Certificate) -> str:
    """The one SPIFFE URI SAN of a leaf; ``ValueError`` when there isn't exactly one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound as exc:
        raise ValueError("certificate has no subjectAltName") from exc
    uris = [u for u in san.value.get_values_for_type(x509.UniformResourceIdentifier)]
    spiffe = [u for u in uris if u.startswith("spiffe://")]
    if len(spiffe) != 1:
        raise ValueError(f"certificate must carry exactly one SPIFFE ID, has {len(spiffe)}")
    return spiffe[0]


def verify_leaf(
    leaf: x509.Certificate, roots: list[x509.Certificate], *, now: datetime | None = None
) -> str:
    """Check that ``leaf`` chains to one of ``roots`` and is valid at ``now`` (a client
    certificate: EKU clientAuth); its SPIFFE ID.

    Raises :class:`~controld.ca.errors.RenewalRefused` otherwise.
    """
    if not roots:
        raise RenewalRefused("no trust roots")
    verifier = PolicyBuilder().store(Store(roots)).time(_now(now)).build_client_verifier()
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise RenewalRefused(f"certificate does not verify against the bundle: {exc}") from exc
    try:
        identity = leaf_spiffe_id(leaf)
    except ValueError as exc:
        raise RenewalRefused(str(exc)) from exc
    if not _SPIFFE_RE.match(identity):
        raise RenewalRefused(f"{identity} is not a workload identity")
    return identity
