"""/v1/acl/*: the management-token-only ACL model, in Consul's shapes.

With no management token configured every ACL endpoint answers Consul's 401 "ACL support
disabled". With one, two tokens exist: the initial management token and ``anonymous``; they
can be listed and read, bootstrapping is refused (already done), and creating tokens,
policies or roles is not supported (500 with a reason).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.errors import Forbidden, RequestError
from controld.registry.http import Ctx, allow, json_response, request_token

__all__ = ["ROUTES"]

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
MANAGEMENT_POLICY = {"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}
CREATE_TIME = "1970-01-01T00:00:00Z"


def _enabled(ctx: Ctx) -> str:
    if ctx.acl_token is None:
        raise RequestError("ACL support disabled", 401)
    return ctx.acl_token


def _management(token: str) -> dict[str, Any]:
    accessor = str(uuid.UUID(bytes=hashlib.sha256(b"accessor:" + token.encode()).digest()[:16]))
    return {
        "AccessorID": accessor,
        "SecretID": token,
        "Description": "Initial Management Token",
        "Policies": [MANAGEMENT_POLICY],
        "Local": False,
        "CreateTime": CREATE_TIME,
        "Hash": hashlib.sha256(token.encode()).hexdigest()[:44],
        "CreateIndex": 1,
        "ModifyIndex": 1,
    }


def _anonymous() -> dict[str, Any]:
    return {
        "AccessorID": ANONYMOUS_ACCESSOR,
        "SecretID": "anonymous",
        "Description": "Anonymous Token",
        "Policies": None,
        "Local": False,
        "CreateTime": CREATE_TIME,
        "Hash": "",
        "CreateIndex": 1,
        "ModifyIndex": 1,
    }


async def tokens(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/tokens."""
    allow(request, "GET")
    token = _enabled(ctx)
    return json_response([_management(token), _anonymous()])


async def token_self(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/token/self: the token of the request."""
    allow(request, "GET")
    token = _enabled(ctx)
    if request_token(request) != token:
        raise Forbidden("ACL not found")
    return json_response(_management(token))


async def token_read(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/token/:accessor."""
    allow(request, "GET", "PUT", "DELETE")
    token = _enabled(ctx)
    accessor = request.path_params["accessor"]
    if request.method != "GET":
        raise RequestError("Only the management and anonymous tokens exist in this registry")
    for entry in (_management(token), _anonymous()):
        if entry["AccessorID"] == accessor:
            return json_response(entry)
    raise Forbidden("ACL not found")


async def bootstrap(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/acl/bootstrap: already bootstrapped by the configured management token."""
    allow(request, "PUT")
    _enabled(ctx)
    raise Forbidden("Permission denied: ACL bootstrap no longer allowed (reset index: 1)")


async def other(request: Request, ctx: Ctx) -> Response:
    """Any other ACL endpoint: not supported beyond the management token."""
    _enabled(ctx)
    raise RequestError("ACL management beyond the management token is not supported")


ROUTES = [
    ("/v1/acl/tokens", tokens),
    ("/v1/acl/token/self", token_self),
    ("/v1/acl/token/{accessor}", token_read),
    ("/v1/acl/bootstrap", bootstrap),
    ("/v1/acl/{rest:path}", other),
]
