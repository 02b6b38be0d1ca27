"""A stand-in for controld's snapshot endpoints (Contract 5), for meshd's controld-mode tests.

It serves one snapshot document for every registered proxy, with the real protocol's rules:
``POST /v1/proxies/{id}`` registers, ``GET /v1/snapshots/{id}?version&hash&wait`` answers 200
with the current snapshot when the caller's hash differs (and it wasn't NACKed), else waits
for a change up to ``wait`` s and answers 304; 404 for unknown proxies; ``POST .../nack``
records the NACK. Everything it sees is recorded for the tests to inspect. It runs on
:class:`meshcore.runtime.asgi.AsgiServer` and can be stopped and started again on its port.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meshcore.api.sidecar import NACK_ROUTE, PROXY_ROUTE, SNAPSHOT_ROUTE
from meshcore.model.hashing import document_hash
from meshcore.runtime.asgi import AsgiServer

#: Longest poll the fake holds open, whatever ``wait`` asks (tests stay quick).
MAX_WAIT_S = 5.0


@dataclass
class FakeControld:
    """The fake's state; :meth:`run` serves it until cancelled."""

    token: str | None = None
    port: int = 0
    version: int = 0
    hash: str = ""
    document: dict[str, Any] | None = None
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    polls: list[dict[str, str]] = field(default_factory=list)
    nacks: list[dict[str, Any]] = field(default_factory=list)
    #: The ``x-meshd-features`` header of each poll (None: not sent).
    poll_features: list[str | None] = field(default_factory=list)
    #: Answer polls with this status instead (e.g. 503), when set.
    fail_status: int | None = None
    #: Answer polls with 200 and this body instead (a malformed answer), when set.
    garbage: bytes | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    polled: trio.Event = field(default_factory=trio.Event)
    _scope: trio.CancelScope | None = None
    _done: trio.Event = field(default_factory=trio.Event)

    async def start(self, nursery: trio.Nursery) -> int:
        """Serve in ``nursery`` until :meth:`stop` (same port as before after a stop)."""
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        port: int = await nursery.start(self._serve, self._scope)
        return port

    async def _serve(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with scope:
                await self.run(task_status=task_status)
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Stop serving at once (connections drop, like a controld that died)."""
        assert self._scope is not None
        self._scope.cancel()
        with trio.fail_after(10):
            await self._done.wait()

    # -- test controls ------------------------------------------------------------------------

    def publish(self, document: dict[str, Any]) -> int:
        """Make ``document`` the current snapshot (its version is replaced); returns the version."""
        self.version += 1
        self.document = document
        self.hash = document_hash(document)
        self._wake()
        return self.version

    def forget(self) -> None:
        """Forget every registered proxy (as a restarted controld would)."""
        self.proxies.clear()
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_poll(self, predicate: Any, timeout: float = 10.0) -> dict[str, str]:
        """Wait (bounded) for a poll whose query satisfies ``predicate``; returns it."""
        with trio.fail_after(timeout):
            while True:
                for query in self.polls:
                    if predicate(query):
                        return query
                await self.polled.wait()
                self.polled = trio.Event()

    # -- serving ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on 127.0.0.1 (:attr:`port`, 0 the first time) until cancelled."""
        server = AsgiServer(
            self.app(), "127.0.0.1", self.port, error_logger=logging.getLogger("fake-controld")
        )
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(server.run)
            task_status.started(self.port)

    def app(self) -> Starlette:
        """The Starlette app."""

        def authorized(request: Request) -> bool:
            if self.token is None:
                return True
            return request.headers.get("authorization") == f"Bearer {self.token}"

        async def register(request: Request) -> Response:
            if not authorized(request):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            body = await request.json()
            proxy = request.path_params["proxy_id"]
            self.proxies[proxy] = body
            self.registrations.append(body)
            return JSONResponse({"proxy_id": proxy})

        async def poll(request: Request) -> Response:
            if not authorized(request):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            proxy = request.path_params["proxy_id"]
            query = dict(request.query_params)
            self.poll_features.append(request.headers.get("x-meshd-features"))
            self.polls.append(query)
            self.polled.set()
            if self.fail_status is not None:
                return JSONResponse({"error": "failing on purpose"}, status_code=self.fail_status)
            if self.garbage is not None:
                return Response(self.garbage, media_type="application/json")
            if proxy not in self.proxies:
                return JSONResponse({"error": "unknown proxy"}, status_code=404)
            wait = min(float(query.get("wait", "30")), MAX_WAIT_S)
            with trio.move_on_after(wait):
                while True:
                    answer = self._answer(query.get("hash"))
                    if answer is not None:
                        return answer
                    await self.changed.wait()
                    if proxy not in self.proxies:
                        return JSONResponse({"error": "unknown proxy"}, status_code=404)
            return Response(status_code=304)

        async def nack(request: Request) -> Response:
            if not authorized(request):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            body = await request.json()
            self.nacks.append(body)
            return Response(status_code=204)

        return Starlette(
            routes=[
                Route(PROXY_ROUTE, register, methods=["POST"]),
                Route(SNAPSHOT_ROUTE, poll, methods=["GET"]),
                Route(NACK_ROUTE, nack, methods=["POST"]),
            ]
        )

    def _answer(self, reported: str | None) -> Response | None:
        if self.document is None or reported == self.hash:
            return None
        if any(n.get("hash") == self.hash for n in self.nacks):
            return None
        return JSONResponse(
            {
                "version": self.version,
                "hash": self.hash,
                "snapshot": {**self.document, "version": self.version},
            }
        )
