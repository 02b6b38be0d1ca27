"""The API gate: one ASGI middleware in front of every route of controld's API.

For every request that carries a body or changes something it checks, in this order and
before the route (FastAPI) reads or parses anything:

1. **the credential**: a route that needs a bearer token (it depends on one of
   :attr:`Guard.TOKEN_CHECKS`) without a valid one is answered 401 at once, so neither a huge
   body nor a malformed one gets read or parsed on behalf of nobody;
2. **the body size**: a ``Content-Length`` over the limit is answered 413 at once, and a
   chunked body is counted while read and refused (413) at the limit;
3. **the JSON**: a body FastAPI would parse as JSON is decoded first within bounds
   (:func:`meshcore.boundedjson.loads_bounded`): not JSON, too deep or a lone surrogate is a
   422, never a 500 (nor the parser's recursion limit).

Requests that change something (POST, PUT, PATCH, DELETE) end in an :class:`AuditEntry`
(:mod:`controld.audit`): who (the credential), what (method, route template, resource), when,
from where (client address) and how it ended (status, and what the endpoint reported through
:class:`~controld.api.deps.Auditor`). The entry is stored before the answer is sent, so an
operator who reads the audit log right after a change sees it. Refusals of requests without
a valid credential are logged, not stored: an anonymous client can't flood the bounded log.

Routes added later by ``include_router`` are covered too: the route table is read per request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import BaseRoute, Match

from controld.api.deps import AUDIT_NOTE, AuditNote, Guard
from controld.api.errors import error_response
from controld.api.peer import peer_spiffe_id
from controld.audit import AuditEntry, AuditLog, entry_json
from controld.auth import Forbidden, Unauthenticated
from meshcore.boundedjson import DEFAULT_MAX_DEPTH, BoundedJsonError, loads_bounded

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ApiGate"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Largest request body accepted by default (1 MiB; a policy apply of thousands of
#: resources stays far below).
DEFAULT_MAX_BODY_BYTES: Final = 1 << 20
MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: POSTs that change no configuration and come once a second per sidecar: not audited; their
#: route checks its credential and bounds its body itself (controld.api.telemetry).
UNAUDITED_POST_PREFIX: Final = "/v1/telemetry/"

log = structlog.get_logger("controld.audit")


class _Refused(Exception):
    """An answer the gate gives instead of the route."""

    def __init__(self, status: int, message: str, problems: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems


@dataclass
class _Call:
    """One request being checked: its route, path parameters, audit note and actor."""

    route: BaseRoute | None
    params: dict[str, Any]
    note: AuditNote = field(default_factory=AuditNote)
    actor: str = "anonymous"


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


def _announced_length(scope: Scope) -> int | None:
    """The ``Content-Length`` (None when absent); refuses a malformed or repeated one."""
    values = _header(scope, b"content-length")
    if not values:
        return None
    text = values[0].strip()
    if len(set(values)) > 1 or not text.isdigit():
        raise _Refused(400, "invalid Content-Length")
    return int(text)


def _json_body(scope: Scope) -> bool:
    """True when FastAPI would parse the body as JSON (no content type, or a JSON one)."""
    values = _header(scope, b"content-type")
    if not values:
        return True
    media = values[0].split(b";", 1)[0].strip().lower().decode("latin-1")
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _source(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


#: Outcome of the gate's own refusals.
_REFUSALS: Final = {
    401: "unauthenticated",
    403: "forbidden",
    413: "too_large",
    422: "invalid",
    400: "invalid",
}


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    return "error" if status >= 500 else "rejected"


class ApiGate:
    """ASGI middleware: credential, size and JSON checks before the body; the audit log.

    ``routes`` is the app's (live) route list, ``guard`` the API's :class:`Guard`, ``audit``
    where entries are stored (``None``: only logged), ``max_body_bytes`` the body limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        guard: Guard,
        audit: AuditLog | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("the body limit is at least 1 byte")
        self.app = app
        self._routes = routes
        self._guard = guard
        self._audit = audit
        self.max_body_bytes = max_body_bytes
        self._needs_token: dict[int, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check, then pass on (see the module doc)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mutating = scope["method"] in MUTATING
        if (
            mutating
            and scope["method"] == "POST"
            and scope["path"].startswith(UNAUDITED_POST_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        try:
            length = _announced_length(scope)
        except _Refused as exc:
            await self._refuse(scope, receive, send, exc, close=True)
            return
        chunked = bool(_header(scope, b"transfer-encoding"))
        if not mutating and not chunked and not length:
            # The hot path (snapshot long-polls, reads): no body to guard, nothing to audit.
            await self.app(scope, receive, send)
            return
        call = _Call(*self._match(scope))
        scope[AUDIT_NOTE] = call.note
        request = Request(scope)
        try:
            call.actor = await self._actor(request, call.route)
            if length is not None and length > self.max_body_bytes:
                raise _Refused(413, f"request body over {self.max_body_bytes} bytes")
            body = await self._read_body(receive)
            if body is None:
                return  # the client went away
            if body and _json_body(scope):
                try:
                    loads_bounded(body, max_bytes=self.max_body_bytes, max_depth=DEFAULT_MAX_DEPTH)
                except BoundedJsonError as exc:
                    raise _Refused(
                        422, "invalid request", [{"path": "body", "message": str(exc)}]
                    ) from exc
        except _Refused as exc:
            call.note.outcome = _REFUSALS.get(exc.status, "rejected")
            # The body may be unread: close the connection rather than read it to reuse it.
            status = await self._refuse(scope, receive, send, exc, close=True)
            if mutating:
                await self._finish(scope, call, status)
            return
        if not mutating:
            await self.app(scope, _replay(body, receive), send)
            return
        await self._call_audited(scope, _replay(body, receive), send, call)

    # -- checks --------------------------------------------------------------------------------

    def _match(self, scope: Scope) -> tuple[BaseRoute | None, dict[str, Any]]:
        partial: BaseRoute | None = None
        for route in _flatten(self._routes):
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route, dict(child.get("path_params", {}))
            if match is Match.PARTIAL and partial is None:
                partial = route
        return partial, {}

    def _requires_token(self, route: BaseRoute | None) -> bool:
        if not isinstance(route, APIRoute):
            return False  # plain routes (the long-poll, OpenAPI) check their own credentials
        cached = self._needs_token.get(id(route))
        if cached is None:
            cached = self._needs_token[id(route)] = self._depends_on_token(route)
        return cached

    def _depends_on_token(self, route: APIRoute) -> bool:
        stack = list(route.dependant.dependencies)
        while stack:
            dependant = stack.pop()
            call = dependant.call
            if (
                getattr(call, "__self__", None) is self._guard
                and getattr(call, "__name__", "") in Guard.TOKEN_CHECKS
            ):
                return True
            stack.extend(dependant.dependencies)
        return False

    async def _actor(self, request: Request, route: BaseRoute | None) -> str:
        """Who is asking; :class:`_Refused` (401) when the route needs a token and the request
        has none that is valid, (403) when its credentials contradict each other (a bearer
        token of another workload than the client certificate)."""
        if self._requires_token(route):
            try:
                return (await self._guard.authenticate(request)).name
            except Unauthenticated as exc:
                raise _Refused(401, str(exc)) from exc
            except Forbidden as exc:
                raise _Refused(403, str(exc)) from exc
        if request.headers.get("authorization"):
            try:
                return (await self._guard.authenticate(request)).name
            except (Unauthenticated, Forbidden):
                pass  # a public route: the route decides what the header is worth
        return peer_spiffe_id(request.scope) or "anonymous"

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, counted while read (:class:`_Refused` 413 past the limit); None if
        the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Refused(413, f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, exc: _Refused, *, close: bool
    ) -> int:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        if close:
            headers["Connection"] = "close"
        response = error_response(exc.status, exc.message, exc.problems, headers=headers)
        await response(scope, receive, send)
        return exc.status

    # -- audit ---------------------------------------------------------------------------------

    async def _call_audited(self, scope: Scope, receive: Receive, send: Send, call: _Call) -> None:
        """Run the route with its answer held back until the audit entry is stored."""
        held: list[Message] = []
        status = 500

        async def hold(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            held.append(message)

        try:
            await self.app(scope, receive, hold)
        except Exception:
            await self._finish(scope, call, 500)
            raise
        await self._finish(scope, call, status)
        for message in held:
            await send(message)

    async def _finish(self, scope: Scope, call: _Call, status: int) -> None:
        note, params, actor = call.note, call.params, call.actor
        if actor == "anonymous" and note.actor and note.actor != "anonymous":
            actor = note.actor
        kind, name = params.get("kind"), params.get("name")
        if kind is not None and name is not None:
            resource: str | None = f"{kind}/{name}"
        else:
            resource = ",".join(f"{k}={v}" for k, v in sorted(params.items())) or None
        path = str(scope.get("path", ""))
        entry = AuditEntry(
            time="" if self._audit is None else self._audit.entry_time(),
            actor=actor,
            method=str(scope["method"]),
            route=str(getattr(call.route, "path", path)),
            path=path,
            source=_source(scope),
            status=status,
            outcome=note.outcome or _outcome(status),
            resource=resource,
            revision=note.revision,
            details=dict(note.details),
        )
        # An anonymous refusal is only logged: nobody may push real entries out of the log.
        if self._audit is None or (actor == "anonymous" and status >= 400):
            if note.actor is None:  # else the endpoint logged it (controld.api.deps.Auditor)
                fields = entry_json(entry)
                fields["principal"] = fields.pop("actor")
                log.info("audit", stored=False, **fields)
            return
        await self._audit.record(entry)


def _flatten(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes in matching order, those of included routers in place.

    Newer FastAPI versions keep an included router as one route object (holding the
    ``original_router``) instead of copying its routes; our routers are included without a
    prefix, so their routes match as they are.
    """
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flatten(included.routes)
        else:
            yield route


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then whatever the server sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
