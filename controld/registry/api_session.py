"""/v1/session/* endpoints."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import access
from controld.registry.http import (
    Ctx,
    QueryOpts,
    allow,
    blocking_read,
    check_dc,
    json_response,
    read_json,
)
from controld.registry.render import session_json

__all__ = ["ROUTES"]


async def create(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/session/create -> ``{"ID": ...}``."""
    allow(request, "PUT")
    check_dc(request, ctx)
    body = await read_json(request, required=False)
    body = body if isinstance(body, dict) else {}
    node = str(body.get("Node") or ctx.agent.node)
    access(request).require(access(request).authz.session_write(node))
    return json_response({"ID": ctx.sessions.create(body)})


def _require_write(request: Request, ctx: Ctx) -> None:
    session = ctx.state.sessions.get(request.path_params["id"])
    if session is not None:
        access(request).require(access(request).authz.session_write(session.node))


async def destroy(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/session/destroy/:id."""
    allow(request, "PUT")
    check_dc(request, ctx)
    _require_write(request, ctx)
    ctx.sessions.destroy(request.path_params["id"])
    return json_response(True)


async def renew(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/session/renew/:id -> a one-element list with the session."""
    allow(request, "PUT")
    check_dc(request, ctx)
    _require_write(request, ctx)
    session = ctx.sessions.renew(request.path_params["id"])
    return json_response([session_json(session)])


def _list(request: Request, ctx: Ctx, select: Any) -> Any:
    st = ctx.state
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        out = [
            session_json(s)
            for s in sorted(st.sessions.values(), key=lambda s: s.id)
            if select(s) and acc.visible(acc.authz.session_read(s.node))
        ]
        if opts.filter:
            out = [o for o in out if opts.filter(o)]
        return st.table_index("sessions"), out, 200

    return compute


async def info(request: Request, ctx: Ctx) -> Response:
    """GET /v1/session/info/:id -> a list with the session, or ``[]``."""
    allow(request, "GET")
    sid = request.path_params["id"]
    return await blocking_read(request, ctx, "sessions", _list(request, ctx, lambda s: s.id == sid))


async def node(request: Request, ctx: Ctx) -> Response:
    """GET /v1/session/node/:node."""
    allow(request, "GET")
    name = request.path_params["node"]
    return await blocking_read(
        request, ctx, "sessions", _list(request, ctx, lambda s: s.node == name)
    )


async def list_all(request: Request, ctx: Ctx) -> Response:
    """GET /v1/session/list."""
    allow(request, "GET")
    return await blocking_read(request, ctx, "sessions", _list(request, ctx, lambda s: True))


ROUTES = [
    ("/v1/session/create", create),
    ("/v1/session/destroy/{id}", destroy),
    ("/v1/session/renew/{id}", renew),
    ("/v1/session/info/{id}", info),
    ("/v1/session/node/{node:path}", node),
    ("/v1/session/list", list_all),
]
