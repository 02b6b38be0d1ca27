"""Per-instance identities: one sealed record per enrollment, ``<prefix>identities/<id>``.

Each enrollment gets an identity of its own (a random 16-hex-digit id, put in the leaf's
subject CN so a renewal names it): the service, namespace and SPIFFE ID it was granted, the
instance the sidecar said it is (its proxy id, for display only), when and from where it
enrolled, and the leaves issued to it that haven't expired (serial, signing root,
``not_after``). A renewal adds its leaf; revoking the identity marks the record, and every
leaf in it is then refused by peers (:mod:`controld.ca.revocations`) and can't renew.

Updates are check-and-set writes retried a bounded number of times, so two controld
replicas (or a revocation racing a renewal) never lose each other's change.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field

from controld.ca.errors import CAError, IdentityNotFound, RenewalRefused
from controld.ca.records import CARecords, InvalidRecord
from meshcore.api.ca import IDENTITY_ID_PATTERN
from meshcore.model.policy import SERVICE_PATTERN

__all__ = [
    "IDENTITY_KIND",
    "MAX_LEAVES",
    "IdentityRecord",
    "IdentityRecords",
    "LeafRecord",
    "identity_id_of",
    "new_identity_id",
    "serial_hex",
]

#: The record kind of an identity (part of its seal).
IDENTITY_KIND = "identity"
#: Unexpired leaves one identity may hold; an honest sidecar has two or three.
MAX_LEAVES = 32
ID_PATTERN = IDENTITY_ID_PATTERN
_ID = re.compile(ID_PATTERN)
_SPIFFE_PATTERN = r"^spiffe://[a-z0-9.-]+/ns/[a-z0-9._-]+/svc/[a-z0-9._-]+$"
#: Attempts of one check-and-set update before giving up (each one re-reads the record).
_CAS_ATTEMPTS = 8


class LeafRecord(BaseModel):
    """A leaf issued to an identity."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    serial: str = Field(pattern=r"^[0-9a-f]{1,40}$")
    root: str = Field(pattern=r"^[0-9a-f]{16}$")
    not_after: float


class IdentityRecord(BaseModel):
    """The stored form of one enrolled instance."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str = Field(pattern=ID_PATTERN)
    service: str = Field(pattern=SERVICE_PATTERN)
    namespace: str = Field(pattern=SERVICE_PATTERN)
    spiffe_id: str = Field(pattern=_SPIFFE_PATTERN, max_length=512)
    #: What the sidecar said it is (its proxy id); ``None`` when it didn't say.
    instance: str | None = Field(default=None, max_length=256)
    #: The address it enrolled from.
    address: str | None = Field(default=None, max_length=64)
    enrolled: float
    renewed: float | None = None
    leaves: tuple[LeafRecord, ...] = Field(default=(), max_length=MAX_LEAVES)
    #: When it was revoked (``None``: not revoked).
    revoked: float | None = None

    @property
    def current(self) -> LeafRecord | None:
        """The newest leaf."""
        return self.leaves[-1] if self.leaves else None

    def unexpired(self, now: float) -> tuple[LeafRecord, ...]:
        """The leaves still valid at ``now``."""
        return tuple(leaf for leaf in self.leaves if leaf.not_after > now)

    def holds(self, serial: int) -> bool:
        """Whether the leaf ``serial`` was issued to this identity (and is recorded)."""
        wanted = serial_hex(serial)
        return any(leaf.serial == wanted for leaf in self.leaves)


def new_identity_id() -> str:
    """A fresh identity id (64 random bits, hex)."""
    return secrets.token_hex(8)


def serial_hex(serial: int) -> str:
    """A certificate serial as lowercase hex (how records, the API and bundles spell it)."""
    return format(serial, "x")


def identity_id_of(leaf: x509.Certificate) -> str | None:
    """The identity id in a leaf's subject CN (``None``: a leaf issued before identities)."""
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        return None
    value = names[0].value
    return value if isinstance(value, str) and _ID.match(value) else None


def _leaf(leaf: x509.Certificate, root_id: str) -> LeafRecord:
    return LeafRecord(
        serial=serial_hex(leaf.serial_number),
        root=root_id,
        not_after=leaf.not_valid_after_utc.timestamp(),
    )


class IdentityRecords:
    """Reads and writes the identity records under ``<prefix>identities/``."""

    def __init__(self, records: CARecords, prefix: str) -> None:
        self._records = records
        self.directory = f"{prefix}identities/"

    def key(self, identity_id: str) -> str:
        """Where identity ``identity_id`` is kept."""
        return self.directory + identity_id

    async def create(
        self,
        identity_id: str,
        *,
        service: str,
        namespace: str,
        spiffe_id: str,
        leaf: x509.Certificate,
        root_id: str,
        instance: str | None = None,
        address: str | None = None,
        now: float | None = None,
    ) -> IdentityRecord:
        """Record a new identity and its first leaf."""
        record = IdentityRecord(
            id=identity_id,
            service=service,
            namespace=namespace,
            spiffe_id=spiffe_id,
            instance=instance,
            address=address,
            enrolled=time.time() if now is None else now,
            leaves=(_leaf(leaf, root_id),),
        )
        if not await self._records.put(IDENTITY_KIND, self.key(identity_id), record, cas=0):
            raise CAError(f"identity {identity_id} exists already")  # 64 random bits
        return record

    async def get(self, identity_id: str) -> IdentityRecord | None:
        """The identity, ``None`` when unknown; :class:`InvalidRecord` when damaged."""
        if not _ID.match(identity_id):
            return None
        found = await self._records.get(IDENTITY_KIND, self.key(identity_id), IdentityRecord)
        return None if found is None else found[0]

    async def all(self) -> list[IdentityRecord]:
        """Every valid identity record (invalid ones are logged, counted and skipped)."""
        found = await self._records.list(IDENTITY_KIND, self.directory, IdentityRecord)
        return [record for record, entry in found if entry.key == self.key(record.id)]

    async def add_leaf(
        self, identity_id: str, leaf: x509.Certificate, root_id: str, *, now: float | None = None
    ) -> IdentityRecord:
        """Record a renewal's leaf (expired leaves are dropped); :class:`RenewalRefused`
        when the identity is unknown, damaged, revoked or holds too many leaves."""
        when = time.time() if now is None else now

        def update(record: IdentityRecord) -> IdentityRecord:
            if record.revoked is not None:
                raise RenewalRefused(f"identity {identity_id} ({record.spiffe_id}) is revoked")
            leaves = record.unexpired(when)
            if len(leaves) >= MAX_LEAVES:
                raise RenewalRefused(f"identity {identity_id} holds too many unexpired leaves")
            return record.model_copy(
                update={"leaves": (*leaves, _leaf(leaf, root_id)), "renewed": when}
            )

        try:
            return await self._update(identity_id, update)
        except IdentityNotFound as exc:
            raise RenewalRefused(f"identity {identity_id} is unknown") from exc
        except InvalidRecord as exc:
            raise RenewalRefused(f"identity {identity_id}: its record is unusable") from exc

    async def revoke(self, identity_id: str, *, now: float | None = None) -> IdentityRecord:
        """Mark the identity revoked (idempotent: the first time stays); its record.

        Raises :class:`~controld.ca.errors.IdentityNotFound` when it is unknown and
        :class:`InvalidRecord` when its record is damaged.
        """
        when = time.time() if now is None else now

        def update(record: IdentityRecord) -> IdentityRecord:
            if record.revoked is not None:
                return record
            return record.model_copy(update={"revoked": when})

        return await self._update(identity_id, update)

    async def _update(
        self, identity_id: str, change: Callable[[IdentityRecord], IdentityRecord]
    ) -> IdentityRecord:
        if not _ID.match(identity_id):
            raise IdentityNotFound(f"no identity {identity_id!r}")
        key = self.key(identity_id)
        for _ in range(_CAS_ATTEMPTS):
            found = await self._records.get(IDENTITY_KIND, key, IdentityRecord)
            if found is None:
                raise IdentityNotFound(f"no identity {identity_id!r}")
            record, entry = found
            updated = change(record)
            if updated is record:
                return record
            if await self._records.put(IDENTITY_KIND, key, updated, cas=entry.modify_index):
                return updated
        raise CAError(f"identity {identity_id}: too many concurrent updates")
