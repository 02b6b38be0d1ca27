"""/v1/acl/*: tokens, policies and roles in Consul's shapes (what py-consul calls).

Without ACLs every endpoint answers Consul's 401 "ACL support disabled". Reads need
``acl = "read"`` (a token's SecretID shows only with ``acl = "write"``), writes need
``acl = "write"``; ``/v1/acl/token/self`` answers any valid token. Bootstrapping works once,
while no token links ``global-management``. Auth methods, binding rules and login are not
offered (400 naming the endpoint).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import Access, access, request_token
from controld.registry.acl_json import (
    field,
    policy_from_body,
    policy_json,
    role_from_body,
    role_json,
    token_from_body,
    token_json,
)
from controld.registry.acl_model import ANONYMOUS_ACCESSOR, MANAGEMENT_POLICY_ID, Token
from controld.registry.errors import BadRequest, Forbidden, NotFound, RequestError
from controld.registry.http import Ctx, allow, json_response, read_json

__all__ = ["ROUTES"]

Json = dict[str, Any]


def _enabled(request: Request, ctx: Ctx, *, write: bool) -> Access:
    if not ctx.acl.enabled:
        raise RequestError("ACL support disabled", 401)
    acc = access(request)
    acc.require(acc.authz.acl_write() if write else acc.authz.acl_read())
    return acc


async def _body(request: Request) -> Json:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: body must be an object")
    return body


# -- tokens --------------------------------------------------------------------------------


async def tokens(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/tokens (``?policy=``, ``?role=`` filters)."""
    allow(request, "GET")
    acc = _enabled(request, ctx, write=False)
    acl = ctx.state.acl
    policy = request.query_params.get("policy")
    role = request.query_params.get("role")
    show = acc.authz.acl_write()
    out = [
        token_json(acl, t, show_secret=show)
        for t in sorted(acl.tokens.values(), key=lambda t: t.create_index)
        if (not policy or policy in t.policies) and (not role or role in t.roles)
    ]
    return json_response(out)


async def token_create(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/acl/token."""
    allow(request, "PUT")
    _enabled(request, ctx, write=True)
    body = await _body(request)
    token = token_from_body(ctx.state.acl, body, ctx.acl.clock(), None)
    with ctx.state.write() as txn:
        created = txn.put_acl(token)
    return json_response(token_json(ctx.state.acl, created))


def _token(ctx: Ctx, accessor: str) -> Token:
    token = ctx.state.acl.tokens.get(accessor)
    if token is None or token.expired(ctx.acl.clock()):
        raise Forbidden("ACL not found")
    return token


async def token_self(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/token/self: the token of the request."""
    allow(request, "GET")
    if not ctx.acl.enabled:
        raise RequestError("ACL support disabled", 401)
    token = ctx.acl.token_for(request_token(request))
    return json_response(token_json(ctx.state.acl, token))


async def token_item(request: Request, ctx: Ctx) -> Response:
    """GET, PUT and DELETE /v1/acl/token/:accessor."""
    allow(request, "GET", "PUT", "DELETE")
    acc = _enabled(request, ctx, write=request.method != "GET")
    acl = ctx.state.acl
    accessor = request.path_params["accessor"]
    if request.method == "GET":
        return json_response(
            token_json(acl, _token(ctx, accessor), show_secret=acc.authz.acl_write())
        )
    if request.method == "DELETE":
        token = acl.tokens.get(accessor)
        if accessor == ANONYMOUS_ACCESSOR:
            raise BadRequest("Delete operation not permitted on the anonymous token")
        if token is not None and token.secret_id == request_token(request):
            raise BadRequest("Deletion of the request's authorization token is not permitted")
        with ctx.state.write() as txn:
            txn.delete_acl("token", accessor)
        return json_response(True)
    body = await _body(request)
    old = _token(ctx, accessor)
    given = field(body, "AccessorID")
    if given and given != accessor:
        raise BadRequest("AccessorID in the body does not match the URL")
    token = token_from_body(acl, body, ctx.acl.clock(), old)
    with ctx.state.write() as txn:
        updated = txn.put_acl(token)
    return json_response(token_json(acl, updated))


async def token_clone(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/acl/token/:accessor/clone."""
    allow(request, "PUT")
    _enabled(request, ctx, write=True)
    body = await read_json(request, required=False)
    old = _token(ctx, request.path_params["accessor"])
    if old.accessor_id == ANONYMOUS_ACCESSOR:
        raise BadRequest("Cannot clone the anonymous token")
    description = field(body, "Description") if isinstance(body, dict) else None
    clone = replace(
        old,
        accessor_id=str(uuid.uuid4()),
        secret_id=str(uuid.uuid4()),
        description=description if isinstance(description, str) else old.description,
        create_time=ctx.acl.clock(),
    )
    with ctx.state.write() as txn:
        created = txn.put_acl(clone)
    return json_response(token_json(ctx.state.acl, created))


async def bootstrap(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/acl/bootstrap: the first management token, while none exists."""
    allow(request, "PUT")
    if not ctx.acl.enabled:
        raise RequestError("ACL support disabled", 401)
    acl = ctx.state.acl
    if any(MANAGEMENT_POLICY_ID in t.policies for t in acl.tokens.values()):
        raise Forbidden(
            f"Permission denied: ACL bootstrap no longer allowed (reset index: {ctx.state.index})"
        )
    body = await read_json(request, required=False)
    secret = field(body, "BootstrapSecret") if isinstance(body, dict) else None
    if secret:
        try:
            secret = str(uuid.UUID(str(secret)))
        except ValueError as exc:
            raise BadRequest("BootstrapSecret must be a UUID") from exc
        if acl.by_secret(secret) is not None:
            raise BadRequest("BootstrapSecret is already in use")
    token = Token(
        accessor_id=str(uuid.uuid4()),
        secret_id=secret or str(uuid.uuid4()),
        description="Bootstrap Token (Global Management)",
        policies=(MANAGEMENT_POLICY_ID,),
        create_time=ctx.acl.clock(),
    )
    with ctx.state.write() as txn:
        created = txn.put_acl(token)
    return json_response(token_json(acl, created))


# -- policies ------------------------------------------------------------------------------


async def policies(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/policies."""
    allow(request, "GET")
    _enabled(request, ctx, write=False)
    found = sorted(ctx.state.acl.policies.values(), key=lambda p: p.create_index)
    return json_response([policy_json(p, stub=True) for p in found])


async def policy_create(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/acl/policy."""
    allow(request, "PUT")
    _enabled(request, ctx, write=True)
    policy = policy_from_body(await _body(request), str(uuid.uuid4()))
    if ctx.state.acl.policy_by_name(policy.name) is not None:
        raise BadRequest(f"Invalid Policy: A Policy with Name {policy.name!r} already exists")
    with ctx.state.write() as txn:
        created = txn.put_acl(policy)
    return json_response(policy_json(created))


async def policy_by_name(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/policy/name/:name."""
    allow(request, "GET")
    _enabled(request, ctx, write=False)
    policy = ctx.state.acl.policy_by_name(request.path_params["name"])
    if policy is None:
        raise Forbidden("ACL not found")
    return json_response(policy_json(policy))


async def policy_item(request: Request, ctx: Ctx) -> Response:
    """GET, PUT and DELETE /v1/acl/policy/:id."""
    allow(request, "GET", "PUT", "DELETE")
    _enabled(request, ctx, write=request.method != "GET")
    acl = ctx.state.acl
    policy_id = request.path_params["id"]
    old = acl.policies.get(policy_id)
    if request.method == "DELETE":
        if policy_id == MANAGEMENT_POLICY_ID:
            raise BadRequest(
                "Delete operation not permitted on the builtin global-management policy"
            )
        with ctx.state.write() as txn:
            txn.delete_acl("policy", policy_id)
        return json_response(True)
    if old is None:
        raise Forbidden("ACL not found")
    if request.method == "GET":
        return json_response(policy_json(old))
    policy = policy_from_body(await _body(request), policy_id)
    if policy_id == MANAGEMENT_POLICY_ID and (policy.rules or policy.name != old.name):
        raise BadRequest("Changing the Rules or Name of the builtin global-management policy")
    other = acl.policy_by_name(policy.name)
    if other is not None and other.id != policy_id:
        raise BadRequest(f"Invalid Policy: A policy with name {policy.name!r} already exists")
    with ctx.state.write() as txn:
        updated = txn.put_acl(policy)
    return json_response(policy_json(updated))


# -- roles ---------------------------------------------------------------------------------


async def roles(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/roles (``?policy=``)."""
    allow(request, "GET")
    _enabled(request, ctx, write=False)
    acl = ctx.state.acl
    policy = request.query_params.get("policy")
    found = sorted(acl.roles.values(), key=lambda r: r.create_index)
    return json_response([role_json(acl, r) for r in found if not policy or policy in r.policies])


async def role_create(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/acl/role."""
    allow(request, "PUT")
    _enabled(request, ctx, write=True)
    acl = ctx.state.acl
    role = role_from_body(acl, await _body(request), str(uuid.uuid4()))
    if acl.role_by_name(role.name) is not None:
        raise BadRequest(f"Invalid Role: A Role with Name {role.name!r} already exists")
    with ctx.state.write() as txn:
        created = txn.put_acl(role)
    return json_response(role_json(acl, created))


async def role_by_name(request: Request, ctx: Ctx) -> Response:
    """GET /v1/acl/role/name/:name (Consul answers ``null`` for an unknown one)."""
    allow(request, "GET")
    _enabled(request, ctx, write=False)
    acl = ctx.state.acl
    role = acl.role_by_name(request.path_params["name"])
    return json_response(None if role is None else role_json(acl, role))


async def role_item(request: Request, ctx: Ctx) -> Response:
    """GET, PUT and DELETE /v1/acl/role/:id."""
    allow(request, "GET", "PUT", "DELETE")
    _enabled(request, ctx, write=request.method != "GET")
    acl = ctx.state.acl
    role_id = request.path_params["id"]
    old = acl.roles.get(role_id)
    if request.method == "DELETE":
        with ctx.state.write() as txn:
            txn.delete_acl("role", role_id)
        return json_response(True)
    if request.method == "GET":
        return json_response(None if old is None else role_json(acl, old))
    if old is None:
        raise NotFound(f"Cannot find role {role_id}")
    role = role_from_body(acl, await _body(request), role_id)
    other = acl.role_by_name(role.name)
    if other is not None and other.id != role_id:
        raise BadRequest(f"Invalid Role: A role with name {role.name!r} already exists")
    with ctx.state.write() as txn:
        updated = txn.put_acl(role)
    return json_response(role_json(acl, updated))


async def other(request: Request, ctx: Ctx) -> Response:
    """Any other ACL endpoint (auth methods, binding rules, login, templated policies)."""
    if not ctx.acl.enabled:
        raise RequestError("ACL support disabled", 401)
    raise BadRequest(f"{request.url.path} is not supported by this registry")


ROUTES = [
    ("/v1/acl/bootstrap", bootstrap),
    ("/v1/acl/tokens", tokens),
    ("/v1/acl/token", token_create),
    ("/v1/acl/token/self", token_self),
    ("/v1/acl/token/{accessor}/clone", token_clone),
    ("/v1/acl/token/{accessor}", token_item),
    ("/v1/acl/policies", policies),
    ("/v1/acl/policy", policy_create),
    ("/v1/acl/policy/name/{name}", policy_by_name),
    ("/v1/acl/policy/{id}", policy_item),
    ("/v1/acl/roles", roles),
    ("/v1/acl/role", role_create),
    ("/v1/acl/role/name/{name}", role_by_name),
    ("/v1/acl/role/{id}", role_item),
    ("/v1/acl/{rest:path}", other),
]
