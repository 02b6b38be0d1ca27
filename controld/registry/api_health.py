"""/v1/health/* endpoints."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import Access, access
from controld.registry.acl_authz import instance_visible
from controld.registry.errors import BadRequest
from controld.registry.http import Ctx, QueryOpts, allow, blocking_read, node_meta_filter
from controld.registry.model import PASSING, Check, Service
from controld.registry.render import check_json, node_json, service_json
from controld.registry.state import State

__all__ = ["ROUTES", "aggregate_status", "entry_checks"]

_RANK = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


def aggregate_status(checks: list[Check]) -> str:
    """Consul's aggregation: maintenance > critical > warning > passing."""
    worst = PASSING
    for check in checks:
        status = "maintenance" if check.type == "maintenance" else check.status
        if _RANK.get(status, 2) > _RANK[worst]:
            worst = status
    return worst


def entry_checks(st: State, svc: Service) -> list[Check]:
    """The node's own checks, then the instance's checks, each by check ID (Consul's order)."""
    on_node = st.checks.get(svc.node, {})
    node_level = sorted((c for c in on_node.values() if not c.service_id), key=lambda c: c.check_id)
    own = sorted((c for c in on_node.values() if c.service_id == svc.id), key=lambda c: c.check_id)
    return node_level + own


def _flag(request: Request, name: str) -> bool:
    if name not in request.query_params:
        return False
    value = request.query_params[name].lower()
    return value not in ("0", "false")


def _service_entries(request: Request, ctx: Ctx, connect: bool) -> Any:
    st = ctx.state
    name = request.path_params["name"]
    wanted_tags = request.query_params.getlist("tag")
    passing = _flag(request, "passing")
    peer = request.query_params.get("peer")
    meta = node_meta_filter(request)
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        out = []
        instances = st.connect_instances(name) if connect else st.service_instances(name)
        for svc in [] if peer else instances:
            if wanted_tags and not all(t in svc.tags for t in wanted_tags):
                continue
            node = st.nodes.get(svc.node)
            if node is None or not acc.visible(instance_visible(acc.authz, svc)):
                continue
            if meta and not all(node.meta.get(k) == v for k, v in meta):
                continue
            checks = entry_checks(st, svc)
            if passing and any(c.status != PASSING for c in checks):
                continue
            entry = {
                "Node": node_json(node, ctx.datacenter),
                "Service": service_json(svc),
                "Checks": [check_json(c) for c in checks],
            }
            if opts.filter and not opts.filter(entry):
                continue
            out.append(entry)
        return st.service_index(name, checks=True), out, 200

    return compute


async def service(request: Request, ctx: Ctx) -> Response:
    """GET /v1/health/service/:name (``passing``, repeated ``tag``, ``node-meta``, ``filter``)."""
    allow(request, "GET")
    name = request.path_params["name"]
    return await blocking_read(
        request, ctx, "service." + name, _service_entries(request, ctx, False)
    )


async def connect(request: Request, ctx: Ctx) -> Response:
    """GET /v1/health/connect/:name: health of the proxies of a service."""
    allow(request, "GET")
    return await blocking_read(request, ctx, "catalog", _service_entries(request, ctx, True))


async def ingress(request: Request, ctx: Ctx) -> Response:
    """GET /v1/health/ingress/:name: ingress gateways are not modelled, always empty."""
    allow(request, "GET")
    return await blocking_read(
        request, ctx, "catalog", lambda opts: (ctx.state.table_index("services", "checks"), [], 200)
    )


def _check_visible(acc: Access, check: Check) -> bool:
    authz = acc.authz
    if check.service_id and not authz.service_read(check.service_name):
        return acc.visible(False)
    return acc.visible(authz.node_read(check.node))


def _checks_read(request: Request, ctx: Ctx, select: Any) -> Any:
    st = ctx.state
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        found = [
            c
            for by_id in st.checks.values()
            for c in by_id.values()
            if select(c) and _check_visible(acc, c)
        ]
        found.sort(key=lambda c: (c.node.lower(), c.check_id))
        out = [check_json(c) for c in found]
        if opts.filter:
            out = [o for o in out if opts.filter(o)]
        return st.table_index("checks"), out, 200

    return compute


async def checks(request: Request, ctx: Ctx) -> Response:
    """GET /v1/health/checks/:service."""
    allow(request, "GET")
    name = request.path_params["name"]
    return await blocking_read(
        request, ctx, "checks", _checks_read(request, ctx, lambda c: c.service_name == name)
    )


async def state(request: Request, ctx: Ctx) -> Response:
    """GET /v1/health/state/:state (``any``, ``passing``, ``warning``, ``critical``)."""
    allow(request, "GET")
    wanted = request.path_params["state"]
    if wanted not in ("any", "passing", "warning", "critical"):
        raise BadRequest("Bad check state")
    return await blocking_read(
        request, ctx, "checks", _checks_read(request, ctx, lambda c: wanted in ("any", c.status))
    )


async def node(request: Request, ctx: Ctx) -> Response:
    """GET /v1/health/node/:node."""
    allow(request, "GET")
    name = request.path_params["node"]
    return await blocking_read(
        request, ctx, "checks", _checks_read(request, ctx, lambda c: c.node == name)
    )


ROUTES = [
    ("/v1/health/service/{name:path}", service),
    ("/v1/health/connect/{name:path}", connect),
    ("/v1/health/ingress/{name:path}", ingress),
    ("/v1/health/checks/{name:path}", checks),
    ("/v1/health/state/{state}", state),
    ("/v1/health/node/{node:path}", node),
]
