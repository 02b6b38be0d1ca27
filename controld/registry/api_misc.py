"""Smaller endpoints clients touch: /v1/txn (KV verbs), /v1/event, /v1/coordinate, ACL stubs."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import Access, access
from controld.registry.errors import BadRequest, RequestError
from controld.registry.http import (
    Ctx,
    QueryOpts,
    allow,
    blocking_read,
    check_dc,
    json_response,
    read_body,
    read_json,
)
from controld.registry.kv_ops import kv_delete, kv_put
from controld.registry.render import kv_json

__all__ = ["ROUTES"]

MAX_TXN_OPS = 128  # Consul's txn_max_req_len limit on operations


_READ_VERBS = frozenset({"get", "check-index", "check-session", "check-not-exists"})


def _txn_allowed(acc: Access, op: dict[str, Any]) -> bool:
    """Whether the token may run this KV operation (checked for all before running any)."""
    verb = op.get("Verb", "")
    key = str(op.get("Key", ""))
    if verb in _READ_VERBS:
        return acc.authz.key_read(key)
    if verb == "get-tree":
        return True  # filtered to the readable keys
    if verb == "delete-tree":
        return acc.authz.key_write_prefix(key)
    return acc.authz.key_write(key)


def _txn_kv(ctx: Ctx, acc: Access, op: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Run one KV verb; returns (result, error)."""
    st = ctx.state
    verb = op.get("Verb", "")
    key = op.get("Key", "")
    raw = op.get("Value")
    try:
        value = base64.b64decode(raw) if raw else None
    except ValueError:
        return None, "failed to decode value"
    flags = int(op.get("Flags") or 0)
    index = int(op.get("Index") or 0)
    session = op.get("Session") or ""
    entry = st.kv.get(key)
    if verb == "set":
        kv_put(st, key, value, flags=flags)
    elif verb == "cas":
        if not kv_put(st, key, value, flags=flags, cas=index):
            return None, f'failed to set key "{key}", index is stale'
    elif verb == "lock":
        if not kv_put(st, key, value, flags=flags, acquire=session):
            return None, f'failed to lock key "{key}", lock is already held'
    elif verb == "unlock":
        if not kv_put(st, key, value, flags=flags, release=session):
            return (
                None,
                f'failed to unlock key "{key}", lock isn\'t held, or is held by another session',
            )
    elif verb in ("get", "check-index", "check-session", "check-not-exists"):
        if verb == "check-not-exists":
            return (None, f'key "{key}" exists') if entry else (None, None)
        if entry is None:
            return None, f'key "{key}" doesn\'t exist'
        if verb == "check-index" and entry.modify_index != index:
            return None, f"current modify index {entry.modify_index} != {index}"
        if verb == "check-session" and entry.session != session:
            return None, f'lock not held for key "{key}"'
    elif verb == "get-tree":
        authz = acc.authz
        keys = [k for k in st.keys_with_prefix(key) if acc.visible(authz.key_read(k))]
        return {"KV": [kv_json(st.kv[k]) for k in keys]}, None
    elif verb == "delete":
        kv_delete(st, key)
        return None, None
    elif verb == "delete-tree":
        kv_delete(st, key, recurse=True)
        return None, None
    elif verb in ("delete-cas",):
        if not kv_delete(st, key, cas=index):
            return None, f'failed to delete key "{key}", index is stale'
        return None, None
    else:
        return None, f'unknown KV verb "{verb}"'
    entry = st.kv.get(key)
    if entry is None:
        return None, None
    return {"KV": kv_json(entry)}, None


async def txn(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/txn: KV operations run in order; errors reported per operation (not atomic)."""
    allow(request, "PUT")
    check_dc(request, ctx)
    ops = await read_json(request)
    if not isinstance(ops, list):
        raise BadRequest("Failed to parse body: expected a list of operations")
    if len(ops) > MAX_TXN_OPS:
        raise RequestError(
            f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})", 413
        )
    acc = access(request)
    denied = [
        {"OpIndex": i, "What": "Permission denied"}
        for i, op in enumerate(ops)
        if isinstance(op, dict)
        and isinstance(op.get("KV"), dict)
        and not _txn_allowed(acc, op["KV"])
    ]
    if denied:
        # Like Consul's pre-check: one denied operation and none of them runs.
        return json_response({"Results": None, "Errors": denied}, status=409)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        if not isinstance(op, dict) or not isinstance(op.get("KV"), dict):
            errors.append({"OpIndex": i, "What": "only KV operations are supported"})
            continue
        result, error = _txn_kv(ctx, acc, op["KV"])
        if error:
            errors.append({"OpIndex": i, "What": error})
        elif result is not None:
            if isinstance(result.get("KV"), list):
                results.extend({"KV": e} for e in result["KV"])
            else:
                results.append(result)
    if errors:
        return json_response({"Results": None, "Errors": errors}, status=409)
    return json_response({"Results": results or None, "Errors": None})


class _Events:
    """The agent's in-memory user event buffer (Consul keeps the last 256)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.ltime = 0


async def event_fire(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/event/fire/:name."""
    allow(request, "PUT")
    check_dc(request, ctx)
    access(request).require(access(request).authz.event_write(request.path_params["name"]))
    events = _buffer(ctx)
    payload = await read_body(request, 100 * 1024)
    events.ltime += 1
    params = request.query_params
    event = {
        "ID": str(uuid.uuid4()),
        "Name": request.path_params["name"],
        "Payload": base64.b64encode(payload).decode() if payload else None,
        "NodeFilter": params.get("node", ""),
        "ServiceFilter": params.get("service", ""),
        "TagFilter": params.get("tag", ""),
        "Version": 1,
        "LTime": events.ltime,
    }
    events.items = [*events.items[-255:], event]
    ctx.state.hub.fire(["events"])
    return json_response(event)


def _buffer(ctx: Ctx) -> _Events:
    events = ctx.extras.get("events")
    if not isinstance(events, _Events):
        events = ctx.extras["events"] = _Events()
    return events


async def event_list(request: Request, ctx: Ctx) -> Response:
    """GET /v1/event/list?name=."""
    allow(request, "GET")
    name = request.query_params.get("name", "")
    events = _buffer(ctx)
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        out = [
            e
            for e in events.items
            if (not name or e["Name"] == name) and acc.visible(acc.authz.event_read(e["Name"]))
        ]
        return max(1, events.ltime), out, 200

    return await blocking_read(request, ctx, "events", compute)


async def coordinate_datacenters(request: Request, ctx: Ctx) -> Response:
    """GET /v1/coordinate/datacenters."""
    allow(request, "GET")
    coord = {"Node": ctx.agent.node, "Coord": _coord()}
    return json_response([{"Datacenter": ctx.datacenter, "AreaID": "wan", "Coordinates": [coord]}])


def _coord() -> dict[str, Any]:
    return {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05}


async def coordinate_nodes(request: Request, ctx: Ctx) -> Response:
    """GET /v1/coordinate/nodes."""
    allow(request, "GET")
    st = ctx.state
    acc = access(request)

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        out = [
            {"Node": n, "Segment": "", "Coord": _coord()}
            for n in sorted(st.nodes)
            if acc.visible(acc.authz.node_read(n))
        ]
        return st.table_index("nodes"), out, 200

    return await blocking_read(request, ctx, "nodes", compute)


async def coordinate_node(request: Request, ctx: Ctx) -> Response:
    """GET /v1/coordinate/node/:node."""
    allow(request, "GET")
    st = ctx.state
    name = request.path_params["node"]
    access(request).require(access(request).authz.node_read(name))

    def compute(opts: QueryOpts) -> tuple[int, Any, int]:
        if name not in st.nodes:
            return st.table_index("nodes"), [], 404
        return st.table_index("nodes"), [{"Node": name, "Segment": "", "Coord": _coord()}], 200

    return await blocking_read(request, ctx, "nodes", compute)


async def coordinate_update(request: Request, ctx: Ctx) -> Response:
    """PUT /v1/coordinate/update: accepted; coordinates are not tracked."""
    allow(request, "PUT")
    body = await read_json(request)
    node = str(body.get("Node", "")) if isinstance(body, dict) else ""
    access(request).require(access(request).authz.node_write(node))
    return json_response(True)


ROUTES = [
    ("/v1/txn", txn),
    ("/v1/event/fire/{name}", event_fire),
    ("/v1/event/list", event_list),
    ("/v1/coordinate/datacenters", coordinate_datacenters),
    ("/v1/coordinate/nodes", coordinate_nodes),
    ("/v1/coordinate/node/{node:path}", coordinate_node),
    ("/v1/coordinate/update", coordinate_update),
]
