"""Revoked identities, kept in the registry KV under ``<prefix>revoked/<urlsafe id>``.

Revoking a SPIFFE ID stops its renewals; the leaves already issued stay valid until they
expire (24 h by default), which bounds how long a revoked sidecar keeps working.
"""

from __future__ import annotations

import base64
import json
import time

from controld.ca.kv import KV

__all__ = ["Revocations", "revocation_key"]


def revocation_key(prefix: str, identity: str) -> str:
    """``<prefix>revoked/<base64url(identity), unpadded>``."""
    encoded = base64.urlsafe_b64encode(identity.encode("utf-8")).rstrip(b"=").decode("ascii")
    return f"{prefix}revoked/{encoded}"


class Revocations:
    """Records and looks up revoked SPIFFE IDs."""

    def __init__(self, kv: KV, prefix: str) -> None:
        self._kv = kv
        self._prefix = prefix

    async def revoke(self, identity: str, *, now: float | None = None) -> None:
        """Revoke ``identity`` (idempotent)."""
        body = {"spiffe_id": identity, "time": time.time() if now is None else now}
        await self._kv.kv_put(revocation_key(self._prefix, identity), json.dumps(body).encode())

    async def is_revoked(self, identity: str) -> bool:
        """True when ``identity`` has been revoked."""
        return await self._kv.kv_get(revocation_key(self._prefix, identity)) is not None
