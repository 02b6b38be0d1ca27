"""``GET /v1/audit``: the audit log of control-plane changes (admin only)."""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factory.

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Security

from controld.api.deps import BEARER, Guard
from controld.api.errors import ApiError
from controld.audit import AuditLog, parse_time
from controld.auth import Principal
from meshcore.api.audit import (
    AUDIT_PATH,
    DEFAULT_AUDIT_LIMIT,
    MAX_AUDIT_LIMIT,
    AuditPage,
)
from meshcore.registry import RegistryError

__all__ = ["audit_router"]


def audit_router(audit: AuditLog, guard: Guard) -> APIRouter:
    """The audit route on ``audit``."""
    router = APIRouter(tags=["audit"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]

    @router.get(
        AUDIT_PATH,
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
        limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_LIMIT)] = DEFAULT_AUDIT_LIMIT,
    ) -> AuditPage:
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
        return AuditPage(entries=tuple(entries))

    return router
