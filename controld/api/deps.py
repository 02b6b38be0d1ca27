"""Authentication dependencies and the audit log of the HTTP API."""

from __future__ import annotations

from typing import Any

from fastapi.security import HTTPBearer
from starlette.requests import Request

from controld.api.peer import peer_spiffe_id
from controld.auth import Forbidden, Principal, TokenAuth, Unauthenticated

__all__ = ["BEARER", "Auditor", "Guard"]

#: Only documents the scheme in OpenAPI; the token itself is checked by :class:`TokenAuth`.
BEARER = HTTPBearer(auto_error=False, description="admin token or sidecar token")


class Auditor:
    """Writes one ``audit`` event per mutating call to the ``controld.audit`` logger."""

    def __init__(self, logger: Any) -> None:
        self._log = logger

    def record(
        self,
        principal: str,
        request: Request,
        outcome: str,
        *,
        revision: int | None = None,
        **fields: Any,
    ) -> None:
        """Log who did what (``method path``), how it ended and the revision it made."""
        self._log.info(
            "audit",
            principal=principal,
            method=request.method,
            path=request.url.path,
            outcome=outcome,
            revision=revision,
            **fields,
        )


class Guard:
    """FastAPI dependencies checking the bearer token (use as ``Depends(guard.admin)``)."""

    def __init__(self, auth: TokenAuth, auditor: Auditor) -> None:
        self._auth = auth
        self._auditor = auditor

    async def principal(self, request: Request) -> Principal:
        """Any valid token (admin or sidecar), or a workload's client certificate."""
        return await self._auth.authenticate(
            request.headers.get("authorization"), peer_id=peer_spiffe_id(request.scope)
        )

    async def admin(self, request: Request) -> Principal:
        """The admin token only."""
        principal = await self.principal(request)
        principal.require_admin()
        return principal

    async def admin_audited(self, request: Request) -> Principal:
        """The admin token only, auditing refusals (for mutating endpoints)."""
        try:
            principal = await self.principal(request)
        except Unauthenticated:
            self._auditor.record("anonymous", request, "unauthenticated")
            raise
        try:
            principal.require_admin()
        except Forbidden:
            self._auditor.record(principal.name, request, "forbidden")
            raise
        return principal
