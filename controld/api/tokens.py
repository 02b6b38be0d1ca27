"""Sidecar API tokens: mint (``POST``), list (``GET``) and revoke (``DELETE``); admin only.

Mint and revoke are audited. The list shows id, service, namespace, bound identity, created
and expiry of each token, never a secret.
"""

# No `from __future__ import annotations`: FastAPI evaluates route signatures, whose
# Annotated aliases are local to the router factory.

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Security
from starlette.requests import Request

from controld.api.deps import BEARER, Auditor, Guard
from controld.api.errors import ApiError
from controld.auth import Principal, TokenAuth
from controld.ca.service import rfc3339
from controld.sidecar_tokens import SidecarTokenRecord
from meshcore.api.tokens import (
    SIDECAR_TOKENS_PATH,
    TOKEN_ID_PATTERN,
    SidecarToken,
    SidecarTokenInfo,
    SidecarTokenList,
    SidecarTokenRequest,
    TokenRevoked,
)

__all__ = ["tokens_router"]


def _time(when: float) -> str:
    return rfc3339(datetime.fromtimestamp(when, UTC))


def token_info(record: SidecarTokenRecord) -> SidecarTokenInfo:
    """A record as the API lists it (times in RFC 3339)."""
    doc = record.as_json()
    doc["created"] = _time(record.created)
    doc["expires"] = _time(record.expires)
    return SidecarTokenInfo.model_validate(doc)


def tokens_router(auth: TokenAuth, guard: Guard, auditor: Auditor) -> APIRouter:
    """``/v1/tokens/sidecar`` (mint, list) and ``/v1/tokens/sidecar/{id}`` (revoke)."""
    router = APIRouter(tags=["tokens"], dependencies=[Security(BEARER)])
    Admin = Annotated[Principal, Depends(guard.admin)]
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]

    @router.post(SIDECAR_TOKENS_PATH, responses={503: {"description": "no registry"}})
    async def mint_sidecar_token(
        body: SidecarTokenRequest, request: Request, principal: AdminAudited
    ) -> SidecarToken:
        """Mint a token for ``service``'s sidecars, valid ``ttl_s`` (admin only; audited)."""
        try:
            token, record = await auth.mint_sidecar(body.service, body.namespace, ttl_s=body.ttl_s)
        except ValueError as exc:
            raise ApiError(503, str(exc)) from exc
        auditor.record(principal.name, request, "minted", service=body.service, token_id=record.id)
        return SidecarToken(token=token, id=record.id, expires=_time(record.expires))

    @router.get(SIDECAR_TOKENS_PATH)
    async def list_sidecar_tokens(_: Admin) -> SidecarTokenList:
        """Every unexpired sidecar token: id, service, identity, expiry (never a secret)."""
        if auth.tokens is None:
            return SidecarTokenList(tokens=())
        return SidecarTokenList(tokens=tuple(token_info(r) for r in await auth.tokens.list()))

    @router.delete(
        SIDECAR_TOKENS_PATH + "/{token_id}", responses={404: {"description": "no such token"}}
    )
    async def revoke_sidecar_token(
        token_id: Annotated[str, Path(pattern=TOKEN_ID_PATTERN)],
        request: Request,
        principal: AdminAudited,
    ) -> TokenRevoked:
        """Revoke one sidecar token: refused from now on (admin only; audited)."""
        if auth.tokens is None or not await auth.tokens.revoke(token_id):
            auditor.record(principal.name, request, "not found", token_id=token_id)
            raise ApiError(404, f"no sidecar token {token_id}")
        auditor.record(principal.name, request, "revoked", token_id=token_id)
        return TokenRevoked(id=token_id)

    return router
