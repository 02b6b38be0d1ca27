"""A request's ACL token and what it may do: resolved once per request, checked by handlers.

:func:`check_acl` runs before every handler (except ``/v1/status/*``) and leaves an
:class:`Access` in the request scope; handlers ask :func:`access` for it, ``require`` a
permission (Consul's 403 "Permission denied") or keep only what it makes ``visible``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from controld.registry.acl_authz import Authorizer
from controld.registry.errors import Forbidden, RequestError

if TYPE_CHECKING:
    from controld.registry.http import Ctx

__all__ = ["Access", "access", "check_acl", "filtered_headers", "request_token"]


def request_token(request: Request) -> str:
    """The ACL token: ``?token=``, then ``X-Consul-Token``, then ``Authorization: Bearer``."""
    token = request.query_params.get("token")
    if token:
        return token
    token = request.headers.get("x-consul-token")
    if token:
        return token
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return ""


class Access:
    """A request's authorizer, and whether a read left something out for it."""

    __slots__ = ("authz", "filtered")

    def __init__(self, authz: Authorizer) -> None:
        self.authz = authz
        self.filtered = False

    def visible(self, allowed: bool) -> bool:
        """``allowed``, remembering a ``False`` as filtered (for the response header)."""
        if not allowed:
            self.filtered = True
        return allowed

    def require(self, allowed: bool) -> None:
        """Consul's 403 "Permission denied" unless ``allowed``."""
        if not allowed:
            raise Forbidden("Permission denied")


def check_acl(request: Request, ctx: Ctx) -> None:
    """Resolve the request's token (403 "ACL not found" if unknown or expired) for the
    handler to check its permissions against (:func:`access`)."""
    request.scope["controld.access"] = Access(ctx.acl.resolve(request_token(request)))


def access(request: Request) -> Access:
    """The request's :class:`Access` (set by :func:`check_acl`)."""
    found = request.scope.get("controld.access")
    if not isinstance(found, Access):
        raise RequestError("request not authorized (internal error)")
    return found


def filtered_headers(acc: Access) -> dict[str, str] | None:
    """The header Consul adds when ACLs left entries out of a result."""
    return {"X-Consul-Results-Filtered-By-ACLs": "true"} if acc.filtered else None
