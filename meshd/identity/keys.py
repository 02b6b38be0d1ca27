"""The workload's private key: ECDSA P-256, generated on this host, never sent anywhere.

Only the public half leaves the process (inside a CSR). The key is written 0600 in a 0700
directory by :mod:`meshd.identity.files`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshd.identity.errors import InvalidIdentity

__all__ = [
    "PrivateKey",
    "ensure_private_dir",
    "generate_key",
    "key_from_pem",
    "key_to_pem",
    "same_public_key",
    "sign",
    "verify",
]

PrivateKey = ec.EllipticCurvePrivateKey


def generate_key() -> PrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (protected by file modes, like any TLS key file)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(data: bytes, source: str = "key") -> PrivateKey:
    """Parse a PEM private key; :class:`InvalidIdentity` unless it is ECDSA P-256."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidIdentity(f"{source}: not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise InvalidIdentity(f"{source}: expected an ECDSA P-256 key")
    return key


def sign(key: PrivateKey, data: bytes) -> bytes:
    """ECDSA-SHA256 signature (DER) of ``data``: the proof of possession renewals carry."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s ECDSA-SHA256 signature of ``data``."""
    try:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def same_public_key(key: PrivateKey, public_key: object) -> bool:
    """Whether ``public_key`` (from a certificate) is ``key``'s public half."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    return key.public_key().public_numbers() == public_key.public_numbers()


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it 0700 (it holds a private key)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
