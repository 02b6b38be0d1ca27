"""Enrollment and renewal: what the identity endpoints of the API do.

:class:`IdentityService` ties the :class:`~controld.ca.rotation.CertificateAuthority`, the
join tokens, the per-instance identity records and the revocations together; the API
(``controld/api/identity.py``) only translates HTTP to these calls and the errors back.

Every enrollment makes an identity of its own (:mod:`controld.ca.identities`); its id is in
each leaf's subject, so a renewal continues that identity and is refused once it is revoked.
Revocations (:mod:`controld.ca.revocations`) move the bundle's index, so the sidecars' bundle
long-polls return at once with the revoked serials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from controld.ca.authority import (
    BACKDATE,
    DEFAULT_LEAF_TTL,
    LeafKey,
    load_csr,
    spiffe_id,
)
from controld.ca.errors import IdentityNotFound, RenewalRefused, RotationError
from controld.ca.identities import IdentityRecord, IdentityRecords, identity_id_of, new_identity_id
from controld.ca.jointokens import JoinTokens
from controld.ca.kv import KV
from controld.ca.outstanding import Outstanding, OutstandingLeaves
from controld.ca.records import CARecords, InvalidRecord
from controld.ca.revocations import RevokedLeaf, RevokedSerials, ServiceRevocations
from controld.ca.rotation import CertificateAuthority, RotationState
from controld.events.ring import EventSink, NullSink
from controld.sealed import RecordKey
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
    #: The enrolled instance's identity id (:mod:`controld.ca.identities`).
    identity_id: str = ""

    def as_json(self) -> dict[str, object]:
        """The enroll/renew answer (without ``sidecar_token``)."""
        return {
            "identity_id": self.identity_id,
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
        record_key: RecordKey,
        trust_domain: Callable[[], str],
        leaf_ttl: timedelta = DEFAULT_LEAF_TTL,
        metrics: CollectorRegistry | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.ca = ca
        #: Where certificates issued and renewed and rotation steps are recorded.
        self.events: EventSink = events if events is not None else NullSink()
        #: The sealed records in the KV (counts the invalid ones it skipped).
        self.records = CARecords(kv, record_key, metrics=metrics)
        self.join_tokens = JoinTokens(self.records, prefix)
        self.identities = IdentityRecords(self.records, prefix)
        self.revocations = ServiceRevocations(self.records, prefix)
        #: The revoked, unexpired leaves the bundle carries.
        self.revoked = RevokedSerials(ca.store)
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

    async def enroll(
        self,
        token: str,
        csr_pem: str,
        *,
        instance: str | None = None,
        address: str | None = None,
    ) -> Issued:
        """A first leaf for a new identity of the service the join token names.

        ``instance`` (the sidecar's proxy id) and ``address`` are recorded for display. The
        CSR is checked before the token is consumed, so a broken CSR doesn't burn it.
        Raises ``CSRError`` and ``JoinTokenInvalid``.
        """
        _, public_key = load_csr(csr_pem)
        grant = await self.join_tokens.consume(token)
        identity = spiffe_id(self.trust_domain, grant.namespace, grant.service)
        instance_id = new_identity_id()
        leaf = self._sign(public_key, identity, instance_id)
        await self.identities.create(
            instance_id,
            service=grant.service,
            namespace=grant.namespace,
            spiffe_id=identity,
            leaf=leaf,
            root_id=self.ca.state.active,
            instance=instance,
            address=address,
        )
        self._issued("cert.issued", identity, instance_id, leaf, instance)
        return Issued(leaf, identity, self.ca.bundle_pem(), self.ca.index, instance_id)

    async def renew(self, csr_pem: str, current: x509.Certificate) -> Issued:
        """A new leaf for the identity of ``current`` (the client certificate the caller
        presented over mutual TLS), for the CSR's key.

        Refused (``RenewalRefused``) when ``current`` doesn't verify against the bundle (or
        is expired), isn't a workload identity, is revoked (its instance or its service), or
        isn't a leaf recorded for its identity. Raises ``CSRError`` for a bad CSR.
        """
        _, public_key = load_csr(csr_pem)
        identity = self.ca.verify(current, now=datetime.now(UTC))
        if current.serial_number in self.revoked:
            raise RenewalRefused(f"{identity}: this certificate is revoked")
        revoked_at = await self.revocations.revoked_at(identity)
        instance_id = identity_id_of(current)
        if instance_id is None:
            return await self._adopt(public_key, identity, current, revoked_at)
        try:
            record = await self.identities.get(instance_id)
        except InvalidRecord as exc:
            raise RenewalRefused(f"identity {instance_id}: its record is unusable") from exc
        if record is None or record.spiffe_id != identity:
            raise RenewalRefused(f"identity {instance_id} of {identity} is unknown")
        if record.revoked is not None or (revoked_at is not None and record.enrolled <= revoked_at):
            raise RenewalRefused(f"{identity} (identity {instance_id}) is revoked")
        if not record.holds(current.serial_number):
            raise RenewalRefused(f"the certificate is not one issued to identity {instance_id}")
        leaf = self._sign(public_key, identity, instance_id)
        await self.identities.add_leaf(instance_id, leaf, self.ca.state.active)
        self.outstanding.renewed(current)
        self._issued("cert.renewed", identity, instance_id, leaf, record.instance)
        return Issued(leaf, identity, self.ca.bundle_pem(), self.ca.index, instance_id)

    async def _adopt(
        self,
        public_key: LeafKey,
        identity: str,
        current: x509.Certificate,
        revoked_at: float | None,
    ) -> Issued:
        """Renew a leaf from before identity records: it becomes a new identity."""
        issued_at = (current.not_valid_before_utc + BACKDATE).timestamp()
        if revoked_at is not None and revoked_at >= issued_at:
            raise RenewalRefused(f"{identity} is revoked")
        namespace, service = identity.split("/ns/", 1)[1].split("/svc/", 1)
        instance_id = new_identity_id()
        leaf = self._sign(public_key, identity, instance_id)
        await self.identities.create(
            instance_id,
            service=service,
            namespace=namespace,
            spiffe_id=identity,
            leaf=leaf,
            root_id=self.ca.state.active,
        )
        self.outstanding.renewed(current)
        self._issued("cert.renewed", identity, instance_id, leaf, None)
        return Issued(leaf, identity, self.ca.bundle_pem(), self.ca.index, instance_id)

    def _issued(
        self, kind: str, identity: str, instance_id: str, leaf: x509.Certificate, proxy: str | None
    ) -> None:
        until = rfc3339(leaf.not_valid_after_utc)
        by = f", proxy {proxy}" if proxy else ""
        self.events.record(kind, identity, f"identity {instance_id}{by}, valid until {until}")

    def _sign(self, public_key: LeafKey, identity: str, instance_id: str) -> x509.Certificate:
        leaf = self.ca.sign(public_key, identity, ttl=self.leaf_ttl, instance_id=instance_id)
        self.outstanding.issued(self.ca.state.active, leaf, now=datetime.now(UTC))
        return leaf

    # -- revocation ----------------------------------------------------------------------

    async def revoke_identity(self, identity_id: str) -> IdentityRecord:
        """Revoke one instance: its leaves are published as revoked and it can't renew.

        Raises :class:`IdentityNotFound` and :class:`InvalidRecord` (a damaged record).
        """
        record = await self.identities.revoke(identity_id)
        if self.revoked.add(record):
            self.ca.bundle_changed()
        return record

    async def revoke_serial(self, serial: int) -> IdentityRecord:
        """Revoke the instance the leaf ``serial`` was issued to (:class:`IdentityNotFound`
        when no identity record holds it)."""
        for record in await self.identities.all():
            if record.holds(serial):
                return await self.revoke_identity(record.id)
        raise IdentityNotFound(f"no identity holds a certificate of serial {serial:x}")

    async def revoke_service(self, identity: str) -> list[IdentityRecord]:
        """Revoke every instance of the SPIFFE ID ``identity``, and the renewal of any of its
        leaves issued until now; the instances revoked."""
        await self.revocations.revoke(identity)
        revoked = []
        for record in await self.identities.all():
            if record.spiffe_id == identity:
                revoked.append(await self.revoke_identity(record.id))
        return revoked

    async def refresh_revocations(self) -> None:
        """Add the revoked leaves of the identity records (at start, periodically)."""
        if self.revoked.merge(await self.identities.all()):
            self.ca.bundle_changed()

    def revoked_leaves(self) -> list[RevokedLeaf]:
        """The revoked leaves not yet expired."""
        return self.revoked.current()

    def revoked_json(self) -> list[dict[str, str]]:
        """The revoked leaves not yet expired, as the bundle carries them."""
        return self.revoked.as_json()

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
        state = ca.state
        self.events.record("ca.rotation", step, f"phase {state.phase}, signer {state.active}")
        return state

    def status(self) -> dict[str, object]:
        """For ``GET /v1/ca``: phase, signer, bundle, index, outstanding leaves per root, the
        revoked leaves not yet expired and the invalid CA records skipped (by kind)."""
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
            "revoked_leaves": len(self.revoked_leaves()),
            "invalid_records": dict(self.records.invalid),
        }
