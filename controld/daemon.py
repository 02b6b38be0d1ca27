"""The ``controld`` daemon: the registry (embedded or external), discovery, the admin API.

Embedded mode runs :class:`~controld.registry.RegistryServer` in this process and points the
:class:`~controld.discovery.RegistryWatcher` at it; external mode only runs the watcher
against a Consul-compatible registry elsewhere. Either way the admin API reports the link's
state and the discovery view, and the watcher keeps the last view while the registry is
unreachable. Policy, the config compiler and the push to sidecars join here with issue 4.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry

from controld.admin import RegistryLink, build_admin_app, status_json
from controld.discovery import RegistryWatcher
from controld.registry import RegistryConfig, RegistryServer
from meshcore.registry import Backoff
from meshcore.registry.client import RegistrySettings
from meshcore.runtime.asgi import AsgiServer

__all__ = ["ControlDaemon", "DaemonConfig", "DaemonPorts"]

#: Bound on stopping the registry server once asked (it drains within its graceful timeout).
_STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DaemonConfig:
    """Settings of the daemon: exactly one of ``registry`` (embedded) or ``registry_url``."""

    #: The embedded registry's settings; ``None`` in external mode.
    registry: RegistryConfig | None = None
    #: The external registry (``http(s)://host:port``); ``None`` in embedded mode.
    registry_url: str | None = None
    #: ACL token for the external registry (the embedded one uses its management token).
    registry_token: str | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int = 8501
    #: Longest a blocking query of the watcher stays parked.
    watch_wait_s: float = 60.0
    #: Cap of the watcher's jittered reconnect backoff.
    retry_max_s: float = 10.0

    def __post_init__(self) -> None:
        if (self.registry is None) == (self.registry_url is None):
            raise ValueError("give either an embedded registry config or a registry URL")


@dataclass(frozen=True)
class DaemonPorts:
    """What the daemon bound, reported through ``run``'s ``task_status``."""

    registry_url: str
    #: The embedded registry's port; ``None`` in external mode.
    registry_port: int | None
    admin_port: int


class ControlDaemon:
    """Service object owning the registry server (embedded mode), the watcher and admin API.

    ``run`` returns after :meth:`shutdown_nowait`, having stopped the admin server and the
    embedded registry (its database closed).
    """

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        #: The daemon's own Prometheus registry (served on ``/metrics``).
        self.metrics = CollectorRegistry(auto_describe=True)
        self.watcher: RegistryWatcher | None = None
        self._link: RegistryLink | None = None
        self._ready = False
        self._shutdown = trio.Event()

    def shutdown_nowait(self) -> None:
        """Ask ``run`` to stop and return."""
        self._ready = False
        self._shutdown.set()

    def is_ready(self) -> bool:
        """True while the daemon is up and not stopping."""
        return self._ready

    def status(self) -> dict[str, object]:
        """The admin ``/v1/status`` document."""
        assert self.watcher is not None and self._link is not None, "daemon not started"
        return status_json(self._link, self.watcher.status, self.watcher.view)

    async def run(
        self, *, task_status: trio.TaskStatus[DaemonPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`shutdown_nowait`; ``task_status.started(DaemonPorts)`` once up.

        Raises :class:`~controld.registry.RegistryError` (incl. ``DataDirError``) when the
        embedded registry can't start and :class:`~meshcore.runtime.asgi.ListenError` when
        the admin address can't be bound.
        """
        cfg = self.config
        server = RegistryServer(cfg.registry) if cfg.registry is not None else None
        async with trio.open_nursery() as nursery:
            registry_port: int | None = None
            if server is not None:
                assert cfg.registry is not None
                registry_port = await nursery.start(server.run)
                host = cfg.registry.host
                if host in ("", "0.0.0.0"):  # a wildcard bind is reached locally
                    host = "127.0.0.1"
                elif host == "::":
                    host = "::1"
                host = f"[{host}]" if ":" in host else host
                url = f"http://{host}:{registry_port}"
                token = cfg.registry.acl_management_token
                self._link = RegistryLink("embedded", url)
            else:
                assert cfg.registry_url is not None
                url = cfg.registry_url.rstrip("/")
                token = cfg.registry_token
                self._link = RegistryLink("external", url)
            watcher = self.watcher = RegistryWatcher(
                RegistrySettings(url=url, token=token or None),
                metrics=self.metrics,
                wait_s=cfg.watch_wait_s,
                backoff=Backoff(0.5, cfg.retry_max_s),
            )
            watch_scope = trio.CancelScope()
            await nursery.start(self._watch, watcher, watch_scope)
            admin = AsgiServer(
                build_admin_app(self.status, self.metrics, self.is_ready),
                cfg.admin_host,
                cfg.admin_port,
                error_logger=logging.getLogger("controld.admin"),
                shutdown=self._shutdown,
            )
            admin_port: int = await nursery.start(admin.run)
            self._ready = not self._shutdown.is_set()
            task_status.started(DaemonPorts(url, registry_port, admin_port))
            await self._shutdown.wait()
            self._ready = False
            watch_scope.cancel()
            if server is not None:
                server.shutdown_nowait()
                with trio.move_on_after(_STOP_TIMEOUT_S):
                    await server.wait_stopped()
            # The admin server stops on the same event; anything still running is cut off.
            nursery.cancel_scope.deadline = trio.current_time() + _STOP_TIMEOUT_S

    @staticmethod
    async def _watch(
        watcher: RegistryWatcher,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[RegistryWatcher] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            await watcher.run(task_status=task_status)
