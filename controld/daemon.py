"""The ``controld`` daemon: registry (embedded or external), discovery, policy, push, API.

Embedded mode runs :class:`~controld.registry.RegistryServer` in this process and points the
:class:`~controld.discovery.RegistryWatcher` at it; external mode only runs the watcher
against a Consul-compatible registry elsewhere. Either way the watcher keeps the last view
while the registry is unreachable. On top of it:

* :class:`~controld.store.ResourceStore` follows the policy resources in the registry KV,
* :class:`~controld.push.PushHub` holds the registered sidecars and their long-polls,
* :class:`~controld.push.Reconciler` recompiles snapshots on view, resource and registration
  changes and publishes them to the hub,
* :class:`~controld.events.EventJournal` records control-plane events (the hub's, the
  resource routes', the CA's, :class:`~controld.push.PresenceWatch`'s connections and
  :class:`~controld.events.EndpointWatch`'s endpoint health changes),
* the HTTP API (:func:`controld.api.build_api`, bearer-token auth) serves all of it on the
  admin address (hypercorn), and the same app on the *push* address for the sidecars.

Why a second listener for the sidecars (as istiod serves xDS apart from its HTTP API): a
change wakes every parked long-poll at once, and hypercorn's per-response cost (h11, tasks
and cancel scopes per request) makes answering 1000 of them take most of a second on two
cores. The push address uses the registry's lean trio/httptools server
(:mod:`controld.registry.httpserver`), built for exactly that fan-out of blocking queries.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from controld.activation import ListenerSockets
from controld.admin import RegistryLink, status_json
from controld.api import build_api
from controld.audit import AuditLog
from controld.auth import TokenAuth, TokenFileError, load_admin_token
from controld.ca import CAFileError, CertificateAuthority, IdentityService, RootCA
from controld.ca.servertls import ServerTls, server_sans
from controld.ca.storage import CAStore
from controld.ca.sweeper import JoinTokenSweeper, RevocationSync
from controld.compiler import Compiler
from controld.daemon_config import DaemonConfig, DaemonPorts
from controld.discovery import DiscoveryView, RegistryWatcher
from controld.events import EndpointWatch, EventJournal
from controld.push import PresenceWatch, PushHub, Reconciler
from controld.registry import RegistryServer
from controld.registry.httpserver import HTTPServer, limit_events_counter
from controld.sealed import RECORD_KEY_FILE, RecordKey
from controld.sidecar_tokens import SidecarTokens
from controld.store import ResourceStore
from controld.telemetry import TapHub, TelemetryWindow
from meshcore.model.resources import ResourceSet
from meshcore.registry import Backoff
from meshcore.registry.client import RegistryClient, RegistrySettings
from meshcore.runtime.asgi import AsgiServer, ListenError

__all__ = ["ControlDaemon", "DaemonConfig", "DaemonPorts"]

#: Bound on stopping the registry server once asked (it drains within its graceful timeout).
_STOP_TIMEOUT_S = 10.0


class ControlDaemon:
    """Service object owning the registry server (embedded mode), the watcher, the store,
    the push hub and reconciler, and the API server.

    ``run`` returns after :meth:`shutdown_nowait`, having stopped the API server and the
    embedded registry (its database closed). The daemon is the API's
    :class:`~controld.api.ControlPlane`.
    """

    def __init__(self, config: DaemonConfig, *, sockets: ListenerSockets | None = None) -> None:
        """``sockets``: listening sockets passed by socket activation, by listener name."""
        self.config = config
        self.sockets = sockets or ListenerSockets()
        #: The daemon's own Prometheus registry (served on ``/metrics``).
        self.metrics = CollectorRegistry(auto_describe=True)
        self.watcher: RegistryWatcher | None = None
        #: The control-plane events (``GET /v1/events``).
        self.events = EventJournal()
        #: Registered sidecars and their long-polls.
        self.hub = PushHub(metrics=self.metrics, events=self.events)
        self.reconciler: Reconciler | None = None
        #: The sidecars' telemetry (rolling window) and the operators' taps.
        self.telemetry = TelemetryWindow()
        self.taps = TapHub()
        self._store: ResourceStore | None = None
        self._auth: TokenAuth | None = None
        #: How controld reaches the registry, with its own token (set once running).
        self.registry_settings: RegistrySettings | None = None
        #: The control-plane audit log (set when ``run`` starts).
        self.audit: AuditLog | None = None
        #: The CA and the enrollment endpoints' logic (set when ``run`` starts).
        self.identity: IdentityService | None = None
        self._link: RegistryLink | None = None
        #: What ``run`` bound (set once it is up).
        self.ports: DaemonPorts | None = None
        self._ready = False
        self._shutdown = trio.Event()
        self._scopes: list[trio.CancelScope] = []

    @property
    def store(self) -> ResourceStore:
        """The policy resource store (available once ``run`` has started it)."""
        assert self._store is not None, "daemon not started"
        return self._store

    @property
    def auth(self) -> TokenAuth:
        """The API's token checker (loaded when ``run`` starts)."""
        assert self._auth is not None, "daemon not started"
        return self._auth

    def view(self) -> DiscoveryView:
        """The current discovery view."""
        assert self.watcher is not None, "daemon not started"
        return self.watcher.view

    def resources(self) -> ResourceSet:
        """The resource set in force."""
        return self.store.current

    def shutdown_nowait(self) -> None:
        """Ask ``run`` to stop and return."""
        self._ready = False
        self._shutdown.set()

    def is_ready(self) -> bool:
        """True while the daemon is up and not stopping."""
        return self._ready

    def status(self) -> dict[str, Any]:
        """The ``/v1/status`` document: registry, discovery, ``push`` and ``store``."""
        assert self.watcher is not None and self._link is not None, "daemon not started"
        doc = status_json(self._link, self.watcher.status, self.watcher.view)
        push = self.hub.status_json()
        if self.reconciler is not None:
            push.update(self.reconciler.status_json())
        doc["push"] = push
        doc["telemetry"] = {**self.telemetry.status_json(), "taps": self.taps.status_json()}
        if self._store is not None:
            store = dataclasses.asdict(self._store.status)
            store["prefix"] = self.config.kv_prefix
            store["kinds"] = self._store.kind_counts
            doc["store"] = store
        return doc

    async def run(
        self, *, task_status: trio.TaskStatus[DaemonPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`shutdown_nowait`; ``task_status.started(DaemonPorts)`` once up.

        Raises :class:`~controld.registry.RegistryError` (incl. ``DataDirError``) when the
        embedded registry can't start, :class:`~controld.auth.TokenFileError` when the admin
        token file can't be read or created and :class:`~meshcore.runtime.asgi.ListenError`
        when the admin address can't be bound, :class:`~controld.ca.CAFileError` when the CA
        directory can't be loaded or created.
        """
        cfg = self.config
        self._auth = TokenAuth.from_file(cfg.token_path)
        record_key = _record_key(cfg.state_dir)
        ca = CertificateAuthority.load_or_create(cfg.ca_dir, import_root=_import_root(cfg))
        registry_cfg = cfg.registry
        if (
            registry_cfg is not None
            and cfg.registry_acl
            and registry_cfg.acl_management_token is None
        ):
            generated = load_admin_token(cfg.registry_token_path)
            registry_cfg = dataclasses.replace(registry_cfg, acl_management_token=generated)
            # The config the daemon runs with names the token it uses (as if it was given).
            self.config = cfg = dataclasses.replace(cfg, registry=registry_cfg)
        server = (
            RegistryServer(registry_cfg, sock=self.sockets.get("registry"))
            if registry_cfg is not None
            else None
        )
        async with trio.open_nursery() as nursery:
            registry_port: int | None = None
            if server is not None:
                assert registry_cfg is not None
                registry_port = await nursery.start(server.run)
                host = registry_cfg.host
                if host in ("", "0.0.0.0"):  # a wildcard bind is reached locally
                    host = "127.0.0.1"
                elif host == "::":
                    host = "::1"
                host = f"[{host}]" if ":" in host else host
                url = f"http://{host}:{registry_port}"
                token = registry_cfg.acl_management_token
                self._link = RegistryLink("embedded", url)
            else:
                assert cfg.registry_url is not None
                url = cfg.registry_url.rstrip("/")
                token = cfg.registry_token
                self._link = RegistryLink("external", url)
            settings = self.registry_settings = RegistrySettings(url=url, token=token or None)
            watcher = self.watcher = RegistryWatcher(
                settings,
                metrics=self.metrics,
                wait_s=cfg.watch_wait_s,
                backoff=Backoff(0.5, cfg.retry_max_s),
            )
            with (
                ResourceStore(
                    settings,
                    cfg.kv_prefix,
                    record_key=record_key,
                    metrics=self.metrics,
                    wait_s=cfg.watch_wait_s,
                ) as store,
                RegistryClient(settings) as kv,
            ):
                self._store = store
                self.audit = AuditLog(kv, cfg.kv_prefix, record_key, store.invalid)
                self.metrics.register(self.audit)
                self.identity = IdentityService(
                    ca,
                    kv,
                    cfg.kv_prefix,
                    record_key=record_key,
                    trust_domain=lambda: store.current.mesh().trust_domain,
                    metrics=self.metrics,
                    events=self.events,
                )
                self.auth.tokens = SidecarTokens(
                    kv,
                    cfg.kv_prefix,
                    record_key,
                    metrics=self.metrics,
                    leaf_revoked=self.identity.revoked.__contains__,
                )
                # Its own nursery, so every task using the store ends before it is closed.
                async with trio.open_nursery() as services:
                    admin_port, push, tls = await self._start_services(services, watcher, store)
                    self._ready = not self._shutdown.is_set()
                    self.ports = DaemonPorts(
                        url,
                        registry_port,
                        admin_port,
                        None if push is None else push.port,
                        None if tls is None else tls.port,
                    )
                    task_status.started(self.ports)
                    await self._shutdown.wait()
                    self._ready = False
                    # Parked long-polls answer "no news", so the API servers drain at once.
                    self.hub.close()
                    self.events.close()
                    for lean in (push, tls):
                        if lean is not None:
                            lean.shutdown_nowait()
                    # The API server stops on the shutdown event; the rest are cancelled.
                    services.cancel_scope.deadline = trio.current_time() + _STOP_TIMEOUT_S
                    for scope in self._scopes:
                        scope.cancel()
            if server is not None:
                server.shutdown_nowait()
                with trio.move_on_after(_STOP_TIMEOUT_S):
                    await server.wait_stopped()
            nursery.cancel_scope.deadline = trio.current_time() + _STOP_TIMEOUT_S

    async def _start_services(
        self, nursery: trio.Nursery, watcher: RegistryWatcher, store: ResourceStore
    ) -> tuple[int, HTTPServer | None, HTTPServer | None]:
        """Start the watcher, store, reconciler and API servers; the API's port, the push and
        TLS servers."""
        cfg = self.config
        await nursery.start(self._scoped, watcher.run)
        await nursery.start(self._scoped, store.run)
        reconciler = self.reconciler = Reconciler(self.hub, Compiler(), watcher, store)
        await nursery.start(self._scoped, reconciler.run)
        await nursery.start(self._scoped, PresenceWatch(self.hub.presence, self.events).run)
        await nursery.start(self._scoped, EndpointWatch(watcher, self.events).run)
        assert self.identity is not None
        await nursery.start(self._scoped, JoinTokenSweeper(self.identity.join_tokens).run)
        await nursery.start(self._scoped, RevocationSync(self.identity).run)
        app = build_api(
            self,
            auth=self.auth,
            metrics=self.metrics,
            is_ready=self.is_ready,
            audit=self.audit,
            max_body_bytes=cfg.api_max_body_bytes,
            telemetry=self.telemetry,
            taps=self.taps,
            events=self.events,
        )
        limit_events = limit_events_counter(self.metrics)
        push: HTTPServer | None = None
        if cfg.push_port is not None:
            push = HTTPServer(
                app,
                cfg.push_host,
                cfg.push_port,
                limits=cfg.listener_limits,
                on_event=lambda event: limit_events.labels("push", event).inc(),
                sock=self.sockets.get("push"),
            )
            await _start_lean(nursery, push, "push")
        tls: HTTPServer | None = None
        if cfg.tls_port is not None:
            identity = self.identity
            tls_sock = self.sockets.get("tls")
            tls_host = cfg.tls_host if tls_sock is None else tls_sock.getsockname()[0]
            dns_names, ips = server_sans(tls_host, cfg.tls_sans)
            server_tls = ServerTls(
                identity.ca,
                lambda: identity.trust_domain,
                leaf_ttl=lambda: identity.leaf_ttl,
                dns_names=dns_names,
                ips=ips,
            )
            await nursery.start(self._scoped, server_tls.run)
            tls = HTTPServer(
                app,
                cfg.tls_host,
                cfg.tls_port,
                tls=server_tls.context,
                limits=cfg.listener_limits,
                on_event=lambda event: limit_events.labels("tls", event).inc(),
                sock=tls_sock,
            )
            await _start_lean(nursery, tls, "TLS")
            listen = f"{tls_host}:{tls.port}"
            identity.server_tls = lambda: server_tls.current.as_json(listen)
        api = AsgiServer(
            app,
            cfg.admin_host,
            cfg.admin_port,
            error_logger=logging.getLogger("controld.admin"),
            shutdown=self._shutdown,
            sock=self.sockets.get("admin"),
        )
        port: int = await nursery.start(api.run)
        return port, push, tls

    async def _scoped(
        self, run: Any, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """``run(task_status=...)`` in a cancel scope of its own, cancelled at shutdown."""
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            await run(task_status=task_status)


async def _start_lean(nursery: trio.Nursery, server: HTTPServer, what: str) -> None:
    try:
        await nursery.start(server.run)
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {server.host}:{server.port} ({what}): {exc.strerror}"
        ) from exc


def _record_key(state_dir: Path) -> RecordKey:
    """The key sealing controld's KV records, ``<state dir>/record-key`` (made at first start);
    :class:`TokenFileError` when it can't be read or made, or others may read it."""
    path = state_dir / RECORD_KEY_FILE
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return RecordKey.load_or_create(path)
    except (OSError, ValueError) as exc:
        raise TokenFileError(f"record key {path}: {exc}") from exc


def _import_root(cfg: DaemonConfig) -> RootCA | None:
    """The root to import on first start (``ca_import_cert``/``_key``), read only then."""
    cert_path, key_path = cfg.ca_import_cert, cfg.ca_import_key
    if cert_path is None or key_path is None or CAStore(cfg.ca_dir).read_state() is not None:
        return None
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise CAFileError(f"cannot read the CA root to import: {exc}") from exc
    return RootCA.from_pem(cert_pem, key_pem, source=f"{cert_path} + {key_path}")
