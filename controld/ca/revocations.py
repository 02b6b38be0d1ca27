"""Revocation: per instance (an identity record marked revoked) and per service.

* Revoking an instance marks its identity record (:mod:`controld.ca.identities`); every
  unexpired leaf in it is then *revoked*: its serial is published with the trust bundle, so
  sidecars refuse it within a bundle long-poll, and it can't renew.
* Revoking a service (a SPIFFE ID) revokes every instance of it recorded so far, and keeps a
  sealed record ``<prefix>revoked/<base64url(SPIFFE ID)>`` with the time, which also refuses the
  renewal of any leaf of that SPIFFE ID issued before it (leaves from before identity records
  existed included). Instances enrolled afterwards, with a new join token, are not revoked.

:class:`RevokedSerials` is the list the bundle endpoint serves: the serials of the revoked,
unexpired leaves, read from the identity records at start and periodically, and updated at
once by a revocation through this controld. It only grows (until the leaves expire) and is
kept in the CA directory too (``revoked.json``): a registry writer who deletes a record, or
puts back an older sealed copy of it, doesn't take a revocation back, restarts included.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from pydantic import BaseModel, ConfigDict, Field

from controld.ca.errors import CAFileError
from controld.ca.identities import IdentityRecord
from controld.ca.records import CARecords, InvalidRecord
from controld.ca.storage import CAStore
from meshcore.api.ca import SPIFFE_ID_PATTERN as _SPIFFE_PATTERN

log = structlog.get_logger("controld.ca")

__all__ = [
    "SERVICE_REVOCATION_KIND",
    "RevokedLeaf",
    "RevokedSerials",
    "ServiceRevocation",
    "ServiceRevocations",
    "revocation_key",
]

#: The record kind of a service revocation (part of its seal).
SERVICE_REVOCATION_KIND = "service-revocation"


def revocation_key(prefix: str, identity: str) -> str:
    """``<prefix>revoked/<base64url(identity), unpadded>``."""
    encoded = base64.urlsafe_b64encode(identity.encode("utf-8")).rstrip(b"=").decode("ascii")
    return f"{prefix}revoked/{encoded}"


class ServiceRevocation(BaseModel):
    """The stored form of a service revocation."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    spiffe_id: str = Field(pattern=_SPIFFE_PATTERN, max_length=512)
    time: float


class ServiceRevocations:
    """Records and looks up revoked SPIFFE IDs (sealed)."""

    def __init__(self, records: CARecords, prefix: str) -> None:
        self._records = records
        self._prefix = prefix

    async def revoke(self, identity: str, *, now: float | None = None) -> float:
        """Revoke ``identity`` from now on (a second call keeps the first time); the time."""
        key = revocation_key(self._prefix, identity)
        try:
            found = await self._records.get(SERVICE_REVOCATION_KIND, key, ServiceRevocation)
        except InvalidRecord:
            found = None  # a damaged record is replaced by a sealed one
        if found is not None:
            return found[0].time
        when = time.time() if now is None else now
        record = ServiceRevocation(spiffe_id=identity, time=when)
        await self._records.put(SERVICE_REVOCATION_KIND, key, record)
        return when

    async def revoked_at(self, identity: str) -> float | None:
        """When ``identity`` was revoked (``None``: never).

        A damaged record under its key counts as a revocation now (logged and counted):
        refusing a renewal is the safe side, and only the KV's writers can cause it.
        """
        key = revocation_key(self._prefix, identity)
        try:
            found = await self._records.get(SERVICE_REVOCATION_KIND, key, ServiceRevocation)
        except InvalidRecord:
            return time.time()
        return None if found is None else found[0].time

    async def is_revoked(self, identity: str) -> bool:
        """True when ``identity`` has been revoked."""
        return await self.revoked_at(identity) is not None


@dataclass(frozen=True, slots=True)
class RevokedLeaf:
    """A revoked leaf that hasn't expired."""

    serial: int
    not_after: float
    identity_id: str

    def as_json(self) -> dict[str, str]:
        """For the bundle: ``{"serial": "<hex>", "not_after": "<RFC 3339>", "identity"}``."""
        when = datetime.fromtimestamp(self.not_after, UTC)
        return {
            "serial": format(self.serial, "x"),
            "not_after": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "identity": self.identity_id,
        }


class RevokedSerials:
    """The revoked, unexpired leaves (what the bundle carries), kept in ``store`` if given."""

    def __init__(self, store: CAStore | None = None, *, now: float | None = None) -> None:
        self._store = store
        self._leaves: dict[int, RevokedLeaf] = {}
        # The bundle's list, kept until a leaf is added or the first one expires: every woken
        # bundle long-poll serves it, so it isn't sorted and encoded again per sidecar.
        self._cached: tuple[float, list[dict[str, str]]] | None = None
        if store is not None:
            self._load(store, time.time() if now is None else now)

    def _load(self, store: CAStore, now: float) -> None:
        try:
            doc = store.read_revoked()
        except CAFileError as exc:
            # The identity records still say what is revoked; keep serving.
            log.error(
                "revoked leaves file unreadable; using the registry's records", error=str(exc)
            )
            return
        items = doc.get("revoked") if isinstance(doc, dict) else None
        for item in items if isinstance(items, list) else ():
            try:
                leaf = RevokedLeaf(
                    int(item["serial"], 16), float(item["not_after"]), str(item["identity"])
                )
            except (KeyError, TypeError, ValueError):
                continue
            if leaf.not_after > now:
                self._leaves[leaf.serial] = leaf

    def _save(self) -> None:
        if self._store is None:
            return
        items = [
            {"serial": format(s, "x"), "not_after": leaf.not_after, "identity": leaf.identity_id}
            for s, leaf in sorted(self._leaves.items())
        ]
        try:
            self._store.write_revoked({"revoked": items})
        except CAFileError as exc:
            log.error("cannot save the revoked leaves", error=str(exc))

    def merge(self, records: list[IdentityRecord], *, now: float | None = None) -> bool:
        """Add the leaves of every revoked record among ``records``; whether any was new.

        Nothing is removed but expired leaves (see the module doc)."""
        changed = False
        for record in records:
            if record.revoked is not None:
                changed = self.add(record, now=now) or changed
        return changed

    def add(self, record: IdentityRecord, *, now: float | None = None) -> bool:
        """Add the leaves of a revoked ``record``; whether any was new."""
        when = time.time() if now is None else now
        new = {s: leaf for s, leaf in _revoked(record, when).items() if s not in self._leaves}
        if new:
            self._leaves = {
                s: leaf for s, leaf in {**self._leaves, **new}.items() if leaf.not_after > when
            }
            self._cached = None
            self._save()
        return bool(new)

    def current(self, *, now: float | None = None) -> list[RevokedLeaf]:
        """The revoked leaves not yet expired at ``now`` (expired ones are pruned)."""
        when = time.time() if now is None else now
        if any(leaf.not_after <= when for leaf in self._leaves.values()):
            self._leaves = {s: leaf for s, leaf in self._leaves.items() if leaf.not_after > when}
            self._cached = None
        return sorted(self._leaves.values(), key=lambda leaf: leaf.serial)

    def as_json(self, *, now: float | None = None) -> list[dict[str, str]]:
        """:meth:`current` as the bundle carries it (cached between changes)."""
        when = time.time() if now is None else now
        cached = self._cached
        if cached is not None and when < cached[0]:
            return cached[1]
        leaves = self.current(now=when)
        encoded = [leaf.as_json() for leaf in leaves]
        self._cached = (min((leaf.not_after for leaf in leaves), default=float("inf")), encoded)
        return encoded

    def __contains__(self, serial: object) -> bool:
        return serial in self._leaves


def _revoked(record: IdentityRecord, now: float) -> dict[int, RevokedLeaf]:
    return {
        int(leaf.serial, 16): RevokedLeaf(int(leaf.serial, 16), leaf.not_after, record.id)
        for leaf in record.unexpired(now)
    }
