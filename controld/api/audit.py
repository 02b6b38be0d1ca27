"""``GET /v1/audit``: the audit log of control-plane changes (admin only)."""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factory.

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Security

from controld.api.deps import BEARER, Guard
from controld.api.errors import ApiError
from controld.audit import AuditLog, parse_time
from controld.auth import Principal
from meshcore.registry import RegistryError

__all__ = ["MAX_AUDIT_LIMIT", "audit_router"]

#: Most entries one call returns.
MAX_AUDIT_LIMIT = 1000


def audit_router(audit: AuditLog, guard: Guard) -> APIRouter:
    """The audit route on ``audit``."""
    router = APIRouter(tags=["audit"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]

    @router.get(
        "/v1/audit",
        responses={
            400: {"description": "bad `since`"},
            503: {"description": "registry unavailable"},
        },
    )
    async def read_audit(
        _: Admin,
        since: Annotated[
            str | None,
            Query(max_length=64, description="only entries at or after this RFC 3339 time"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LIMIT)] = 100,
    ) -> dict[str, Any]:
        """The newest audit entries first: time, actor, method, route, resource, source,
        status and outcome of each control-plane change (entries that aren't valid sealed
        records are skipped, logged and counted)."""
        floor: float | None = None
        if since is not None:
            try:
                floor = parse_time(since)
            except ValueError as exc:
                raise ApiError(400, f"since: {exc}") from exc
        try:
            entries = await audit.read(since=floor, limit=limit)
        except RegistryError as exc:
            raise ApiError(503, f"registry unavailable: {exc}") from exc
        return {"entries": [e.as_json() for e in entries]}

    return router
