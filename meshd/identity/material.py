"""One workload identity: key, leaf certificate, trust bundle, checked to belong together."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from cryptography import x509

from meshcore.pki import signed_by
from meshd.identity.csr import spiffe_ids
from meshd.identity.errors import InvalidIdentity
from meshd.identity.keys import PrivateKey, key_from_pem, key_to_pem, same_public_key

__all__ = ["Identity", "issued_by", "parse_identity", "split_pem_certificates", "with_bundle"]

_PEM_END = b"-----END CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class Identity:
    """A leaf certificate with its key and the roots to verify peers with.

    ``generation`` grows by one with each identity the service puts in force (0: not yet).
    """

    cert_pem: bytes
    #: Kept out of ``repr`` so that logging an identity never prints the key.
    key_pem: bytes = field(repr=False)
    bundle_pems: tuple[bytes, ...]
    spiffe_id: str
    not_before: datetime
    not_after: datetime
    generation: int = 0
    #: What a handshake presents: ``cert_pem``, followed by the bundle root that issued it
    #: when ``cert_pem`` is a leaf alone (empty: ``cert_pem`` as it is). Given a leaf alone,
    #: OpenSSL builds the chain to send from the verify store on every handshake, verifying
    #: the leaf's signature each time (a third of a P-256 handshake's verification work;
    #: ``SSL_MODE_NO_AUTO_CHAIN`` is out of Python's reach); a chain given is sent as is.
    #: The peer receives the same certificates either way.
    chain_pem: bytes = field(default=b"", repr=False)

    @property
    def presented_pem(self) -> bytes:
        """The certificates to present in a handshake (see :attr:`chain_pem`)."""
        return self.chain_pem or self.cert_pem

    def with_generation(self, generation: int) -> Identity:
        """This identity, numbered ``generation``."""
        return replace(self, generation=generation)

    def lifetime_s(self) -> float:
        """Seconds from ``not_before`` to ``not_after``."""
        return (self.not_after - self.not_before).total_seconds()

    def describe(self) -> dict[str, object]:
        """What the admin endpoint shows (no key material)."""
        return {
            "spiffe_id": self.spiffe_id,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "roots": len(self.bundle_pems),
            "generation": self.generation,
        }


def split_pem_certificates(data: bytes) -> tuple[bytes, ...]:
    """Each ``CERTIFICATE`` block of a concatenated PEM file, with its trailing newline."""
    blocks = []
    for part in data.split(_PEM_END)[:-1]:
        start = part.find(b"-----BEGIN")
        if start >= 0:
            blocks.append(part[start:] + _PEM_END + b"\n")
    return tuple(blocks)


def _load_cert(pem: bytes, source: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidIdentity(f"{source}: not a PEM certificate: {exc}") from exc


def _issuer(leaf: x509.Certificate, roots: list[x509.Certificate]) -> int | None:
    """The index of the root in ``roots`` that signed ``leaf``, or None."""
    return next((i for i, root in enumerate(roots) if signed_by(leaf, root)), None)


def parse_identity(
    key: PrivateKey | bytes,
    cert_pem: bytes,
    bundle_pems: tuple[bytes, ...],
    *,
    source: str = "identity",
) -> Identity:
    """Check that the leaf is ``key``'s, carries one SPIFFE ID and chains to a bundle root.

    Raises :class:`InvalidIdentity` naming ``source`` otherwise.
    """
    private = key_from_pem(key, f"{source}: key") if isinstance(key, bytes) else key
    leaf = _load_cert(cert_pem, f"{source}: certificate")
    if not same_public_key(private, leaf.public_key()):
        raise InvalidIdentity(f"{source}: the certificate is not for this key")
    ids = spiffe_ids(leaf)
    if len(ids) != 1:
        raise InvalidIdentity(f"{source}: expected one SPIFFE ID in the certificate, got {ids}")
    if not bundle_pems:
        raise InvalidIdentity(f"{source}: the trust bundle is empty")
    roots = [_load_cert(pem, f"{source}: bundle") for pem in bundle_pems]
    issuer = _issuer(leaf, roots)
    if issuer is None:
        raise InvalidIdentity(f"{source}: the certificate is not issued by a bundle root")
    key_pem = key if isinstance(key, bytes) else key_to_pem(private)
    chain_pem = b""
    if len(split_pem_certificates(cert_pem)) == 1:
        chain_pem = _with_newline(cert_pem) + _with_newline(bundle_pems[issuer])
    return Identity(
        cert_pem=cert_pem,
        key_pem=key_pem,
        bundle_pems=bundle_pems,
        spiffe_id=ids[0],
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        chain_pem=chain_pem,
    )


def _with_newline(pem: bytes) -> bytes:
    return pem if pem.endswith(b"\n") else pem + b"\n"


def issued_by(cert_pem: bytes, root_pem: bytes) -> bool:
    """Whether the leaf ``cert_pem`` is signed by the root ``root_pem`` (False when either
    doesn't parse)."""
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
        root = x509.load_pem_x509_certificate(root_pem)
    except ValueError:
        return False
    return _issuer(leaf, [root]) is not None


def with_bundle(identity: Identity, bundle_pems: tuple[bytes, ...], *, source: str) -> Identity:
    """``identity`` (same leaf and key) trusting ``bundle_pems`` instead.

    Raises :class:`InvalidIdentity` when the leaf isn't issued by one of the new roots.
    """
    checked = parse_identity(identity.key_pem, identity.cert_pem, bundle_pems, source=source)
    return replace(checked, generation=identity.generation)
