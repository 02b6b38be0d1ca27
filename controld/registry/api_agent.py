"""/v1/agent/* endpoints: the registry as the agent of its own node."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import access, filtered_headers
from controld.registry.agent import CONSUL_VERSION
from controld.registry.agent_acl import (
    check_readable,
    require_agent,
    require_check_register,
    require_check_write,
    require_service_write,
)
from controld.registry.api_agent_health import health_by_id, health_by_name
from controld.registry.errors import BadRequest, NotFound, RequestError
from controld.registry.http import Ctx, allow, json_response, query_opts, read_json
from controld.registry.render import agent_service_json, check_json

__all__ = ["ROUTES"]

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_LOG_LEVELS = {"trace", "debug", "info", "warn", "err", "error", "warning"}


def _parse_bool(value: str | None, name: str) -> bool:
    if value is None or value == "":
        raise BadRequest(f"Missing value for {name}")
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"Invalid value for {name}: '{value}'")


def _member(ctx: Ctx, wan: bool = False) -> dict[str, Any]:
    cfg = ctx.agent.config
    return {
        "Name": f"{cfg.node_name}.{cfg.datacenter}" if wan else cfg.node_name,
        "Addr": cfg.address,
        "Port": 8302 if wan else 8301,
        "Tags": {
            "build": f"{CONSUL_VERSION}:meshd",
            "dc": cfg.datacenter,
            "id": ctx.agent.node_id,
            "port": "8300",
            "role": "consul",
            "segment": "",
            "vsn": "2",
            "vsn_max": "3",
            "vsn_min": "2",
        },
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


async def self_(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/self."""
    allow(request, "GET")
    require_agent(request, ctx, write=False)
    cfg = ctx.agent.config
    leader = f"{cfg.address}:8300"
    config = {
        "Datacenter": cfg.datacenter,
        "PrimaryDatacenter": cfg.datacenter,
        "NodeName": cfg.node_name,
        "NodeID": ctx.agent.node_id,
        "Revision": "meshd",
        "Server": True,
        "Version": CONSUL_VERSION,
        "BuildDate": "2025-01-01T00:00:00Z",
    }
    return json_response(
        {
            "Config": config,
            "DebugConfig": {**config, "ClientAddrs": [cfg.address], "HTTPPort": cfg.port},
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": _member(ctx),
            "Stats": {
                "agent": {
                    "checks": str(len(ctx.agent.local_checks())),
                    "services": str(len(ctx.agent.local_services())),
                },
                "consul": {
                    "bootstrap": "true",
                    "known_datacenters": "1",
                    "leader": "true",
                    "leader_addr": leader,
                    "server": "true",
                },
                "raft": {"applied_index": str(ctx.state.index), "state": "Leader"},
            },
            "Meta": {"consul-network-segment": "", "consul-version": CONSUL_VERSION},
            "xDS": {
                "SupportedProxies": {"envoy": []},
                "Port": -1,
                "Ports": {"Plaintext": -1, "TLS": -1},
            },
        }
    )


async def members(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/members (``?wan=1`` for the WAN pool)."""
    allow(request, "GET")
    wan = request.query_params.get("wan", "") not in ("", "0", "false")
    acc = access(request)
    members = [_member(ctx, wan)] if acc.visible(acc.authz.node_read(ctx.agent.node)) else []
    return json_response(members, headers=filtered_headers(acc))


async def services(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/services."""
    allow(request, "GET")
    opts = query_opts(request)
    acc = access(request)
    out = {}
    for svc in ctx.agent.local_services():
        if not acc.visible(acc.authz.service_read(svc.name)):
            continue
        entry = agent_service_json(svc, ctx.datacenter)
        if opts.filter is None or opts.filter(entry):
            out[svc.id] = entry
    return json_response(out, headers=filtered_headers(acc))


async def service(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/service/:id (with ``ContentHash``)."""
    allow(request, "GET")
    sid = request.path_params["id"]
    svc = ctx.agent.local_service(sid)
    if svc is None:
        raise NotFound(f"unknown service ID: {sid}")
    access(request).require(access(request).authz.service_read(svc.name))
    entry = agent_service_json(svc, ctx.datacenter)
    digest = hashlib.blake2b(json.dumps(entry, sort_keys=True).encode(), digest_size=8)
    entry["ContentHash"] = digest.hexdigest()
    return json_response(entry, headers={"X-Consul-ContentHash": entry["ContentHash"]})


async def checks(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/checks."""
    allow(request, "GET")
    opts = query_opts(request)
    acc = access(request)
    out = {}
    for check in ctx.agent.local_checks():
        if not acc.visible(check_readable(acc.authz, check)):
            continue
        entry = check_json(check)
        if opts.filter is None or opts.filter(entry):
            out[check.check_id] = entry
    return json_response(out, headers=filtered_headers(acc))


async def service_register(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/service/register (``?replace-existing-checks``)."""
    allow(request, "PUT")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: body must be an object")
    replace_checks = request.query_params.get("replace-existing-checks", "")
    ctx.agent.register_service(
        body,
        replace_existing_checks=replace_checks.lower() in ("true", "1", "t"),
        authz=access(request).authz,
    )
    return Response(b"", status_code=200)


async def service_deregister(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/service/deregister/:id."""
    allow(request, "PUT")
    require_service_write(request, ctx, request.path_params["id"])
    ctx.agent.deregister_service(request.path_params["id"])
    return Response(b"", status_code=200)


async def service_maintenance(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/service/maintenance/:id?enable=&reason=."""
    allow(request, "PUT")
    enable = _parse_bool(request.query_params.get("enable"), "enable")
    reason = request.query_params.get("reason", "")
    require_service_write(request, ctx, request.path_params["id"])
    ctx.agent.service_maintenance(request.path_params["id"], enable, reason)
    return Response(b"", status_code=200)


async def node_maintenance(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/maintenance?enable=&reason=."""
    allow(request, "PUT")
    enable = _parse_bool(request.query_params.get("enable"), "enable")
    access(request).require(access(request).authz.node_write(ctx.agent.node))
    ctx.agent.node_maintenance(enable, request.query_params.get("reason", ""))
    return Response(b"", status_code=200)


async def check_register(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/check/register."""
    allow(request, "PUT")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: body must be an object")
    require_check_register(request, ctx, body)
    ctx.agent.register_check(body)
    return Response(b"", status_code=200)


async def check_deregister(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/check/deregister/:id."""
    allow(request, "PUT")
    require_check_write(request, ctx, request.path_params["id"])
    ctx.agent.deregister_check(request.path_params["id"])
    return Response(b"", status_code=200)


def _ttl_handler(status: str) -> Any:
    async def handler(request: Request, ctx: Ctx) -> Response:
        allow(request, "PUT")
        note = request.query_params.get("note", "")
        require_check_write(request, ctx, request.path_params["id"])
        ctx.agent.update_ttl(request.path_params["id"], status, note)
        return Response(b"", status_code=200)

    handler.__doc__ = f"PUT /v1/agent/check/{status}/:id?note=: the TTL check turns {status}."
    return handler


async def check_update(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/check/update/:id with ``{"Status": ..., "Output": ...}``."""
    allow(request, "PUT")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: body must be an object")
    status = body.get("Status")
    if status not in ("passing", "warning", "critical"):
        raise BadRequest(f"Invalid check status: '{status}'")
    output = body.get("Output") or ""
    require_check_write(request, ctx, request.path_params["id"])
    ctx.agent.update_ttl(request.path_params["id"], status, str(output))
    return Response(b"", status_code=200)


async def reload(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/reload: nothing to reload."""
    allow(request, "PUT")
    require_agent(request, ctx, write=True)
    return Response(b"", status_code=200)


async def leave(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/leave: answer, then shut the registry down gracefully."""
    allow(request, "PUT")
    require_agent(request, ctx, write=True)
    if ctx.on_leave is not None:
        ctx.on_leave()
    return Response(b"", status_code=200)


async def force_leave(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/force-leave/:node: no gossip pool here, accepted as a no-op."""
    allow(request, "PUT")
    access(request).require(access(request).authz.operator_write())
    return Response(b"", status_code=200)


async def metrics(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/metrics (JSON, or an empty Prometheus body as Consul without retention)."""
    allow(request, "GET")
    require_agent(request, ctx, write=False)
    if request.query_params.get("format") == "prometheus":
        return Response(b"", status_code=200, media_type="text/plain")
    now = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime())
    gauges = [
        {"Name": "consul.raft.applied_index", "Value": ctx.state.index, "Labels": {}},
        {"Name": "consul.catalog.services", "Value": len(ctx.state.service_count), "Labels": {}},
    ]
    return json_response(
        {"Timestamp": now, "Gauges": gauges, "Points": [], "Counters": [], "Samples": []}
    )


async def monitor(request: Request, ctx: Ctx) -> Response:
    """GET /v1/agent/monitor: log streaming is not offered; bad levels get Consul's 400."""
    allow(request, "GET")
    require_agent(request, ctx, write=False)
    level = request.query_params.get("loglevel", "info")
    if level.lower() not in _LOG_LEVELS:
        raise BadRequest(f"Unknown log level: {level}")
    return Response(b"", status_code=200, media_type="text/plain")


async def token(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/agent/token/:type: 401 without ACLs, accepted (not stored) with them."""
    allow(request, "PUT")
    if not ctx.acl.enabled:
        raise RequestError("ACL support disabled", 401)
    require_agent(request, ctx, write=True)
    if request.path_params["type"] not in (
        "default",
        "agent",
        "agent_recovery",
        "agent_master",
        "replication",
        "config_file_service_registration",
        "acl_token",
        "acl_agent_token",
    ):
        raise NotFound(f"Token {request.path_params['type']!r} is unknown")
    await read_json(request)
    return Response(b"", status_code=200)


ROUTES = [
    ("/v1/agent/self", self_),
    ("/v1/agent/members", members),
    ("/v1/agent/services", services),
    ("/v1/agent/service/register", service_register),
    ("/v1/agent/service/deregister/{id:path}", service_deregister),
    ("/v1/agent/service/maintenance/{id:path}", service_maintenance),
    ("/v1/agent/service/{id:path}", service),
    ("/v1/agent/checks", checks),
    ("/v1/agent/check/register", check_register),
    ("/v1/agent/check/deregister/{id:path}", check_deregister),
    ("/v1/agent/check/pass/{id:path}", _ttl_handler("passing")),
    ("/v1/agent/check/warn/{id:path}", _ttl_handler("warning")),
    ("/v1/agent/check/fail/{id:path}", _ttl_handler("critical")),
    ("/v1/agent/check/update/{id:path}", check_update),
    ("/v1/agent/health/service/id/{id:path}", health_by_id),
    ("/v1/agent/health/service/name/{name:path}", health_by_name),
    ("/v1/agent/maintenance", node_maintenance),
    ("/v1/agent/reload", reload),
    ("/v1/agent/leave", leave),
    ("/v1/agent/force-leave/{node:path}", force_leave),
    ("/v1/agent/metrics", metrics),
    ("/v1/agent/monitor", monitor),
    ("/v1/agent/token/{type}", token),
]
