"""CA pins, and which root signed a certificate.

Pins are how a join token names the roots a sidecar may trust for controld's certificate.

A pin is the SHA-256 of a root certificate's SubjectPublicKeyInfo (DER), base64url without
padding (43 characters), as kubeadm's ``--discovery-token-ca-cert-hash`` pins a cluster CA.
A join token is ``join.<id>.<secret>`` followed by one ``.<pin>`` per root in controld's
bundle when the token was minted (the signing root first).
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

__all__ = ["JOIN_TOKEN_PATTERN", "parse_join_token_pins", "signed_by", "spki_pin"]

#: A join token: id, secret, then zero to two pins.
JOIN_TOKEN_PATTERN = re.compile(
    r"^join\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})((?:\.[A-Za-z0-9_-]{43}){0,2})$"
)


def spki_pin(cert: x509.Certificate) -> str:
    """The pin of ``cert``: base64url (no padding) SHA-256 of its SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(spki).digest()).rstrip(b"=").decode("ascii")


def parse_join_token_pins(token: str) -> tuple[str, ...]:
    """The CA pins a join token carries (empty for a token without pins, or not a token)."""
    match = JOIN_TOKEN_PATTERN.match(token.strip())
    if match is None or not match.group(3):
        return ()
    return tuple(match.group(3)[1:].split("."))


def signed_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    """Whether ``root`` signed ``cert`` directly (issuer name and signature both match)."""
    if cert.issuer != root.subject:
        return False
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
