"""Sidecar API tokens ``sidecar.<id>.<secret>``: one sealed registry KV record each.

The record ``<prefix>sidecar-tokens/<id>`` (sealed with :class:`~controld.sealed.RecordKey`,
so a registry writer who isn't controld can't forge or move one) holds the service and
namespace the token acts for, the enrolled identity it is bound to (SPIFFE ID and the leaf's
serial; none for tokens minted with ``meshctl token sidecar``), the SHA-256 of the secret
(never the secret), and when it was created and expires. A token is accepted only while its
record opens, is unexpired and exists (revoking deletes the record), and, if bound, while its
leaf isn't revoked.

Verified records are cached in memory for :data:`REFRESH_S` seconds so the snapshot long-poll
doesn't read the registry on every request; a revocation on this controld drops the entry at
once, one on another replica is seen within :data:`REFRESH_S`. A record that doesn't open
(too large, not JSON, forged, wrong fields) is logged, counted and treated as missing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry, Counter

from controld.ca.kv import KV
from controld.sealed import InvalidRecord, RecordKey
from meshcore.api.tokens import DEFAULT_SIDECAR_TTL_S, MAX_SIDECAR_TTL_S
from meshcore.model.policy import SERVICE_PATTERN

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "REFRESH_S",
    "WORKLOAD_ID_RE",
    "SidecarTokenRecord",
    "SidecarTokens",
    "TokenRefused",
]

log = structlog.get_logger(__name__)

#: Lifetime of a ``meshctl token sidecar`` token unless ``--ttl`` says otherwise (30 days).
DEFAULT_TTL_S: Final = DEFAULT_SIDECAR_TTL_S
#: Longest lifetime a token may be given (1 year).
MAX_TTL_S: Final = MAX_SIDECAR_TTL_S
#: How long a verified record is trusted from memory before it is read again: longer than a
#: long-poll (30 s), so a sidecar's polls read its record from the registry once a minute.
REFRESH_S: Final = 60.0
#: Largest record read back (a record is about 400 bytes).
MAX_RECORD_BYTES: Final = 4096
#: Most records ``list`` reads (and cached records kept).
MAX_RECORDS: Final = 100_000
_KIND: Final = "sidecar-token"
_PREFIX: Final = "sidecar."
_ID_RE: Final = re.compile(r"^[0-9a-f]{32}$")
_SECRET_RE: Final = re.compile(r"^[A-Za-z0-9_-]{43}$")
_OLD_MAC_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_SERVICE_RE: Final = re.compile(SERVICE_PATTERN)
#: A workload's SPIFFE ID ``spiffe://<trust domain>/ns/<namespace>/svc/<service>``; groups:
#: namespace, service.
WORKLOAD_ID_RE: Final = re.compile(r"^spiffe://[a-z0-9.-]+/ns/([a-z0-9._-]+)/svc/([a-z0-9._-]+)$")
_SERIAL_RE: Final = re.compile(r"^[0-9a-f]{1,40}$")
#: Why an old ``sidecar.<service>.<hmac>`` token is refused.
OLD_FORMAT: Final = (
    "old-format sidecar token (sidecar.<service>.<hmac>) is no longer accepted: "
    "mint a new one with `meshctl token sidecar --service <service>`"
)
_INVALID: Final = "invalid token"


class TokenRefused(ValueError):
    """A sidecar token that is malformed, unknown, revoked, expired or has a wrong secret."""


@dataclass(frozen=True, slots=True)
class SidecarTokenRecord:
    """What one sidecar token grants (the record's body, without the secret's hash)."""

    id: str
    service: str
    namespace: str
    #: The SPIFFE ID of the enrolled identity it is bound to; None: not bound.
    identity: str | None
    #: The serial (hex) of the leaf it was issued with; None: not bound.
    serial: str | None
    created: float
    expires: float

    def as_json(self) -> dict[str, Any]:
        """The listing form (never a secret)."""
        return {
            "id": self.id,
            "service": self.service,
            "namespace": self.namespace,
            "identity": self.identity,
            "serial": self.serial,
            "created": self.created,
            "expires": self.expires,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _parse(token_id: str, body: dict[str, Any]) -> tuple[SidecarTokenRecord, str]:
    """The record and the secret's hash of an opened body; ``InvalidRecord`` if malformed."""
    try:
        service, namespace = body["service"], body["namespace"]
        identity, serial = body.get("identity"), body.get("serial")
        digest, created, expires = body["secret_sha256"], body["created"], body["expires"]
    except KeyError as exc:
        raise InvalidRecord(f"sidecar token {token_id}: missing {exc}") from exc
    ok = (
        isinstance(service, str)
        and _SERVICE_RE.match(service) is not None
        and isinstance(namespace, str)
        and _SERVICE_RE.match(namespace) is not None
        and (identity is None or (isinstance(identity, str) and WORKLOAD_ID_RE.match(identity)))
        and (serial is None or (isinstance(serial, str) and _SERIAL_RE.match(serial)))
        and isinstance(digest, str)
        and len(digest) == 64
        and all(isinstance(t, int | float) and not isinstance(t, bool) for t in (created, expires))
    )
    if not ok:
        raise InvalidRecord(f"sidecar token {token_id}: fields of the wrong type or form")
    record = SidecarTokenRecord(
        token_id, service, namespace, identity, serial, float(created), float(expires)
    )
    return record, digest


class SidecarTokens:
    """Mints, verifies, lists and revokes sidecar tokens under ``<prefix>sidecar-tokens/``."""

    def __init__(
        self,
        kv: KV,
        prefix: str,
        key: RecordKey,
        *,
        metrics: CollectorRegistry | None = None,
        leaf_revoked: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self._dir = f"{prefix}sidecar-tokens/"
        self._key = key
        #: Whether the leaf with this serial is revoked (the CA's in-memory list): a token
        #: bound to a revoked leaf is refused at once.
        self._leaf_revoked = leaf_revoked
        self._clock = clock
        self._monotonic = monotonic
        # id -> (record, secret hash, when read); insertion order is age order.
        self._cache: dict[str, tuple[SidecarTokenRecord, str, float]] = {}
        #: Records skipped because they didn't open (also a Prometheus counter).
        self.invalid_records = 0
        self._invalid = (
            Counter(
                "controld_sidecar_token_invalid_records",
                "sidecar token records that did not open (forged, malformed) and were skipped",
                registry=metrics,
            )
            if metrics is not None
            else None
        )

    def key_of(self, token_id: str) -> str:
        """The KV key of the record of ``token_id``."""
        return self._dir + token_id

    async def mint(
        self,
        service: str,
        namespace: str = "default",
        *,
        ttl_s: float = DEFAULT_TTL_S,
        identity: str | None = None,
        serial: str | None = None,
    ) -> tuple[str, SidecarTokenRecord]:
        """A new token for ``namespace``/``service`` and its record.

        ``identity``/``serial`` bind it to an enrolled leaf. ``ValueError`` for a bad name,
        identity or TTL.
        """
        if not _SERVICE_RE.match(service) or not _SERVICE_RE.match(namespace):
            raise ValueError(f"invalid service or namespace {namespace!r}/{service!r}")
        if identity is not None and not WORKLOAD_ID_RE.match(identity):
            raise ValueError(f"invalid identity {identity!r}")
        if serial is not None and not _SERIAL_RE.match(serial):
            raise ValueError(f"invalid serial {serial!r}")
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ValueError(f"the TTL must be between 1 s and {MAX_TTL_S} s")
        now = self._clock()
        token_id = secrets.token_hex(16)
        secret = secrets.token_urlsafe(32)
        body = {
            "service": service,
            "namespace": namespace,
            "identity": identity,
            "serial": serial,
            "secret_sha256": _digest(secret),
            "created": now,
            "expires": now + ttl_s,
        }
        key = self.key_of(token_id)
        if not await self._kv.kv_put(key, self._key.seal(_KIND, key, body), cas=0):
            raise RuntimeError("sidecar token id collision")  # 128 random bits: never happens
        record, digest = _parse(token_id, body)
        self._remember(record, digest)
        return f"{_PREFIX}{token_id}.{secret}", record

    async def verify(self, token: str) -> SidecarTokenRecord:
        """The record of a valid ``sidecar.<id>.<secret>``; :class:`TokenRefused` otherwise
        (an old-format token gets a message saying so)."""
        if not token.startswith(_PREFIX):
            raise TokenRefused(_INVALID)
        head, _, secret = token[len(_PREFIX) :].rpartition(".")
        if _OLD_MAC_RE.match(secret) and _SERVICE_RE.match(head):
            raise TokenRefused(OLD_FORMAT)
        if not _ID_RE.match(head) or not _SECRET_RE.match(secret):
            raise TokenRefused(_INVALID)
        found = await self._lookup(head)
        if found is None:
            raise TokenRefused(_INVALID)
        record, digest = found
        if not hmac.compare_digest(digest, _digest(secret)):
            raise TokenRefused(_INVALID)
        if record.expires <= self._clock():
            self._cache.pop(head, None)
            raise TokenRefused("sidecar token expired")
        if (
            record.serial is not None
            and self._leaf_revoked is not None
            and self._leaf_revoked(int(record.serial, 16))
        ):
            raise TokenRefused("sidecar token bound to a revoked certificate")
        return record

    async def revoke(self, token_id: str) -> bool:
        """Delete the record of ``token_id``; False when there was none."""
        if not _ID_RE.match(token_id):
            return False
        self._cache.pop(token_id, None)
        key = self.key_of(token_id)
        existed = await self._kv.kv_get(key) is not None
        await self._kv.kv_delete(key)
        self._cache.pop(token_id, None)  # a verify that raced the delete
        return existed

    async def revoke_bound(self, identity: str, serial: str | None = None) -> int:
        """Revoke every token bound to ``identity`` (and to the leaf ``serial`` if given);
        how many."""
        revoked = 0
        for record in await self.list():
            if record.identity == identity and (serial is None or record.serial == serial):
                revoked += await self.revoke(record.id)
        return revoked

    async def list(self) -> list[SidecarTokenRecord]:
        """Every token record that opens (bad ones logged, counted and skipped), by service
        and expiry; expired ones are deleted instead of listed."""
        _, entries = await self._kv.kv_list(self._dir)
        now = self._clock()
        records: list[SidecarTokenRecord] = []
        for entry in entries[:MAX_RECORDS]:
            token_id = entry.key[len(self._dir) :]
            opened = self._open(token_id, entry.value)
            if opened is None:
                continue
            record = opened[0]
            if record.expires <= now:
                await self._kv.kv_delete(entry.key, cas=entry.modify_index)
                self._cache.pop(token_id, None)
                continue
            records.append(record)
        records.sort(key=lambda r: (r.namespace, r.service, r.expires, r.id))
        return records

    async def _lookup(self, token_id: str) -> tuple[SidecarTokenRecord, str] | None:
        cached = self._cache.get(token_id)
        if cached is not None and self._monotonic() - cached[2] < REFRESH_S:
            return cached[0], cached[1]
        entry = await self._kv.kv_get(self.key_of(token_id))
        if entry is None:
            self._cache.pop(token_id, None)
            return None
        opened = self._open(token_id, entry.value)
        if opened is None:
            self._cache.pop(token_id, None)
            return None
        self._remember(*opened)
        return opened

    def _open(self, token_id: str, raw: bytes) -> tuple[SidecarTokenRecord, str] | None:
        try:
            if not _ID_RE.match(token_id):
                raise InvalidRecord(f"sidecar token record under a bad key {token_id!r}")
            body = self._key.open(_KIND, self.key_of(token_id), raw, max_bytes=MAX_RECORD_BYTES)
            return _parse(token_id, body)
        except InvalidRecord as exc:
            self.invalid_records += 1
            if self._invalid is not None:
                self._invalid.inc()
            log.warning("sidecar token record skipped", key=self.key_of(token_id), error=str(exc))
            return None

    def _remember(self, record: SidecarTokenRecord, digest: str) -> None:
        self._cache.pop(record.id, None)
        if len(self._cache) >= MAX_RECORDS:
            del self._cache[next(iter(self._cache))]  # the oldest
        self._cache[record.id] = (record, digest, self._monotonic())
