"""The sidecar service: configuration in, listeners and admin API out, reload and drain.

Lifecycle (systemd ``Type=notify``): READY=1 once the listeners are bound and the admin API
serves; SIGHUP reloads the bootstrap and snapshot files atomically (a bad file keeps the old
configuration and says why); SIGTERM or SIGINT, or ``POST /drain``, drains
(:mod:`meshd.drain`): STOPPING=1, ``/ready`` 503, leave the registry, keep serving for
``drain_delay_s`` (a second SIGTERM or SIGINT cuts it short), then stop accepting, let
in-flight requests finish within ``drain_timeout_s``, exit 0.

A restart is not a removal: SIGUSR2 (systemd's ``RestartKillSignal=``), or a successor that took
the listening sockets over (``meshd run --takeover``, :mod:`meshd.handoff`), drains the same
way but keeps the registry registration and skips the delay: the sockets live on in the service
manager or the successor, which registers the same IDs again.

With ``snapshot.controld`` the snapshots come from controld (:mod:`meshd.control.source`):
the admin API serves at once (``/ready`` answers 503), READY=1 follows the first snapshot
applied. If none arrived within :data:`CACHE_AFTER_S`, the cached one (``cache_file``) is
served meanwhile. SIGHUP then re-reads the bootstrap only and keeps the snapshot in service;
a changed controld source or descriptor takes effect by registering again.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from meshcore import __version__
from meshcore.errors import ConfigError
from meshcore.model import Bootstrap, Snapshot
from meshcore.model.loading import load_model
from meshcore.model.snapshot import LOCAL_APP_CLUSTER
from meshcore.runtime.activation import InheritedSocket
from meshcore.runtime.sdnotify import Notifier, WatchdogService
from meshd.access.guard import AuthzContext
from meshd.accesslog import AccessLog
from meshd.admin.app import build_admin_app
from meshd.admin.server import AdminServer
from meshd.cluster.healthcheck import HealthChecker
from meshd.cluster.pool import PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.cluster.state import ClusterStates
from meshd.config import RuntimeConfig, build_runtime
from meshd.context import ProxyShared
from meshd.control.settings import ControlSettings, control_settings
from meshd.control.source import ControlSource, load_cache
from meshd.drain import IDLE_CLOSE_AFTER_S, DrainControl
from meshd.errors import SnapshotRejected
from meshd.features import ENFORCED, check_features, features_header
from meshd.handoff import Takeover
from meshd.http.mirror import MirrorService
from meshd.listeners import ListenerManager
from meshd.mtls import MeshTls
from meshd.ratelimit import RateLimits
from meshd.registration import Registration
from meshd.stats import Stats, build_registry
from meshd.succession import Succession
from meshd.telemetry.delta import ClusterFacts, ReportBuilder
from meshd.telemetry.exporter import SpanExporter
from meshd.telemetry.reporter import TelemetryReporter
from meshd.workers import WorkerSupervisor

if TYPE_CHECKING:
    # The identity modules (and cryptography) load only when the bootstrap has ``identity:``.
    from meshd.identity import IdentityService
    from meshd.identity.static import StaticIdentity
    from meshd.identity.trust import ControldTrust

log = structlog.get_logger("meshd.sidecar")

#: How often a worker checks that its primary process is still there.
_PRIMARY_CHECK_S = 0.5
#: controld mode: how long start-up waits for controld before serving the cached snapshot.
CACHE_AFTER_S = 2.0


def load_config(bootstrap_path: Path) -> tuple[Bootstrap, Snapshot | None]:
    """Read and validate the bootstrap file and the snapshot file it names.

    A relative snapshot path is taken relative to the bootstrap file. With
    ``snapshot.controld`` there is no file: the snapshot is None, and the controld settings
    are checked (token file readable, no https yet, one worker).
    """
    bootstrap = load_model(Bootstrap, bootstrap_path)
    source = bootstrap.snapshot.file
    if source is None:
        control_settings(bootstrap, bootstrap_path)
        return bootstrap, None
    if not source.is_absolute():
        source = bootstrap_path.parent / source
    return bootstrap, load_model(Snapshot, source)


class Sidecar:
    """One meshd process (or one worker of it)."""

    def __init__(
        self,
        bootstrap_path: Path,
        *,
        notifier: Notifier | None = None,
        inherited: list[InheritedSocket] | None = None,
        admin: bool = True,
        worker_index: int = 0,
        enforced: frozenset[str] = ENFORCED,
        takeover: Takeover | None = None,
        handoff_path: Path | None = None,
    ) -> None:
        self.bootstrap_path = bootstrap_path
        #: The snapshot features this sidecar enforces (and declares to controld); a snapshot
        #: using another one is refused. Tests pass fewer to play an older meshd.
        self.enforced = enforced
        #: The takeover this process came from and the hand-off it serves (``handoff_path``).
        self.succession = Succession(self, takeover, handoff_path)
        self.notifier = notifier or Notifier(None)
        self.stats = Stats()
        self.stats.cert_expiry = self._cert_not_after
        self.registry = build_registry(self.stats, self._pool_stats)
        #: What inbound access control keeps across snapshots (JWKS caches, log limiters).
        self.authz = AuthzContext(self.stats)
        #: Token buckets of the snapshot's rate limits, kept across snapshots.
        self.rate_limits = RateLimits(self.stats.policy)
        #: Sends mirrored copies of requests through the clusters of the runtime in force.
        self.mirror = MirrorService(self._mirror_cluster, self.stats.policy)
        #: mTLS mode and contexts (contexts only once there is an identity).
        self.tls = MeshTls()
        self.pools = PoolManager(self.tls)
        #: Cluster health kept across snapshots (breakers, budgets, outliers, health checks).
        self.cluster_states = ClusterStates(self.stats.policy)
        self.health_checks = HealthChecker(self.cluster_states, self.tls)
        self.shared = ProxyShared(
            stats=self.stats, access_log=AccessLog(enabled=False, sample_rate=1.0), tls=self.tls
        )
        self.listeners = ListenerManager(self.shared, inherited)
        #: 0 in the primary process, 1.. in the workers it supervises.
        self.worker_index = worker_index
        self.workers: WorkerSupervisor | None = None
        self.runtime: RuntimeConfig | None = None
        self.admin_port: int | None = None
        self._serve_admin = admin
        self._ready = False
        #: Drain phase; the delay a second SIGTERM cuts short.
        self.drain_control = DrainControl()
        #: Self-registration in the service registry (bootstrap ``registry:``; primary only).
        self.registration: Registration | None = None
        #: controld mode: the snapshot source (None with a snapshot file).
        self.control: ControlSource | None = None
        self._control_settings: ControlSettings | None = None
        self._control_scope = trio.CancelScope()
        #: Workload certificate (bootstrap ``identity:``; enrolled: primary only; files: every
        #: process); :attr:`tls` builds the mTLS contexts from it.
        self.identity: IdentityService | StaticIdentity | None = None
        #: ``self.identity`` when it comes from files (``identity.static``).
        self._static_identity: StaticIdentity | None = None
        #: The bootstrap in force (a pushed snapshot is applied with it).
        self._bootstrap: Bootstrap | None = None
        #: controld mode: the telemetry reporter (None when off or in file mode).
        self.telemetry: TelemetryReporter | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Sidecar] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until drained. Raises :class:`ConfigError` if the first configuration is bad."""
        bootstrap, snapshot = load_config(self.bootstrap_path)
        workers = bootstrap.workers
        if workers > 1 and self.listeners.has_inherited:
            log.warning("socket activation: serving in one process, workers ignored")
            workers = 1
        if workers > 1:
            self.listeners.reuse_port = True
        self._bootstrap = bootstrap
        static = bootstrap.identity.static if bootstrap.identity is not None else None
        if static is not None:
            from meshd.identity.static import StaticIdentity

            # Loaded before the first snapshot applies, so STRICT holds from the start.
            self.identity = self._static_identity = StaticIdentity(
                static, self.bootstrap_path.parent
            )
            self.tls.use(self.identity.current)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.pools.run)
            await nursery.start(self.health_checks.run)
            await nursery.start(self.shared.run_deadlines)
            await nursery.start(self.mirror.run)
            await nursery.start(self.succession.run)
            self.shared.mirror = self.mirror
            await nursery.start(self.listeners.run)
            if bootstrap.tracing is not None:
                # Read once: a changed tracing section takes a restart.
                exporter = SpanExporter(
                    bootstrap.tracing,
                    service=bootstrap.service,
                    proxy_id=bootstrap.node_id,
                    stats=self.stats.policy,
                )
                self.shared.tracer = exporter.recorder
                await nursery.start(exporter.run)
            source = "file"
            enrolled = self._enrolled_identity(bootstrap)
            if snapshot is not None:
                try:
                    self._apply(bootstrap, snapshot)
                except SnapshotRejected as exc:
                    raise ConfigError(str(exc)) from exc
            else:
                control = await nursery.start(self._run_control, bootstrap)
                if bootstrap.telemetry.enabled:
                    self.telemetry = TelemetryReporter(
                        builder=ReportBuilder(self.stats, bootstrap.service),
                        proxy_id=bootstrap.node_id,
                        shared=self.shared,
                        client=control.side_client,
                        facts=self._telemetry_facts,
                        cert_not_after=self._cert_not_after,
                        ejected=self._ejected_endpoints,
                        policy=self.stats.policy,
                        interval_s=bootstrap.telemetry.interval_s,
                    )
                    await nursery.start(self.telemetry.run)
            if self._serve_admin:
                app = build_admin_app(self, self.registry)
                port = bootstrap.admin.port + self.worker_index if bootstrap.admin.port else 0
                sock = self.succession.admin_socket(
                    bootstrap.admin.host, port, primary=self.worker_index == 0
                )
                admin = AdminServer(app, bootstrap.admin.host, port, sock=sock)
                self.succession.serving_admin(admin)
                self.admin_port = await nursery.start(admin.run)
            if self._static_identity is not None:
                nursery.start_soon(self.tls.run, self._static_identity)
            elif enrolled is not None:
                nursery.start_soon(self._run_identity, enrolled)
                nursery.start_soon(self.tls.run, enrolled)
            if snapshot is None:
                snapshot, source = await self._first_snapshot()
                assert self._bootstrap is not None
                bootstrap = self._bootstrap
            if bootstrap.registry is not None and self.worker_index == 0:
                self.registration = Registration.for_sidecar(
                    self, bootstrap.registry, self.stats, bootstrap_path=self.bootstrap_path
                )
                await nursery.start(self.registration.run)
            if workers > 1 and self.worker_index == 0:
                self.workers = WorkerSupervisor(self.bootstrap_path, workers)
                await nursery.start(self.workers.run)
            await nursery.start(WatchdogService(self.notifier, _watchdog()).run)
            nursery.start_soon(self._signals)
            if self.worker_index:
                nursery.start_soon(self._watch_primary, os.getppid())
            self._ready = True
            self.notifier.ready(f"serving snapshot {snapshot.version}")
            log.info(
                "ready",
                version=snapshot.version,
                source=source,
                admin_port=self.admin_port,
                listeners=[d["address"] for d in self.listeners.describe()],
            )
            task_status.started(self)
            self.succession.serving()
            await self.drain_control.requested.wait()
            restart = self.drain_control.restart
            if self.registration is not None:
                # A restart keeps the registration for the next process; a stop leaves the
                # registry first (bounded), so no new traffic is sent our way.
                await (self.registration.hand_over() if restart else self.registration.stop())
            if restart:
                self.drain_control.close()
            else:
                await self._drain_delay()
            # No new snapshot from here on (its listeners could not open anyway).
            self._control_scope.cancel()
            await self._drain(
                bootstrap.drain_timeout_s
                if self.runtime is None
                else self.runtime.bootstrap.drain_timeout_s
            )
            nursery.cancel_scope.cancel()

    # -- controld mode ------------------------------------------------------------------------

    async def _run_control(
        self,
        bootstrap: Bootstrap,
        *,
        task_status: trio.TaskStatus[ControlSource] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        settings = control_settings(bootstrap, self.bootstrap_path)
        self._control_settings = settings
        # An https controld is verified (and called with the leaf) as the identity does.
        trust: ControldTrust | None = getattr(self.identity, "trust", None)
        self.control = ControlSource(
            settings.config,
            bootstrap.descriptor(__version__),
            self._apply_pushed,
            token=settings.token,
            cache_file=settings.cache_file,
            user_agent=f"meshd/{__version__}",
            on_rejected=lambda _error: self.stats.snapshot_rejected(),
            token_provider=self._enrolled_token if _enrolls(bootstrap) else None,
            tls=None if trust is None else trust.context,
            peer_id=None if trust is None else trust.peer_id,
            features=features_header(self.enforced),
        )
        with self._control_scope:
            await self.control.run(task_status=task_status)

    def _enrolled_identity(self, bootstrap: Bootstrap) -> IdentityService | None:
        """The identity service enrolling with controld, made before the snapshot source
        (which may call controld over TLS with it); None for static or no identity."""
        if self._static_identity is not None or bootstrap.identity is None:
            return None
        if self.worker_index != 0:
            return None
        from meshd.identity import IdentityService

        enrolled = IdentityService.from_bootstrap(bootstrap, self.bootstrap_path.parent)
        self.identity = enrolled
        return enrolled

    def _enrolled_token(self) -> str | None:
        """The sidecar token controld handed out with the enrollment (None before it)."""
        if self.identity is None:
            return None
        from meshd.identity import IdentityService

        identity = self.identity
        return identity.sidecar_token if isinstance(identity, IdentityService) else None

    async def _run_identity(self, identity: IdentityService) -> None:
        from meshd.identity import IdentityError

        try:
            await identity.run()
        except IdentityError as exc:
            # Without an identity the data path stays plaintext: keep serving, say why (also in
            # /config_dump).
            log.error("workload identity unavailable", error=str(exc))

    async def _first_snapshot(self) -> tuple[Snapshot, str]:
        """Wait for controld's first snapshot, or serve the cached one if it is slow to come."""
        control = self.control
        assert control is not None
        with trio.move_on_after(CACHE_AFTER_S):
            await control.first_applied.wait()
        source = "controld"
        if self.runtime is None:
            self._serve_cache(control)
            source = "cache"
        if self.runtime is None:
            log.warning("waiting for the first snapshot from controld", url=control.config.url)
            self.notifier.status("waiting for the first snapshot from controld")
            await control.first_applied.wait()
            source = "controld"
        assert self.runtime is not None
        return self.runtime.snapshot, source

    def _serve_cache(self, control: ControlSource) -> None:
        settings = self._control_settings
        bootstrap = self._bootstrap
        if settings is None or settings.cache_file is None or bootstrap is None:
            return
        if not settings.cache_file.exists():
            log.info("no cached snapshot yet", path=str(settings.cache_file))
            return
        try:
            cached = load_cache(settings.cache_file)
            self._apply(bootstrap, cached.snapshot)
        except (ConfigError, SnapshotRejected) as exc:
            log.error("cannot serve the cached snapshot", error=str(exc))
            return
        control.adopt(cached.version, cached.hash)
        log.warning(
            "controld not reachable yet, serving the cached snapshot",
            version=cached.version,
            error=control.last_error,
        )

    def _apply_pushed(self, snapshot: Snapshot) -> None:
        """The :class:`ControlSource` callback: raises to reject (NACK) ``snapshot``."""
        bootstrap = self._bootstrap
        assert bootstrap is not None
        if self.shared.draining:
            raise SnapshotRejected("draining")
        self._apply(bootstrap, snapshot)
        if self._ready and not self.is_draining():
            self.notifier.status(f"serving snapshot {snapshot.version}")
        log.info("snapshot applied", version=snapshot.version)

    def _reconfigure_control(self, bootstrap: Bootstrap) -> None:
        """After a reload: register again if the source or the descriptor changed."""
        control = self.control
        assert control is not None
        settings = control_settings(bootstrap, self.bootstrap_path)
        descriptor = bootstrap.descriptor(__version__)
        if settings == self._control_settings and descriptor == control.descriptor:
            return
        self._control_settings = settings
        control.update(
            settings.config, descriptor, token=settings.token, cache_file=settings.cache_file
        )
        log.info("controld source or descriptor changed, registering again")

    async def _signals(self) -> None:
        with trio.open_signal_receiver(
            signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2
        ) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR2:
                    self.start_restart("SIGUSR2")
                elif signum == signal.SIGHUP:
                    if self.is_draining():
                        log.warning("draining: SIGHUP ignored")
                        continue
                    self.reload()
                    if self.workers is not None:
                        self.workers.signal_all(signal.SIGHUP)
                elif self.drain_control.started:
                    self.drain_control.skip_delay()  # a second SIGTERM: close now
                else:
                    self.start_drain()

    async def _watch_primary(self, primary: int) -> None:
        """A worker drains once its primary process is gone."""
        try:
            pidfd = os.pidfd_open(primary)
        except (AttributeError, OSError):
            # No pidfd (old kernel): notice the re-parenting instead.
            while os.getppid() == primary:  # noqa: ASYNC110 -- nothing to wait on
                await trio.sleep(_PRIMARY_CHECK_S)
        else:
            try:
                await trio.lowlevel.wait_readable(pidfd)  # readable once the process exits
            finally:
                trio.lowlevel.notify_closing(pidfd)
                os.close(pidfd)
        log.warning("primary process gone, draining", primary=primary)
        self.start_drain()

    def reload(self) -> bool:
        """Re-read the configuration files; on any error keep serving the current one."""
        self.notifier.reloading()
        try:
            bootstrap, snapshot = load_config(self.bootstrap_path)
            if self._static_identity is not None:
                # New certificate files apply to new connections (MeshTls follows).
                self._static_identity.reload()
            if (snapshot is None) != (self.control is not None):
                raise ConfigError(
                    f"{self.bootstrap_path}: switching between snapshot.file and "
                    "snapshot.controld needs a restart"
                )
            if snapshot is None:
                # controld mode: the bootstrap changes, the snapshot in service stays.
                current = self.runtime.snapshot if self.runtime is not None else None
                if current is not None:
                    self._apply(bootstrap, current)
                self._bootstrap = bootstrap
                self._reconfigure_control(bootstrap)
                snapshot = current
            else:
                self._apply(bootstrap, snapshot)
                self._bootstrap = bootstrap
        except (ConfigError, SnapshotRejected) as exc:
            self.stats.snapshot_rejected()
            log.error("reload rejected, keeping the running configuration", error=str(exc))
            self.notifier.ready(f"reload rejected: {exc}".splitlines()[0])
            return False
        version = snapshot.version if snapshot is not None else None
        self.notifier.ready(f"serving snapshot {version}")
        log.info("reloaded", version=version)
        return True

    def _apply(self, bootstrap: Bootstrap, snapshot: Snapshot) -> None:
        """Build, bind, then swap: nothing changes unless all of it works."""
        # Never accept what isn't enforced: refused before anything is built.
        check_features(snapshot, self.enforced)
        runtime = build_runtime(
            bootstrap,
            snapshot,
            self.pools,
            self.authz,
            self.rate_limits,
            states=self.cluster_states,
            previous=self.runtime.clusters if self.runtime is not None else None,
        )
        self.listeners.apply(runtime)
        self.runtime = runtime
        models = [c.model for c in runtime.clusters.values()]
        self.cluster_states.apply(models)
        self.health_checks.update(models)
        self.tls.mode = snapshot.mtls
        shared = self.shared
        shared.trace_sample_rate = bootstrap.trace_sample_rate
        shared.access_log = AccessLog(
            enabled=bootstrap.access_log.enabled, sample_rate=bootstrap.access_log.sample_rate
        )
        self.stats.snapshot_applied(snapshot.version)

    def start_restart(self, why: str) -> None:
        """Begin a restart drain (idempotent): keep the registration, no delay."""
        if self.drain_control.request(restart=True):
            log.info("restarting: handing over, registration kept", reason=why)
            self.notifier.stopping()

    def start_drain(self) -> None:
        """Begin draining (idempotent): ``/ready`` answers 503 from now on."""
        if self.drain_control.request():
            log.info("draining")
            self.notifier.stopping()

    async def _drain_delay(self) -> None:
        """Keep serving while callers learn we are gone (workers: the primary did it)."""
        bootstrap = self.runtime.bootstrap if self.runtime is not None else self._bootstrap
        delay_s = bootstrap.drain_delay_s if bootstrap is not None and not self.worker_index else 0
        if delay_s > 0:
            log.info("drain delay, still serving", delay_s=delay_s)
            self.notifier.status(f"draining: still serving for {delay_s:g} s")
            await self.drain_control.wait_delay(delay_s)
        self.drain_control.close()

    async def _drain(self, grace_s: float) -> None:
        # Every answer from here on says ``Connection: close``. A kept-alive connection is
        # closed by us only once it has stayed idle for IDLE_CLOSE_AFTER_S: closing one its
        # client is just reusing races with the client's next request.
        self.shared.draining = True
        self.listeners.stop_accepting(close_silent=False)
        deadline = trio.current_time() + grace_s
        with trio.move_on_after(min(grace_s, IDLE_CLOSE_AFTER_S)):
            await self.listeners.wait_connections_done()
        self.listeners.close_silent()
        self.shared.start_drain()
        with trio.move_on_at(deadline):
            await self.listeners.wait_connections_done()
            if self.workers is not None:
                await self.workers.drain()
        left = self.listeners.connection_count
        if left:
            log.warning("drain timeout, closing connections", connections=left)
            self.listeners.cancel_connections()
        log.info("drained")

    # -- admin backend ------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Listeners bound and not draining."""
        return self._ready and not self.shared.draining

    def is_draining(self) -> bool:
        """Draining has begun."""
        return self.shared.draining or self.drain_control.started

    def config_dump(self) -> dict[str, Any]:
        """Bootstrap and snapshot in force."""
        out: dict[str, Any] = {"features": sorted(self.enforced)}
        if self.runtime is not None:
            out["bootstrap"] = self.runtime.bootstrap.model_dump(mode="json")
            out["snapshot"] = self.runtime.snapshot.model_dump(mode="json")
        if self.control is not None:
            out["control"] = self.control.describe()
        if self.identity is not None:
            out["identity"] = self.identity.describe()
        return out

    def listeners_info(self) -> list[dict[str, Any]]:
        """Listener state."""
        return self.listeners.describe()

    def clusters_info(self) -> list[dict[str, Any]]:
        """Cluster and endpoint state."""
        if self.runtime is None:
            return []
        return [c.describe() for c in self.runtime.clusters.values()]

    def stats_info(self) -> dict[str, Any]:
        """Counters as JSON, and the running meshd's version (which one serves after an
        upgrade)."""
        out = {
            "version": __version__,
            **self.stats.as_json(),
            "downstream_connections": self.listeners.connection_count,
        }
        out.update({f"drain.{k}": v for k, v in self.drain_control.describe().items()})
        tls = self.tls
        if tls.identity is not None or tls.lost:
            out["mtls"] = {
                "mode": tls.mode,
                "plaintext_refused": tls.plaintext_refused,
                "handshake_failed": tls.handshake_failed,
                # The certificate expired with no renewal: STRICT refuses everything.
                "lost": tls.lost,
                "no_identity_refused": tls.no_identity_refused,
                # Revoked peer certificates (controld's bundle): refused, connections reset.
                "revoked": len(tls.revoked.serials),
                "revoked_refused": tls.revoked.refused,
                "revoked_reset": tls.revoked.reset,
            }
        if self.control is not None:
            out["control"] = self.control.describe()
        return out

    def _mirror_cluster(self, name: str) -> ClusterRuntime | None:
        """The cluster called ``name`` in the configuration in force (mirrored copies)."""
        runtime = self.runtime
        return runtime.clusters.get(name) if runtime is not None else None

    def _cert_not_after(self) -> float | None:
        identity = self.tls.identity
        return identity.not_after.timestamp() if identity is not None else None

    def _telemetry_facts(self) -> ClusterFacts:
        runtime = self.runtime
        if runtime is None:
            return ClusterFacts()
        clusters = runtime.snapshot.clusters
        return ClusterFacts(
            services={c.name: c.service for c in clusters},
            mtls=frozenset(c.service for c in clusters if c.tls is not None),
            local=frozenset({LOCAL_APP_CLUSTER}),
        )

    def _ejected_endpoints(self) -> Iterator[str]:
        """``cluster/host:port`` of the endpoints outlier detection has ejected now."""
        if self.runtime is None:
            return
        for cluster in self.runtime.clusters.values():
            for ep in cluster.describe()["endpoints"]:  # type: ignore[attr-defined]
                outlier = ep.get("outlier")
                if isinstance(outlier, dict) and outlier.get("ejected"):
                    yield f"{cluster.name}/{ep['address']}"

    def _pool_stats(self) -> Iterator[tuple[str, str, int, int]]:
        if self.runtime is None:
            return
        for cluster in self.runtime.clusters.values():
            for ep in cluster.describe()["endpoints"]:  # type: ignore[attr-defined]
                yield cluster.name, ep["address"], ep["active"], ep["idle"]


def _watchdog() -> float | None:
    from meshcore.runtime.sdnotify import watchdog_interval

    return watchdog_interval()


def _enrolls(bootstrap: Bootstrap) -> bool:
    """The sidecar enrolls with controld (and so gets its sidecar token from it)."""
    return bootstrap.identity is not None and bootstrap.identity.static is None
