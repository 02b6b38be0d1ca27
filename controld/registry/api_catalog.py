"""/v1/catalog/* endpoints."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import access
from controld.registry.acl_authz import instance_visible
from controld.registry.catalog_ops import catalog_deregister, catalog_register
from controld.registry.errors import BadRequest
from controld.registry.http import (
    Ctx,
    QueryOpts,
    allow,
    blocking_read,
    check_dc,
    json_response,
    node_meta_filter,
    read_json,
)
from controld.registry.render import catalog_service_json, node_json, service_json

__all__ = ["ROUTES"]


async def register(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/catalog/register."""
    allow(request, "PUT")
    check_dc(request, ctx)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: body must be an object")
    catalog_register(ctx.state, body, ctx.datacenter, access(request).authz)
    return json_response(True)


async def deregister(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/catalog/deregister."""
    allow(request, "PUT")
    check_dc(request, ctx)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("Request decode failed: body must be an object")
    catalog_deregister(ctx.state, body, ctx.datacenter, access(request).authz)
    return json_response(True)


async def datacenters(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/datacenters."""
    allow(request, "GET")
    return json_response([ctx.datacenter])


async def nodes(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/nodes."""
    allow(request, "GET")
    st = ctx.state
    meta = node_meta_filter(request)
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        out = [
            node_json(n, ctx.datacenter)
            for n in sorted(st.nodes.values(), key=lambda n: n.name.lower())
            if all(n.meta.get(k) == v for k, v in meta) and acc.visible(acc.authz.node_read(n.name))
        ]
        if opts.filter:
            out = [o for o in out if opts.filter(o)]
        return st.table_index("nodes", "services"), out, 200

    return await blocking_read(request, ctx, "catalog", compute)


async def services(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/services: service name -> union of its tags."""
    allow(request, "GET")
    st = ctx.state
    meta = node_meta_filter(request)
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        tags: dict[str, set[str]] = {}
        for node_name, by_id in st.services.items():
            node = st.nodes.get(node_name)
            if meta and (node is None or not all(node.meta.get(k) == v for k, v in meta)):
                continue
            for svc in by_id.values():
                if not acc.visible(acc.authz.service_read(svc.name)):
                    continue
                if opts.filter and not opts.filter(catalog_service_json(svc, node, ctx.datacenter)):
                    continue
                tags.setdefault(svc.name, set()).update(svc.tags)
        out = {name: sorted(t) for name, t in sorted(tags.items())}
        return st.table_index("services"), out, 200

    return await blocking_read(request, ctx, "services", compute)


def _service_nodes(request: Request, ctx: Ctx, connect: bool) -> Any:
    st = ctx.state
    name = request.path_params["name"]
    wanted_tags = request.query_params.getlist("tag")
    meta = node_meta_filter(request)
    peer = request.query_params.get("peer")
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        out = []
        if not peer:
            instances = st.connect_instances(name) if connect else st.service_instances(name)
            for svc in instances:
                if wanted_tags and not all(t in svc.tags for t in wanted_tags):
                    continue
                if not acc.visible(instance_visible(acc.authz, svc)):
                    continue
                node = st.nodes.get(svc.node)
                if meta and (node is None or not all(node.meta.get(k) == v for k, v in meta)):
                    continue
                entry = catalog_service_json(svc, node, ctx.datacenter)
                if opts.filter and not opts.filter(entry):
                    continue
                out.append(entry)
        return st.service_index(name, checks=False), out, 200

    return compute


async def service(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/service/:name (``tag`` repeatable, ``node-meta``, ``filter``)."""
    allow(request, "GET")
    name = request.path_params["name"]
    return await blocking_read(request, ctx, "service." + name, _service_nodes(request, ctx, False))


async def connect(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/connect/:name: the connect-capable instances (proxies) of a service."""
    allow(request, "GET")
    return await blocking_read(request, ctx, "services", _service_nodes(request, ctx, True))


def _node_read(request: Request, ctx: Ctx, as_map: bool) -> Any:
    """The node and its services (by ID), as a map keyed by service ID or as a list."""
    st = ctx.state
    name = request.path_params["node"]
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        idx = st.table_index("nodes", "services")
        n = st.nodes.get(name)
        if n is None or not acc.visible(acc.authz.node_read(name)):
            return idx, None if as_map else {"Node": None, "Services": []}, 200
        entries = [
            service_json(s)
            for s in sorted(st.services.get(name, {}).values(), key=lambda s: s.id)
            if acc.visible(acc.authz.service_read(s.name))
        ]
        if opts.filter:
            entries = [e for e in entries if opts.filter(e)]
        svcs = {e["ID"]: e for e in entries} if as_map else entries
        return idx, {"Node": node_json(n, ctx.datacenter), "Services": svcs}, 200

    return compute


async def node(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/node/:node: the node and its services (``null`` if unknown)."""
    allow(request, "GET")
    return await blocking_read(request, ctx, "catalog", _node_read(request, ctx, True))


async def node_services(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/node-services/:node: the node and a list of its services."""
    allow(request, "GET")
    return await blocking_read(request, ctx, "catalog", _node_read(request, ctx, False))


async def gateway_services(request: Request, ctx: Ctx) -> Response:
    """GET /v1/catalog/gateway-services/:name: gateways are not modelled, always empty."""
    allow(request, "GET")
    return await blocking_read(
        request, ctx, "services", lambda opts: (ctx.state.table_index("services"), [], 200)
    )


ROUTES = [
    ("/v1/catalog/register", register),
    ("/v1/catalog/deregister", deregister),
    ("/v1/catalog/datacenters", datacenters),
    ("/v1/catalog/nodes", nodes),
    ("/v1/catalog/services", services),
    ("/v1/catalog/service/{name:path}", service),
    ("/v1/catalog/connect/{name:path}", connect),
    ("/v1/catalog/node/{node:path}", node),
    ("/v1/catalog/node-services/{node:path}", node_services),
    ("/v1/catalog/gateway-services/{name:path}", gateway_services),
]
