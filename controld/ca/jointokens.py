"""Single-use, expiring join tokens ``join.<id>.<secret>[.<pin>...]`` kept in the registry KV.

The pins (:mod:`meshcore.pki`) name the roots of the bundle at mint time, so the sidecar can
check controld's TLS certificate on first contact; controld itself only reads id and secret.

The entry ``<prefix>join-tokens/<id>`` holds the service, namespace, expiry and the SHA-256
of the secret (never the secret), sealed (:mod:`controld.ca.records`): an entry a registry
writer made or changed (not sealed by this controld) enrolls nobody.

Consuming a token is a check-and-set *write* of a ``used`` marker followed by a delete: a
CAS delete alone is not enough, because Consul (and the embedded registry) report a CAS
delete of an already deleted key as a success, so two racing enrollments with the same
token could both win.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from controld.ca.errors import JoinTokenInvalid
from controld.ca.records import CARecords, InvalidRecord
from meshcore.model.policy import SERVICE_PATTERN
from meshcore.pki import JOIN_TOKEN_PATTERN

__all__ = ["JOIN_TOKEN_KIND", "JoinGrant", "JoinTokenRecord", "JoinTokens"]

_INVALID = "join token unknown, used or expired"
#: The record kind of a join token (part of its seal).
JOIN_TOKEN_KIND = "join-token"  # noqa: S105 (a record kind, not a secret)


class JoinTokenRecord(BaseModel):
    """The stored form of a join token."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    service: str = Field(pattern=SERVICE_PATTERN, max_length=253)
    namespace: str = Field(pattern=SERVICE_PATTERN, max_length=253)
    expires: float
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    used: bool = False


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What a consumed join token entitles to: an identity in ``namespace``/``service``."""

    service: str
    namespace: str


class JoinTokens:
    """Creates and consumes join tokens under ``<prefix>join-tokens/``."""

    def __init__(self, records: CARecords, prefix: str) -> None:
        self._records = records
        self._kv = records.kv
        self._dir = f"{prefix}join-tokens/"

    async def create(
        self,
        service: str,
        namespace: str,
        ttl_s: float,
        *,
        pins: tuple[str, ...] = (),
        now: float | None = None,
    ) -> tuple[str, float]:
        """A new token for ``service`` in ``namespace`` carrying ``pins``; ``(token, expiry
        unix time)``."""
        now = time.time() if now is None else now
        token_id = secrets.token_hex(16)
        secret = secrets.token_urlsafe(32)
        expires = now + ttl_s
        body = JoinTokenRecord(
            service=service, namespace=namespace, expires=expires, secret_sha256=_digest(secret)
        )
        if not await self._records.put(JOIN_TOKEN_KIND, self._dir + token_id, body, cas=0):
            raise RuntimeError("join token id collision")  # 128 random bits: never happens
        return ".".join(("join", token_id, secret, *pins)), expires

    async def consume(self, token: str, *, now: float | None = None) -> JoinGrant:
        """Use a token once; raises :class:`~controld.ca.errors.JoinTokenInvalid` when it is
        malformed, unknown, already used, expired or its secret is wrong."""
        now = time.time() if now is None else now
        match = JOIN_TOKEN_PATTERN.match(token)
        if match is None:
            raise JoinTokenInvalid(_INVALID)
        token_id, secret = match.group(1), match.group(2)
        key = self._dir + token_id
        try:
            found = await self._records.get(JOIN_TOKEN_KIND, key, JoinTokenRecord)
        except InvalidRecord as exc:  # forged or damaged: logged and counted already
            raise JoinTokenInvalid(_INVALID) from exc
        if found is None:
            raise JoinTokenInvalid(_INVALID)
        body, entry = found
        if not hmac.compare_digest(body.secret_sha256, _digest(secret)):
            raise JoinTokenInvalid(_INVALID)
        if body.used:
            raise JoinTokenInvalid(_INVALID)
        if body.expires <= now:
            # Expired: remove it (only if unchanged), and refuse either way.
            await self._kv.kv_delete(key, cas=entry.modify_index)
            raise JoinTokenInvalid(_INVALID)
        used = body.model_copy(update={"used": True})
        if not await self._records.put(JOIN_TOKEN_KIND, key, used, cas=entry.modify_index):
            raise JoinTokenInvalid(_INVALID)  # someone else consumed it first
        # The used marker is final; nobody else writes it, so a plain delete is safe.
        await self._kv.kv_delete(key)
        return JoinGrant(body.service, body.namespace)

    async def sweep(self, *, now: float | None = None) -> int:
        """Delete the expired tokens nobody used (each only if unchanged); how many.

        Used ones are deleted by :meth:`consume` itself; an invalid entry (logged and
        counted) is left for an operator to look at.
        """
        now = time.time() if now is None else now
        swept = 0
        for body, entry in await self._records.list(JOIN_TOKEN_KIND, self._dir, JoinTokenRecord):
            if body.expires <= now and await self._kv.kv_delete(entry.key, cas=entry.modify_index):
                swept += 1
        return swept


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()
