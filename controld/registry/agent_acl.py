"""What the agent endpoints need, in Consul's terms (``agent``, ``service`` and ``node`` rules).

An unknown service or check ID is answered 404 only to a token that could have written it;
anyone else gets 403, so IDs can't be probed without permission.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from controld.registry.acl_access import access
from controld.registry.acl_authz import Authorizer
from controld.registry.model import Check

if TYPE_CHECKING:
    from controld.registry.http import Ctx

__all__ = [
    "check_readable",
    "require_agent",
    "require_check_register",
    "require_check_write",
    "require_service_write",
]


def check_readable(authz: Authorizer, check: Check) -> bool:
    """service:read on a service check's service, node:read for a node check."""
    if check.service_id:
        return authz.service_read(check.service_name)
    return authz.node_read(check.node)


def require_agent(request: Request, ctx: Ctx, *, write: bool) -> None:
    """agent:read (or write) on the registry's node."""
    authz = access(request).authz
    node = ctx.agent.node
    access(request).require(authz.agent_write(node) if write else authz.agent_read(node))


def require_check_write(request: Request, ctx: Ctx, check_id: str) -> None:
    """Write on the check's service, or node:write for a node check."""
    check = ctx.agent.local_check(check_id)
    authz = access(request).authz
    # An unknown check is a 404 only for a token that could write node checks.
    allowed = authz.node_write(ctx.agent.node)
    if check is not None:
        allowed = ctx.agent.check_writable(authz, check)
    access(request).require(allowed)


def require_service_write(request: Request, ctx: Ctx, service_id: str) -> None:
    """service:write on the local service with ``service_id``."""
    svc = ctx.agent.local_service(service_id)
    # An unknown ID is a 404 only for a token that could write a service of that name.
    name = svc.name if svc is not None else service_id
    access(request).require(access(request).authz.service_write(name))


def require_check_register(request: Request, ctx: Ctx, body: dict[str, Any]) -> None:
    """A new check: write on the service it names (404 later if unknown), else node:write."""
    service_id = body.get("ServiceID")
    svc = ctx.agent.local_service(str(service_id)) if service_id else None
    authz = access(request).authz
    allowed = authz.service_write(svc.name) if svc is not None else authz.node_write(ctx.agent.node)
    access(request).require(allowed or (bool(service_id) and svc is None))
