"""Single-use, expiring join tokens ``join.<id>.<secret>[.<pin>...]`` kept in the registry KV.

The pins (:mod:`meshcore.pki`) name the roots of the bundle at mint time, so the sidecar can
check controld's TLS certificate on first contact; controld itself only reads id and secret.

The entry ``<prefix>join-tokens/<id>`` holds the service, namespace, expiry and the SHA-256
of the secret (never the secret). Consuming a token is a check-and-set *write* of a ``used``
marker followed by a delete: a CAS delete alone is not enough, because Consul (and the
embedded registry) report a CAS delete of an already deleted key as a success, so two
racing enrollments with the same token could both win.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from controld.ca.errors import JoinTokenInvalid
from controld.ca.kv import KV
from meshcore.pki import JOIN_TOKEN_PATTERN

__all__ = ["JoinGrant", "JoinTokens"]

_INVALID = "join token unknown, used or expired"


@dataclass(frozen=True, slots=True)
class JoinGrant:
    """What a consumed join token entitles to: an identity in ``namespace``/``service``."""

    service: str
    namespace: str


class JoinTokens:
    """Creates and consumes join tokens under ``<prefix>join-tokens/``."""

    def __init__(self, kv: KV, prefix: str) -> None:
        self._kv = kv
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
        body = {
            "service": service,
            "namespace": namespace,
            "expires": expires,
            "secret_sha256": _digest(secret),
            "used": False,
        }
        if not await self._kv.kv_put(self._dir + token_id, _encode(body), cas=0):
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
        entry = await self._kv.kv_get(key)
        if entry is None:
            raise JoinTokenInvalid(_INVALID)
        try:
            body = json.loads(entry.value)
            digest, expires = str(body["secret_sha256"]), float(body["expires"])
            grant = JoinGrant(str(body["service"]), str(body["namespace"]))
            used = bool(body.get("used", False))
        except (ValueError, KeyError, TypeError) as exc:
            raise JoinTokenInvalid(_INVALID) from exc
        if not hmac.compare_digest(digest, _digest(secret)):
            raise JoinTokenInvalid(_INVALID)
        if used:
            raise JoinTokenInvalid(_INVALID)
        if expires <= now:
            # Expired: remove it (only if unchanged), and refuse either way.
            await self._kv.kv_delete(key, cas=entry.modify_index)
            raise JoinTokenInvalid(_INVALID)
        body["used"] = True
        if not await self._kv.kv_put(key, _encode(body), cas=entry.modify_index):
            raise JoinTokenInvalid(_INVALID)  # someone else consumed it first
        # The used marker is final; nobody else writes it, so a plain delete is safe.
        await self._kv.kv_delete(key)
        return grant

    async def sweep(self, *, now: float | None = None) -> int:
        """Delete the expired tokens nobody used (each only if unchanged); how many.

        Used ones are deleted by :meth:`consume` itself; an entry that doesn't parse is left
        for an operator to look at.
        """
        now = time.time() if now is None else now
        _, entries = await self._kv.kv_list(self._dir)
        swept = 0
        for entry in entries:
            try:
                expires = float(json.loads(entry.value)["expires"])
            except (ValueError, KeyError, TypeError):
                continue
            if expires <= now and await self._kv.kv_delete(entry.key, cas=entry.modify_index):
                swept += 1
        return swept


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _encode(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
