"""/v1/kv/* endpoints."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from controld.registry.acl_access import access
from controld.registry.errors import BadRequest
from controld.registry.http import (
    Ctx,
    QueryOpts,
    allow,
    blocking_read,
    check_dc,
    json_response,
    no_body,
)
from controld.registry.kv_ops import kv_delete, kv_put
from controld.registry.render import kv_json

__all__ = ["MAX_VALUE_SIZE", "ROUTES"]

MAX_VALUE_SIZE = 512 * 1024  # Consul's kv_max_value_size default


def _uint(request: Request, name: str) -> int | None:
    if name not in request.query_params:
        return None
    text = request.query_params[name]
    try:
        value = int(text)
    except ValueError as exc:
        raise BadRequest(f"Invalid {name}") from exc
    if value < 0 or value >= 2**64:
        raise BadRequest(f"Invalid {name}")
    return value


async def _get(request: Request, ctx: Ctx, key: str) -> Response:
    st = ctx.state
    params = request.query_params
    acc = access(request)
    authz = acc.authz
    if "keys" in params:
        sep = params.get("separator", "")

        def keys(opts: QueryOpts) -> tuple[int, Any, int]:
            idx = st.kv_prefix_index(key)
            out: list[str] = []
            seen: set[str] = set()
            for full in st.keys_with_prefix(key):
                if not acc.visible(authz.key_list(full)):
                    continue
                k = full
                if sep:
                    pos = full.find(sep, len(key))
                    if pos >= 0:
                        k = full[: pos + len(sep)]
                if k not in seen:
                    seen.add(k)
                    out.append(k)
            if not out:
                return idx, no_body(), 404
            return idx, out, 200

        return await blocking_read(request, ctx, "p:" + key, keys)
    if "recurse" in params:

        def recurse(opts: QueryOpts) -> tuple[int, Any, int]:
            idx = st.kv_prefix_index(key)
            out = [
                kv_json(st.kv[k])
                for k in st.keys_with_prefix(key)
                if acc.visible(authz.key_read(k))
            ]
            if opts.filter:
                out = [o for o in out if opts.filter(o)]
            if not out:
                return idx, no_body(), 404
            return idx, out, 200

        return await blocking_read(request, ctx, "p:" + key, recurse)
    if not key:
        raise BadRequest("Missing key name")
    acc.require(authz.key_read(key))
    raw = "raw" in params

    def single(opts: QueryOpts) -> tuple[int, Any, int]:
        idx = st.table_index("kvs")
        entry = st.kv.get(key)
        if entry is None:
            return idx, no_body(), 404
        if raw:
            return idx, entry.value or b"", 200
        return idx, [kv_json(entry)], 200

    return await blocking_read(
        request, ctx, "k:" + key, single, content_type="text/plain" if raw else "application/json"
    )


async def kv(request: Request, ctx: Ctx) -> Response:
    """GET, PUT and DELETE /v1/kv/:key."""
    allow(request, "GET", "PUT", "DELETE")
    key = request.path_params["key"]
    if request.method == "GET":
        return await _get(request, ctx, key)
    check_dc(request, ctx)
    params = request.query_params
    acc = access(request)
    if request.method == "DELETE":
        recurse = "recurse" in params
        if not key and not recurse:
            raise BadRequest("Missing key name")
        acc.require(acc.authz.key_write_prefix(key) if recurse else acc.authz.key_write(key))
        return json_response(kv_delete(ctx.state, key, recurse=recurse, cas=_uint(request, "cas")))
    if not key:
        raise BadRequest("Missing key name")
    acc.require(acc.authz.key_write(key))
    flags = _uint(request, "flags") or 0
    cas = _uint(request, "cas")
    body, size = await _read_value(request)
    if size > MAX_VALUE_SIZE:
        raise _too_large(size)
    acquire = params.get("acquire") if "acquire" in params else None
    release = params.get("release") if "release" in params else None
    ok = kv_put(ctx.state, key, body, flags=flags, cas=cas, acquire=acquire, release=release)
    return json_response(ok)


async def _read_value(request: Request) -> tuple[bytes, int]:
    """The value, or its size once past the limit (the rest is drained, not kept, so the
    client gets the 413 instead of a reset connection)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_VALUE_SIZE:
            chunks.append(chunk)
        elif chunks:
            chunks.clear()
        if size > _DRAIN_LIMIT:
            break
    return b"".join(chunks), size


_DRAIN_LIMIT = 64 * 1024 * 1024


def _too_large(size: int) -> BadRequest:
    exc = BadRequest(
        f"Request body({size} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See "
        "https://developer.hashicorp.com/consul/docs/agent/config/config-files#kv_max_value_size."
    )
    exc.status = 413
    return exc


ROUTES = [("/v1/kv/{key:path}", kv)]
