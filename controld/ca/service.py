"""Enrollment and renewal: what the identity endpoints of the API do.

:class:`IdentityService` ties the :class:`~controld.ca.rotation.CertificateAuthority`, the
join tokens and the revocations together; the API (``controld/api/identity.py``) only
translates HTTP to these calls and the errors back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controld.ca.authority import (
    DEFAULT_LEAF_TTL,
    LeafKey,
    load_csr,
    spiffe_id,
)
from controld.ca.errors import RenewalRefused, RotationError
from controld.ca.jointokens import JoinTokens
from controld.ca.kv import KV
from controld.ca.outstanding import Outstanding, OutstandingLeaves
from controld.ca.revocations import Revocations
from controld.ca.rotation import CertificateAuthority, RotationState
from meshcore.pki import spki_pin

__all__ = ["IdentityService", "Issued"]


@dataclass(frozen=True, slots=True)
class Issued:
    """A signed leaf and what goes with it."""

    certificate: x509.Certificate
    spiffe_id: str
    bundle: list[str]
    #: The bundle's index (as in ``GET /v1/bundle``), so a sidecar can tell which is newer.
    bundle_index: int = 0

    def as_json(self) -> dict[str, object]:
        """The enroll/renew answer (without ``sidecar_token``)."""
        return {
            "certificate": self.certificate.public_bytes(serialization.Encoding.PEM).decode(),
            "bundle": self.bundle,
            "bundle_index": self.bundle_index,
            "spiffe_id": self.spiffe_id,
            "not_after": rfc3339(self.certificate.not_valid_after_utc),
        }


def rfc3339(when: datetime) -> str:
    """``2026-11-22T06:00:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IdentityService:
    """Join tokens, enrollment, renewal, revocation and rotation on one CA.

    ``trust_domain`` is read at each signing (the current ``Mesh`` resource's). Rotation
    steps go through :meth:`rotate`, which refuses to retire a root whose leaves are still
    outstanding (see :mod:`controld.ca.outstanding`: tracked in memory since this start).
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
        #: Describes controld's TLS listener for :meth:`status` (set by the daemon).
        self.server_tls: Callable[[], dict[str, object]] | None = None
        self.outstanding = OutstandingLeaves(
            started=datetime.now(UTC), roots_at_start=ca.state.bundle
        )

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
        return self._issue(public_key, identity)

    async def renew(self, csr_pem: str, current: x509.Certificate) -> Issued:
        """A new leaf with the identity of ``current`` (the client certificate the caller
        presented over mutual TLS), for the CSR's key.

        Refused (``RenewalRefused``) when ``current`` doesn't verify against the bundle (or
        is expired), isn't a workload identity, or is revoked. Raises ``CSRError`` for a bad
        CSR.
        """
        _, public_key = load_csr(csr_pem)
        identity = self.ca.verify(current, now=datetime.now(UTC))
        if await self.revocations.is_revoked(identity):
            raise RenewalRefused(f"{identity} is revoked")
        issued = self._issue(public_key, identity)
        self.outstanding.renewed(current)
        return issued

    def _issue(self, public_key: LeafKey, identity: str) -> Issued:
        leaf = self.ca.sign(public_key, identity, ttl=self.leaf_ttl)
        self.outstanding.issued(self.ca.state.active, leaf, now=datetime.now(UTC))
        return Issued(leaf, identity, self.ca.bundle_pem(), self.ca.index)

    def pins(self) -> tuple[str, ...]:
        """The CA pins a new join token carries: every root in the bundle, the signer first."""
        ca = self.ca
        active = ca.signer.cert
        others = [cert for cert in ca.bundle() if cert != active]
        return tuple(spki_pin(cert) for cert in (active, *others))

    def outstanding_of(self, root_id: str, *, now: datetime | None = None) -> Outstanding:
        """The outstanding leaves of ``root_id``."""
        when = now if now is not None else datetime.now(UTC)
        return self.outstanding.outstanding(root_id, now=when, leaf_ttl=self.leaf_ttl)

    def rotate(self, step: str, *, force: bool = False) -> RotationState:
        """One rotation step (``stage``, ``activate``, ``retire``); the new state.

        ``retire`` is refused (:class:`RotationError`) while leaves of the old root are
        outstanding, unless ``force``. Every step wakes the bundle long-polls.
        """
        ca = self.ca
        if step == "stage":
            ca.stage_new_root()
        elif step == "activate":
            ca.activate()
        elif step == "retire":
            state = ca.state
            if state.phase == "active" and not force:
                old = state.bundle[0]
                out = self.outstanding_of(old)
                if not out.clear:
                    raise RotationError(
                        f"refusing to retire root {old}: {out.describe()}; wait for the "
                        "sidecars to renew (or for those leaves to expire), or force it"
                    )
            ca.retire_old()
        else:
            raise RotationError(f"unknown rotation step {step!r}")
        return ca.state

    def status(self) -> dict[str, object]:
        """For ``GET /v1/ca``: phase, signer, bundle, index and outstanding leaves per root."""
        state = self.ca.state
        now = datetime.now(UTC)
        roots = []
        for root_id in state.bundle:
            root = self.ca.root(root_id)
            assert root is not None
            roots.append(
                {
                    "id": root_id,
                    "active": root_id == state.active,
                    "subject": root.cert.subject.rfc4514_string(),
                    "not_after": rfc3339(root.cert.not_valid_after_utc),
                    "outstanding": self.outstanding_of(root_id, now=now).as_json(),
                }
            )
        return {
            "phase": state.phase,
            "active": state.active,
            "bundle": list(state.bundle),
            "index": self.ca.index,
            "trust_domain": self.trust_domain,
            "leaf_ttl_s": self.leaf_ttl.total_seconds(),
            "roots": roots,
            "tls": None if self.server_tls is None else self.server_tls(),
        }
