"""Enrollment and renewal: what the identity endpoints of the API do.

:class:`IdentityService` ties the :class:`~controld.ca.rotation.CertificateAuthority`, the
join tokens and the revocations together; the API (``controld/api/identity.py``) only
translates HTTP to these calls and the errors back.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controld.ca.authority import (
    DEFAULT_LEAF_TTL,
    load_csr,
    spiffe_id,
    verify_possession,
)
from controld.ca.errors import RenewalRefused
from controld.ca.jointokens import JoinTokens
from controld.ca.kv import KV
from controld.ca.revocations import Revocations
from controld.ca.rotation import CertificateAuthority

__all__ = ["MAX_CLOCK_SKEW_S", "IdentityService", "Issued"]

#: Largest difference between a renewal's ``time`` and controld's clock.
MAX_CLOCK_SKEW_S = 300.0


@dataclass(frozen=True, slots=True)
class Issued:
    """A signed leaf and what goes with it."""

    certificate: x509.Certificate
    spiffe_id: str
    bundle: list[str]

    def as_json(self) -> dict[str, object]:
        """The enroll/renew answer (without ``sidecar_token``)."""
        return {
            "certificate": self.certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "bundle": self.bundle,
            "spiffe_id": self.spiffe_id,
            "not_after": rfc3339(self.certificate.not_valid_after_utc),
        }


def rfc3339(when: datetime) -> str:
    """``2026-11-22T06:00:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IdentityService:
    """Join tokens, enrollment, renewal, revocation and rotation on one CA.

    ``trust_domain`` is read at each signing (the current ``Mesh`` resource's).
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        kv: KV,
        prefix: str,
        *,
        trust_domain: Callable[[], str],
        leaf_ttl: timedelta = DEFAULT_LEAF_TTL,
    ) -> None:
        self.ca = ca
        self.join_tokens = JoinTokens(kv, prefix)
        self.revocations = Revocations(kv, prefix)
        self._trust_domain = trust_domain
        self.leaf_ttl = leaf_ttl

    @property
    def trust_domain(self) -> str:
        """The trust domain new identities get."""
        return self._trust_domain()

    async def enroll(self, token: str, csr_pem: str) -> Issued:
        """A first leaf for the identity the join token names.

        The CSR is checked before the token is consumed, so a broken CSR doesn't burn it.
        Raises ``CSRError`` and ``JoinTokenInvalid``.
        """
        _, public_key = load_csr(csr_pem)
        grant = await self.join_tokens.consume(token)
        identity = spiffe_id(self.trust_domain, grant.namespace, grant.service)
        leaf = self.ca.sign(public_key, identity, ttl=self.leaf_ttl)
        return Issued(leaf, identity, self.ca.bundle_pem())

    async def renew(self, csr_pem: str, cert_pem: str, signature_b64: str, at: float) -> Issued:
        """A new leaf with the current leaf's identity, for the CSR's key.

        Refused (``RenewalRefused``) when ``at`` is more than :data:`MAX_CLOCK_SKEW_S` away,
        the current leaf doesn't verify against the bundle (or is expired), the signature of
        the CSR's DER by the current leaf's key doesn't verify, or the identity is revoked.
        Raises ``CSRError`` for a bad CSR.
        """
        csr, public_key = load_csr(csr_pem)
        now = time.time()
        if abs(now - at) > MAX_CLOCK_SKEW_S:
            raise RenewalRefused("renewal time is too far from controld's clock")
        try:
            current = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise RenewalRefused("current certificate is not PEM") from exc
        identity = self.ca.verify(current, now=datetime.fromtimestamp(now, UTC))
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RenewalRefused("signature is not base64") from exc
        verify_possession(current, csr.public_bytes(serialization.Encoding.DER), signature)
        if await self.revocations.is_revoked(identity):
            raise RenewalRefused(f"{identity} is revoked")
        leaf = self.ca.sign(public_key, identity, ttl=self.leaf_ttl)
        return Issued(leaf, identity, self.ca.bundle_pem())
