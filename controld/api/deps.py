"""Authentication dependencies and the audit hook of the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from fastapi.security import HTTPBearer
from starlette.requests import Request

from controld.api.peer import peer_spiffe_id
from controld.auth import Forbidden, Principal, TokenAuth, Unauthenticated

__all__ = ["AUDIT_NOTE", "BEARER", "PRINCIPAL", "AuditNote", "Auditor", "Guard"]

#: Only documents the scheme in OpenAPI; the token itself is checked by :class:`TokenAuth`.
BEARER = HTTPBearer(auto_error=False, description="admin token or sidecar token")
#: ASGI scope key of the request's :class:`Principal` once its token was checked.
PRINCIPAL: Final = "controld.principal"
#: ASGI scope key of the request's :class:`AuditNote` (set by the API gate).
AUDIT_NOTE: Final = "controld.audit"


@dataclass
class AuditNote:
    """What an endpoint reports about one mutating request, for its audit entry.

    Mutable on purpose: one per request, filled by the endpoint (through
    :meth:`Auditor.record`) while the gate waits for the answer.
    """

    #: The actor the endpoint named (used when the gate saw no credential).
    actor: str | None = None
    outcome: str | None = None
    revision: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Auditor:
    """Writes one ``audit`` event per call to the ``controld.audit`` logger and hands what the
    endpoint says (outcome, revision, fields) to the request's audit entry."""

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
        note = request.scope.get(AUDIT_NOTE)
        if isinstance(note, AuditNote):
            note.actor = principal
            note.outcome = outcome
            if revision is not None:
                note.revision = revision
            note.details.update(fields)


class Guard:
    """FastAPI dependencies checking the bearer token (use as ``Depends(guard.admin)``).

    The API gate (:mod:`controld.api.gate`) checks the token of every route depending on one
    of :attr:`TOKEN_CHECKS` before the request body is read, with :meth:`authenticate`, and
    leaves the principal in the scope for the dependency to reuse.
    """

    #: Dependencies that need a valid bearer token (checked by the gate before the body).
    TOKEN_CHECKS: Final = frozenset({"principal", "admin", "admin_audited"})

    def __init__(self, auth: TokenAuth, auditor: Auditor) -> None:
        self._auth = auth
        self._auditor = auditor

    async def authenticate(self, request: Request) -> Principal:
        """The principal of the request's bearer token or workload client certificate
        (:class:`Unauthenticated` if neither is valid); checked once per request."""
        cached = request.scope.get(PRINCIPAL)
        if isinstance(cached, Principal):
            return cached
        principal = await self._auth.authenticate(
            request.headers.get("authorization"), peer_id=peer_spiffe_id(request.scope)
        )
        request.scope[PRINCIPAL] = principal
        return principal

    async def principal(self, request: Request) -> Principal:
        """Any valid token (admin or sidecar), or a workload's client certificate."""
        return await self.authenticate(request)

    async def admin(self, request: Request) -> Principal:
        """The admin token only."""
        principal = await self.authenticate(request)
        principal.require_admin()
        return principal

    async def admin_audited(self, request: Request) -> Principal:
        """The admin token only, auditing refusals (for mutating endpoints)."""
        try:
            principal = await self.authenticate(request)
        except Unauthenticated:
            self._auditor.record("anonymous", request, "unauthenticated")
            raise
        try:
            principal.require_admin()
        except Forbidden:
            self._auditor.record(principal.name, request, "forbidden")
            raise
        return principal
