"""Shared HTTP plumbing: query options, ACL, request bodies, errors and blocking reads."""

from __future__ import annotations

import http
import json
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from controld.registry.acl_access import access
from controld.registry.acl_resolve import AclResolver
from controld.registry.agent import Agent
from controld.registry.bexpr import Predicate, compile_filter
from controld.registry.durations import parse_duration
from controld.registry.errors import BadRequest, MethodNotAllowed, RequestError
from controld.registry.jsonkeys import normalize
from controld.registry.sessions import Sessions
from controld.registry.state import State

__all__ = [
    "Ctx",
    "QueryOpts",
    "Rendered",
    "blocking_read",
    "error_response",
    "json_response",
    "read_json",
]

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_BODY = 4 * 1024 * 1024
# Query parameters that don't change a read's result (left out of the response cache key).
_NOT_IN_KEY = frozenset({"index", "wait", "token", "stale", "consistent", "cached", "pretty", "dc"})


class Rendered:
    """A read's result rendered once and shared by every request that asks the same."""

    __slots__ = ("_heads", "_responses", "_wire", "body", "filtered", "index", "status")

    def __init__(self, index: int, status: int, body: bytes, filtered: bool = False) -> None:
        self.index = index
        self.status = status
        self.body = body
        self.filtered = filtered
        self._heads: dict[tuple[str, str], list[tuple[bytes, bytes]]] = {}
        self._wire: dict[tuple[str, str], bytes] = {}
        self._responses: dict[tuple[str, str], bytes] = {}

    def raw_headers(self, consistency: str, content_type: str) -> list[tuple[bytes, bytes]]:
        """The response headers, built once per consistency mode and content type."""
        key = (consistency, content_type)
        head = self._heads.get(key)
        if head is None:
            head = [
                (k.lower().encode(), v.encode())
                for k, v in meta_headers(self.index, consistency, self.filtered).items()
            ]
            head.append((b"content-length", str(len(self.body)).encode()))
            if self.body:
                head.append((b"content-type", content_type.encode()))
            self._heads[key] = head
        return head

    def wire_head(self, consistency: str, content_type: str) -> bytes:
        """The HTTP/1.1 status line and headers, for servers that write them as is."""
        key = (consistency, content_type)
        wire = self._wire.get(key)
        if wire is None:
            lines = [f"HTTP/1.1 {self.status} {_phrase(self.status)}".encode()]
            lines += [k + b": " + v for k, v in self.raw_headers(consistency, content_type)]
            wire = self._wire[key] = b"\r\n".join(lines) + b"\r\n\r\n"
        return wire

    def wire_response(self, consistency: str, content_type: str) -> bytes:
        """The whole HTTP/1.1 keep-alive response: :meth:`wire_head` and the body."""
        key = (consistency, content_type)
        data = self._responses.get(key)
        if data is None:
            data = self._responses[key] = self.wire_head(consistency, content_type) + self.body
        return data


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class PreparedResponse(Response):
    """A response whose raw headers are already built (shared by many woken watchers).

    It also offers the whole HTTP/1.1 head as ``controld.head`` in the start message, which
    :mod:`controld.registry.httpserver` writes as is (other ASGI servers ignore the key).
    """

    def __init__(
        self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]], head: bytes
    ) -> None:
        self.status_code = status
        self.body = body
        self.raw_headers = raw_headers
        self.background = None
        self._head = head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the prepared head and body."""
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
                "controld.head": self._head,
            }
        )
        await send({"type": "http.response.body", "body": self.body})


class Ctx:
    """What the endpoint handlers share: state, agent, sessions, settings, response cache."""

    def __init__(
        self,
        state: State,
        agent: Agent,
        sessions: Sessions,
        *,
        acl: AclResolver,
        on_leave: Callable[[], None] | None = None,
    ) -> None:
        self.state = state
        self.agent = agent
        self.sessions = sessions
        self.datacenter = agent.config.datacenter
        self.acl = acl
        self.on_leave = on_leave
        # Per-server state of the smaller endpoints (the user event buffer).
        self.extras: dict[str, object] = {}
        self._cache: dict[str, Rendered] = {}
        self._cache_index = -1

    def cached(
        self,
        key: str,
        compute: Callable[[], tuple[int, Any, int]],
        filtered: Callable[[], bool] = lambda: False,
    ) -> Rendered:
        """The rendering of ``key`` at the current state index, computing it at most once;
        ``filtered()`` (asked right after ``compute``) says whether ACLs left something out."""
        st = self.state
        if self._cache_index != st.index:
            self._cache.clear()
            self._cache_index = st.index
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        index, data, status = compute()
        if data is _NO_BODY:
            body = b""
        elif isinstance(data, bytes):
            body = data
        else:
            body = _dumps(data)
        rendered = Rendered(max(index, 1), status, body, filtered())
        if len(self._cache) < 10_000:
            self._cache[key] = rendered
        return rendered


_NO_BODY = object()


def no_body() -> Any:
    """Marker for a read answered without a body (404s)."""
    return _NO_BODY


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class QueryOpts:
    """Blocking, consistency and filter options of a read."""

    index: int
    wait: float
    consistency: str
    filter: Predicate | None


def query_opts(request: Request) -> QueryOpts:
    """Parse ``index``, ``wait``, ``stale``/``consistent`` and ``filter`` as Consul does."""
    params = request.query_params
    wait = DEFAULT_WAIT
    if params.get("wait"):
        try:
            wait = parse_duration(params["wait"])
        except ValueError as exc:
            raise BadRequest("Invalid wait time") from exc
    index = 0
    if params.get("index"):
        try:
            index = int(params["index"])
        except ValueError as exc:
            raise BadRequest("Invalid index") from exc
        if index < 0:
            raise BadRequest("Invalid index")
    stale = "stale" in params
    consistent = "consistent" in params
    if stale and consistent:
        raise BadRequest("Cannot specify ?stale with ?consistent, conflicting semantics.")
    consistency = "stale" if stale else "consistent" if consistent else "leader"
    text = params.get("filter")
    return QueryOpts(
        index=index,
        wait=min(max(wait, 0.0), MAX_WAIT),
        consistency=consistency,
        filter=compile_filter(text) if text else None,
    )


def node_meta_filter(request: Request) -> list[tuple[str, str]]:
    """The repeatable ``node-meta=key:value`` query parameter, as (key, value) pairs."""
    pairs = []
    for item in request.query_params.getlist("node-meta"):
        key, _, value = item.partition(":")
        pairs.append((key, value))
    return pairs


def check_dc(request: Request, ctx: Ctx) -> None:
    """Reject ``?dc=`` naming another datacenter, as Consul does without a WAN path."""
    dc = request.query_params.get("dc")
    if dc and dc.lower() != ctx.datacenter.lower():
        raise RequestError("No path to datacenter")


def allow(request: Request, *methods: str) -> None:
    """405 unless the request's method is one of ``methods``."""
    if request.method not in methods:
        raise MethodNotAllowed(request.method, methods)


async def read_json(request: Request, *, required: bool = True) -> Any:
    """The request body as JSON with keys in Consul's canonical spelling."""
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise BadRequest("Request decode failed: EOF")
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Request decode failed: {exc}") from exc
    return normalize(data)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The raw body, refused past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                f"Request body({size} bytes) too large, max size: {limit} bytes.", 413
            )
        chunks.append(chunk)
    return b"".join(chunks)


def cache_key(request: Request, who: str = "") -> str:
    """Path plus the result-shaping query parameters, in a canonical order; ``who`` (the
    token's authorizer key) keeps one token's filtered result from another's."""
    items = sorted((k, v) for k, v in request.query_params.multi_items() if k not in _NOT_IN_KEY)
    return who + "|" + request.url.path + "?" + urllib.parse.urlencode(items)


def meta_headers(index: int, consistency: str, filtered: bool = False) -> dict[str, str]:
    """Consul's query meta headers."""
    headers = {
        "X-Consul-Index": str(index),
        "X-Consul-KnownLeader": "true",
        "X-Consul-LastContact": "0",
        "X-Consul-Effective-Consistency": consistency,
    }
    if filtered:
        headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return headers


async def blocking_read(
    request: Request,
    ctx: Ctx,
    topic: str,
    compute: Callable[[QueryOpts], tuple[int, Any, int]],
    *,
    content_type: str = "application/json",
) -> Response:
    """Answer a read, blocking while ``?index=`` is not behind the result's index.

    ``compute`` returns ``(index, json_data_or_no_body(), status)``. The wait is capped at 10
    minutes plus up to wait/16 of random jitter, as Consul does; any write to ``topic`` wakes
    the query to recheck. Under :mod:`controld.registry.httpserver`, the recheck runs in the
    hub's wake-up pass and, when the index moved, writes the response to the socket there
    (``controld.send_now``); the response returned afterwards is then not sent again.
    """
    check_dc(request, ctx)
    opts = query_opts(request)
    acc = access(request)
    key = cache_key(request, acc.authz.key)

    def run() -> tuple[int, Any, int]:
        acc.filtered = False
        return compute(opts)

    def was_filtered() -> bool:
        return acc.filtered

    rendered = ctx.cached(key, run, was_filtered)
    if opts.index and rendered.index <= opts.index:
        deadline = trio.current_time() + opts.wait + random.random() * opts.wait / 16  # noqa: S311
        hub = ctx.state.hub
        send_now: Callable[[bytes], None] | None = request.scope.get("controld.send_now")

        def recheck() -> Rendered:
            fresh = ctx.cached(key, run, was_filtered)
            if send_now is not None and fresh.index > opts.index:
                send_now(fresh.wire_response(opts.consistency, content_type))
            return fresh

        while rendered.index <= opts.index and trio.current_time() < deadline:
            woken = await hub.wait(topic, deadline, recheck)
            rendered = woken or ctx.cached(key, run, was_filtered)
    return PreparedResponse(
        rendered.status,
        rendered.body,
        rendered.raw_headers(opts.consistency, content_type),
        rendered.wire_head(opts.consistency, content_type),
    )


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response (compact, like Consul outside dev mode)."""
    return Response(
        _dumps(data), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(exc: RequestError) -> Response:
    """Consul's plain-text error body with the error's status."""
    headers = {}
    if isinstance(exc, MethodNotAllowed):
        headers["Allow"] = ",".join(exc.allow)
    return Response(
        str(exc).encode(), status_code=exc.status, headers=headers, media_type="text/plain"
    )


Handler = Callable[[Request, Ctx], Awaitable[Response]]
