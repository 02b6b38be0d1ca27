"""/v1/status/* endpoints: this registry is the single raft peer and leader of its datacenter."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.http import Ctx, allow, check_dc, json_response

__all__ = ["ROUTES"]


async def leader(request: Request, ctx: Ctx) -> Response:
    """GET /v1/status/leader: this server, as ``"host:8300"``."""
    allow(request, "GET")
    check_dc(request, ctx)
    return json_response(_server_addr(ctx))


async def peers(request: Request, ctx: Ctx) -> Response:
    """GET /v1/status/peers: just this server."""
    allow(request, "GET")
    check_dc(request, ctx)
    return json_response([_server_addr(ctx)])


def _server_addr(ctx: Ctx) -> str:
    return f"{ctx.agent.config.address}:8300"


ROUTES = [
    ("/v1/status/leader", leader),
    ("/v1/status/peers", peers),
]
