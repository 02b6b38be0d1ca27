"""/v1/agent/health/service/*: the aggregated health of the agent's local service instances
(200 passing, 429 warning, 503 critical or in maintenance, 404 unknown), as Consul answers."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import access
from controld.registry.api_health import aggregate_status
from controld.registry.http import Ctx, allow, json_response
from controld.registry.render import agent_service_json, check_json

__all__ = ["health_by_id", "health_by_name"]


_HEALTH_CODES = {"passing": 200, "warning": 429, "critical": 503, "maintenance": 503}


def _health_info(ctx: Ctx, svc_ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for sid in svc_ids:
        svc = ctx.agent.local_service(sid)
        if svc is None:
            continue
        node_checks = ctx.state.checks.get(ctx.agent.node, {})
        svc_checks = [
            c for c in node_checks.values() if c.service_id == sid or (not c.service_id and c.local)
        ]
        out.append(
            {
                "AggregatedStatus": aggregate_status(svc_checks),
                "Service": agent_service_json(svc, ctx.datacenter),
                "Checks": [check_json(c) for c in sorted(svc_checks, key=lambda c: c.check_id)],
            }
        )
    return out


async def health_by_id(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/health/service/id/:id: aggregated status (200/429/503, 404 unknown)."""
    allow(request, "GET")
    sid = request.path_params["id"]
    svc = ctx.agent.local_service(sid)
    if svc is not None:
        access(request).require(access(request).authz.service_read(svc.name))
    infos = _health_info(ctx, [sid])
    text = "format" in request.query_params and request.query_params["format"] == "text"
    if not infos:
        msg = f"ServiceId {sid} not found"
        return Response(msg.encode(), status_code=404, media_type="text/plain")
    info = infos[0]
    code = _HEALTH_CODES[info["AggregatedStatus"]]
    if text:
        return Response(
            info["AggregatedStatus"].encode(), status_code=code, media_type="text/plain"
        )
    return json_response(info, status=code)


async def health_by_name(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/health/service/name/:name: every local instance, worst status wins."""
    allow(request, "GET")
    name = request.path_params["name"]
    access(request).require(access(request).authz.service_read(name))
    ids = [s.id for s in ctx.agent.local_services() if s.name == name]
    infos = _health_info(ctx, ids)
    text = request.query_params.get("format") == "text"
    if not infos:
        msg = f"ServiceName {name} Not Found"
        return Response(msg.encode(), status_code=404, media_type="text/plain")
    rank = ["passing", "warning", "critical", "maintenance"]
    worst = max((i["AggregatedStatus"] for i in infos), key=rank.index)
    code = _HEALTH_CODES[worst]
    if text:
        return Response(worst.encode(), status_code=code, media_type="text/plain")
    return json_response(infos, status=code)
