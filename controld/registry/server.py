"""``RegistryServer``: the embedded Consul-compatible registry as one service object."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import trio

from controld.registry.acl_resolve import AclResolver
from controld.registry.agent import Agent, AgentConfig
from controld.registry.app import build_app
from controld.registry.checks import CheckRunner
from controld.registry.errors import RegistryError
from controld.registry.http import Ctx
from controld.registry.httpserver import ASGIApp, HTTPServer
from controld.registry.persist import open_store
from controld.registry.sessions import Sessions
from controld.registry.state import State
from meshcore.runtime.asgi import AsgiServer, ListenError, probe_bind

__all__ = ["RegistryConfig", "RegistryServer"]

log = logging.getLogger("controld.registry")


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Settings of one registry server."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8500
    node_name: str = ""
    datacenter: str = "dc1"
    #: With a management token ACLs are on (default deny) and this token may do everything.
    acl_management_token: str | None = None
    #: ACLs on without a configured management token (``PUT /v1/acl/bootstrap`` makes one).
    acl_enabled: bool = False
    # Floor of DeregisterCriticalServiceAfter and the reaper's period (Consul: 1 min, 30 s).
    deregister_critical_min_s: float = 60.0
    reap_interval_s: float = 30.0
    graceful_timeout_s: float = 1.0
    # "builtin" (controld.registry.httpserver: fast wake-ups of parked queries) or "hypercorn".
    http_server: str = "builtin"


class RegistryServer:
    """Owns the state, its SQLite store, the check runner, session timers and the HTTP server.

    ``run`` opens the data dir (raising :class:`~controld.registry.errors.DataDirError` if it
    is unusable), serves, reports the bound port through ``task_status`` and returns after
    :meth:`shutdown_nowait` (or ``PUT /v1/agent/leave``), having closed the database.
    """

    def __init__(self, config: RegistryConfig, *, sock: socket.socket | None = None) -> None:
        """``sock``: an already listening socket (socket activation) to serve instead of
        binding ``config.host:config.port``."""
        self.config = config
        self._sock = sock
        self.port = config.port
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self.state: State | None = None

    def shutdown_nowait(self) -> None:
        """Stop accepting, let in-flight requests finish (briefly), then return from ``run``."""
        self._shutdown.set()

    async def wait_stopped(self) -> None:
        """Return once ``run`` has finished (the database is closed by then)."""
        await self._stopped.wait()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until shut down; ``task_status.started(port)`` once listening."""
        cfg = self.config
        try:
            if self._sock is None:
                probe_bind(cfg.host, cfg.port)
        except ListenError as exc:
            raise RegistryError(str(exc)) from exc
        store = open_store(cfg.data_dir)
        try:
            state = self.state = State(store)
            address = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            agent = Agent(
                state,
                AgentConfig(
                    node_name=cfg.node_name or socket.gethostname(),
                    datacenter=cfg.datacenter,
                    address=address,
                    port=cfg.port,
                ),
            )
            agent.bootstrap()
            sessions = Sessions(state, agent.node)
            sessions.arm_loaded()
            runner = CheckRunner(
                agent,
                deregister_min=cfg.deregister_critical_min_s,
                reap_interval=cfg.reap_interval_s,
            )
            acl = AclResolver(
                state,
                cfg.datacenter,
                enabled=cfg.acl_enabled or cfg.acl_management_token is not None,
            )
            acl.bootstrap(cfg.acl_management_token)
            ctx = Ctx(
                state,
                agent,
                sessions,
                acl=acl,
                on_leave=self.shutdown_nowait,
            )
            app = build_app(ctx)
            async with trio.open_nursery() as nursery:
                await nursery.start(state.hub.run)
                await nursery.start(runner.run)
                nursery.start_soon(sessions.run)
                self.port = await nursery.start(self._serve, app)
                task_status.started(self.port)
                await self._shutdown.wait()
                # hypercorn drains in-flight requests within graceful_timeout, then returns.
                nursery.cancel_scope.deadline = trio.current_time() + cfg.graceful_timeout_s + 5
                await self._served.wait()
                nursery.cancel_scope.cancel()
        finally:
            store.close()
            self._stopped.set()

    async def _serve(self, app: object, *, task_status: trio.TaskStatus[int]) -> None:
        self._served = trio.Event()
        if self.config.http_server == "hypercorn":
            await self._serve_hypercorn(app, task_status=task_status)
            return
        cfg = self.config
        server = HTTPServer(
            cast("ASGIApp", app),
            cfg.host,
            cfg.port,
            graceful_timeout=cfg.graceful_timeout_s,
            sock=self._sock,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._relay_shutdown, server)
                try:
                    await server.run(task_status=task_status)
                except OSError as exc:
                    raise RegistryError(
                        f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}"
                    ) from exc
                nursery.cancel_scope.cancel()
        finally:
            self._served.set()

    async def _relay_shutdown(self, server: HTTPServer) -> None:
        await self._shutdown.wait()
        server.shutdown_nowait()

    async def _serve_hypercorn(self, app: object, *, task_status: trio.TaskStatus[int]) -> None:
        cfg = self.config
        server = AsgiServer(
            app,
            cfg.host,
            cfg.port,
            graceful_timeout=cfg.graceful_timeout_s,
            error_logger=logging.getLogger("controld.registry.hypercorn"),
            keep_alive_timeout=75,
            shutdown=self._shutdown,
            sock=self._sock,
        )
        try:
            await server.run(task_status=task_status)
        except ListenError as exc:
            raise RegistryError(str(exc)) from exc
        finally:
            self._served.set()
