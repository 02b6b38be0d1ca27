"""``POST /v1/tokens/registry``: a registry ACL token for one service's sidecars.

controld asks the registry (embedded or a real Consul) with its own token for a token with a
single service identity, ``consul acl token create -service-identity=<service>``: the sidecar
can then register only ``<service>`` and ``<service>-sidecar-proxy`` and read the catalog
and health, never controld's KV prefix. Admin only; audited.
"""

# No ``from __future__ import annotations``: FastAPI reads the local Annotated aliases.

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.requests import Request

from controld.api.deps import Auditor, Guard
from controld.api.errors import ApiError
from controld.auth import Principal
from meshcore.api.tokens import REGISTRY_TOKENS_PATH, RegistryToken, RegistryTokenRequest
from meshcore.registry import RegistryError, RegistryPermissionDenied, RegistryRequestError
from meshcore.registry.client import RegistryClient, RegistrySettings

__all__ = ["registry_tokens_router"]


def registry_tokens_router(plane: object, guard: Guard, auditor: Auditor) -> APIRouter:
    """The endpoint; ``plane.registry_settings`` (controld's own registry access) is read per
    request, so it works once the daemon is connected."""
    router = APIRouter(tags=["tokens"])
    AdminAudited = Annotated[Principal, Depends(guard.admin_audited)]

    @router.post(
        REGISTRY_TOKENS_PATH,
        responses={
            422: {"description": "the registry refused the service identity"},
            503: {"description": "registry unreachable or controld's token lacks acl:write"},
        },
    )
    async def create_registry_token(
        body: RegistryTokenRequest, request: Request, principal: AdminAudited
    ) -> RegistryToken:
        """A registry token with a service identity for ``service`` (admin only; audited)."""
        settings = getattr(plane, "registry_settings", None)
        if not isinstance(settings, RegistrySettings):
            raise ApiError(503, "not connected to a registry yet")
        try:
            with RegistryClient(settings) as client:
                token = await client.create_service_token(
                    body.service,
                    ttl_s=body.ttl_s,
                    description=f"meshd sidecar of {body.service} (by {principal.name})",
                )
        except RegistryPermissionDenied as exc:
            raise ApiError(503, f"controld's registry token may not create tokens: {exc}") from exc
        except RegistryRequestError as exc:
            raise ApiError(422, f"the registry refused the token: {exc}") from exc
        except RegistryError as exc:
            raise ApiError(503, f"registry: {exc}") from exc
        auditor.record(principal.name, request, "minted", service=body.service, kind="registry")
        return RegistryToken(
            accessor_id=str(token.get("AccessorID", "")),
            secret_id=str(token.get("SecretID", "")),
            service=body.service,
            expires=token.get("ExpirationTime"),
        )

    return router
