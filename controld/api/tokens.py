"""Sidecar API tokens: mint (``POST``), list (``GET``) and revoke (``DELETE``); admin only.

Mint and revoke are audited. The list shows id, service, namespace, bound identity, created
and expiry of each token, never a secret.
"""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factory.

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Security
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from controld.api.deps import BEARER, Auditor, Guard
from controld.api.errors import ApiError
from controld.auth import Principal, TokenAuth
from controld.ca.service import rfc3339
from controld.sidecar_tokens import DEFAULT_TTL_S, MAX_TTL_S, SidecarTokenRecord
from meshcore.model.policy import SERVICE_PATTERN

__all__ = ["tokens_router"]


class TokenRequest(BaseModel):
    """Body of ``POST /v1/tokens/sidecar``."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(pattern=SERVICE_PATTERN)
    namespace: str = Field(default="default", pattern=SERVICE_PATTERN)
    ttl_s: int = Field(default=DEFAULT_TTL_S, ge=1, le=MAX_TTL_S)


class TokenAnswer(BaseModel):
    """A new sidecar token (``sidecar.<id>.<secret>``), its id and expiry."""

    token: str
    id: str
    expires: str


def _time(when: float) -> str:
    return rfc3339(datetime.fromtimestamp(when, UTC))


def record_json(record: SidecarTokenRecord) -> dict[str, Any]:
    """A record as the API lists it (times in RFC 3339)."""
    doc = record.as_json()
    doc["created"] = _time(record.created)
    doc["expires"] = _time(record.expires)
    return doc


def tokens_router(auth: TokenAuth, guard: Guard, auditor: Auditor) -> APIRouter:
    """``/v1/tokens/sidecar`` (mint, list) and ``/v1/tokens/sidecar/{id}`` (revoke)."""
    router = APIRouter(tags=["tokens"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]

    @router.post("/v1/tokens/sidecar", responses={503: {"description": "no registry"}})
    async def mint_sidecar_token(
        body: TokenRequest, request: Request, principal: AdminAudited
    ) -> TokenAnswer:
        """Mint a token for ``service``'s sidecars, valid ``ttl_s`` (admin only; audited)."""
        try:
            token, record = await auth.mint_sidecar(body.service, body.namespace, ttl_s=body.ttl_s)
        except ValueError as exc:
            raise ApiError(503, str(exc)) from exc
        auditor.record(principal.name, request, "minted", service=body.service, token_id=record.id)
        return TokenAnswer(token=token, id=record.id, expires=_time(record.expires))

    @router.get("/v1/tokens/sidecar")
    async def list_sidecar_tokens(_: Admin) -> dict[str, Any]:
        """Every unexpired sidecar token: id, service, identity, expiry (never a secret)."""
        if auth.tokens is None:
            return {"tokens": []}
        return {"tokens": [record_json(r) for r in await auth.tokens.list()]}

    @router.delete(
        "/v1/tokens/sidecar/{token_id}", responses={404: {"description": "no such token"}}
    )
    async def revoke_sidecar_token(
        token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")],
        request: Request,
        principal: AdminAudited,
    ) -> dict[str, str]:
        """Revoke one sidecar token: refused from now on (admin only; audited)."""
        if auth.tokens is None or not await auth.tokens.revoke(token_id):
            auditor.record(principal.name, request, "not found", token_id=token_id)
            raise ApiError(404, f"no sidecar token {token_id}")
        auditor.record(principal.name, request, "revoked", token_id=token_id)
        return {"id": token_id, "revoked": "true"}

    return router
