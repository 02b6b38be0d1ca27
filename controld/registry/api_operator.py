"""/v1/operator/*: the raft, autopilot and usage views of a single-server datacenter."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import access
from controld.registry.agent import CONSUL_VERSION
from controld.registry.errors import BadRequest, RequestError
from controld.registry.http import Ctx, Handler, allow, check_dc, json_response, read_json

__all__ = ["ROUTES"]

_AUTOPILOT_DEFAULTS: dict[str, Any] = {
    "CleanupDeadServers": True,
    "LastContactThreshold": "200ms",
    "MaxTrailingLogs": 250,
    "MinQuorum": 0,
    "ServerStabilizationTime": "10s",
    "RedundancyZoneTag": "",
    "DisableUpgradeMigration": False,
    "UpgradeVersionTag": "",
    "CreateIndex": 1,
    "ModifyIndex": 1,
}


def _server(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.agent.config
    return {"ID": ctx.agent.node_id, "Node": cfg.node_name, "Address": f"{cfg.address}:8300"}


async def raft_configuration(request: Request, ctx: Ctx) -> Response:
    """GET /v1/operator/raft/configuration: this server, leader and voter."""
    allow(request, "GET")
    check_dc(request, ctx)
    server = {**_server(ctx), "Leader": True, "Voter": True, "ProtocolVersion": "3"}
    server["LastIndex"] = ctx.state.index
    return json_response({"Servers": [server], "Index": 0})


async def raft_peer(request: Request, ctx: Ctx) -> Response:
    """DELETE /v1/operator/raft/peer: the only peer is this server, which can't be removed."""
    allow(request, "DELETE")
    params = request.query_params
    if "id" in params:
        raise RequestError(f'id "{params["id"]}" was not found in the Raft configuration')
    if "address" in params:
        raise RequestError(f'address "{params["address"]}" was not found in the Raft configuration')
    raise BadRequest("Must specify either ?id with the server's ID or ?address with IP:port")


async def transfer_leader(request: Request, ctx: Ctx) -> Response:
    """POST /v1/operator/raft/transfer-leader: there is no other server to lead."""
    allow(request, "POST", "PUT")
    raise RequestError("cannot find peer to transfer leadership to")


def _autopilot(ctx: Ctx) -> dict[str, Any]:
    conf = ctx.extras.get("autopilot")
    if not isinstance(conf, dict):
        conf = ctx.extras["autopilot"] = dict(_AUTOPILOT_DEFAULTS)
    return conf


async def autopilot_configuration(request: Request, ctx: Ctx) -> Response:
    """GET/PUT /v1/operator/autopilot/configuration (``?cas=``); kept in memory."""
    allow(request, "GET", "PUT")
    check_dc(request, ctx)
    conf = _autopilot(ctx)
    if request.method == "GET":
        return json_response(conf)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: body must be an object")
    cas = request.query_params.get("cas")
    if cas is not None:
        if not cas.isdigit():
            raise BadRequest(f"Error parsing cas value: {cas!r}")
        if int(cas) != conf["ModifyIndex"]:
            return json_response(False)
    for key in _AUTOPILOT_DEFAULTS:
        if key in body and key not in ("CreateIndex", "ModifyIndex"):
            conf[key] = body[key]
    conf["ModifyIndex"] = max(conf["ModifyIndex"] + 1, ctx.state.index)
    return json_response(True)


async def autopilot_health(request: Request, ctx: Ctx) -> Response:
    """GET /v1/operator/autopilot/health: one healthy leader."""
    allow(request, "GET")
    check_dc(request, ctx)
    server = {
        **_server(ctx),
        "Name": ctx.agent.config.node_name,
        "SerfStatus": "alive",
        "Version": CONSUL_VERSION,
        "Leader": True,
        "LastContact": "0s",
        "LastTerm": 1,
        "LastIndex": ctx.state.index,
        "Healthy": True,
        "Voter": True,
        "StableSince": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    del server["Node"]
    return json_response({"Healthy": True, "FailureTolerance": 0, "Servers": [server]})


async def keyring(request: Request, ctx: Ctx) -> Response:
    """/v1/operator/keyring: gossip encryption is not used here."""
    allow(request, "GET", "POST", "PUT", "DELETE")
    raise RequestError("keyring operations are unavailable: gossip encryption is not enabled")


async def usage(request: Request, ctx: Ctx) -> Response:
    """GET /v1/operator/usage: services, instances and nodes of this datacenter."""
    allow(request, "GET")
    st = ctx.state
    instances = [s for by_id in st.services.values() for s in by_id.values()]
    proxies = sum(1 for s in instances if s.kind == "connect-proxy")
    dc_usage = {
        "Services": len(st.service_count),
        "ServiceInstances": len(instances),
        "ConnectServiceInstances": {"connect-native": 0, "connect-proxy": proxies},
        "BillableServiceInstances": len(instances) - proxies,
        "Nodes": len(st.nodes),
    }
    return json_response(
        {
            "Usage": {ctx.datacenter: dc_usage},
            "Index": st.index,
            "LastContact": 0,
            "KnownLeader": True,
            "ConsistencyLevel": "leader",
            "NotModified": False,
            "Backend": 0,
            "ResultsFilteredByACLs": False,
        },
        headers={"X-Consul-Index": str(st.index), "X-Consul-KnownLeader": "true"},
    )


def _guarded(handler: Handler) -> Handler:
    """operator (keyring for the keyring) read for GET, write otherwise."""

    async def guarded(request: Request, ctx: Ctx) -> Response:
        authz = access(request).authz
        write = request.method != "GET"
        if request.url.path.startswith("/v1/operator/keyring"):
            allowed = authz.keyring_write() if write else authz.keyring_read()
        else:
            allowed = authz.operator_write() if write else authz.operator_read()
        access(request).require(allowed)
        return await handler(request, ctx)

    guarded.__name__ = handler.__name__
    return guarded


ROUTES = [
    ("/v1/operator/raft/configuration", _guarded(raft_configuration)),
    ("/v1/operator/raft/peer", _guarded(raft_peer)),
    ("/v1/operator/raft/transfer-leader", _guarded(transfer_leader)),
    ("/v1/operator/autopilot/configuration", _guarded(autopilot_configuration)),
    ("/v1/operator/autopilot/health", _guarded(autopilot_health)),
    ("/v1/operator/keyring", _guarded(keyring)),
    ("/v1/operator/usage", _guarded(usage)),
]
