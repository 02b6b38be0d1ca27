"""The state of one meshd process: what a snapshot changes, and what the admin API shows.

:class:`SidecarBase` builds the parts every sidecar process has (listeners, pools, cluster
states, mTLS, stats), applies a snapshot to them atomically (:meth:`SidecarBase._apply`) and
answers the admin API. :mod:`meshd.sidecar_control` adds where snapshots and the identity come
from in controld mode and in workers; :mod:`meshd.sidecar` the lifecycle (start, signals,
reload, drain).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from meshcore import __version__
from meshcore.model import Bootstrap, Snapshot
from meshcore.runtime.activation import InheritedSocket
from meshcore.runtime.sdnotify import Notifier
from meshd.access.guard import AuthzContext
from meshd.accesslog import AccessLog
from meshd.cluster.healthcheck import HealthChecker
from meshd.cluster.pool import PoolManager
from meshd.cluster.runtime import ClusterRuntime
from meshd.cluster.state import ClusterStates
from meshd.config import RuntimeConfig, build_runtime
from meshd.context import ProxyShared
from meshd.control.settings import ControlSettings
from meshd.drain import DrainControl
from meshd.features import ENFORCED, check_features
from meshd.handoff import Takeover
from meshd.http.mirror import MirrorService
from meshd.listeners import ListenerManager
from meshd.mtls import MeshTls
from meshd.ratelimit import RateLimits
from meshd.stats import Stats
from meshd.succession import Succession
from meshd.telemetry.wiring import cert_not_after

if TYPE_CHECKING:
    # The identity modules (and cryptography) load only when the bootstrap has ``identity:``;
    # controld's client, registration, telemetry and the workers likewise only in the modes
    # that use them (:mod:`meshd.sidecar`, :mod:`meshd.sidecar_control`); the metrics view at
    # the first scrape (:meth:`SidecarBase.metrics_text`).
    from meshd.control.source import ControlSource
    from meshd.identity import IdentityService
    from meshd.identity.static import StaticIdentity
    from meshd.metrics import MetricsView
    from meshd.registration import Registration
    from meshd.telemetry.reporter import TelemetryReporter
    from meshd.workers import WorkerSupervisor
    from meshd.workers.feed import WorkerFeed
    from meshd.workers.follower import WorkerFollower
    from meshd.workers.identity import RelayedIdentity

log = structlog.get_logger("meshd.sidecar")


class SidecarBase:
    """State of one meshd process (or worker), what a snapshot changes, what the admin
    API sees. :class:`meshd.sidecar.Sidecar` adds the lifecycle."""

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
        channel: socket.socket | None = None,
        settle_memory: bool = False,
    ) -> None:
        self.bootstrap_path = bootstrap_path
        #: The snapshot features this sidecar enforces (and declares to controld); a snapshot
        #: using another one is refused. Tests pass fewer to play an older meshd.
        self.enforced = enforced
        #: The takeover this process came from and the hand-off it serves (``handoff_path``).
        self.succession = Succession(self, takeover, handoff_path)
        self.notifier = notifier or Notifier(None)
        self.stats = Stats()
        self.stats.cert_expiry = lambda: cert_not_after(self)
        self._metrics: MetricsView | None = None
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
        #: Primary with workers: what they follow. Worker: its channel to the primary.
        self._feed: WorkerFeed | None = None
        self._channel = channel
        #: Collect and freeze the start-up objects once serving (:mod:`meshd.memory`); only
        #: for a process of its own (a test process hosting sidecars must not freeze its own).
        self._settle_memory = settle_memory
        self.follower: WorkerFollower | None = None
        #: A worker whose drain the primary started waits for its SIGTERM to close.
        self._delay_from_primary = False
        #: Snapshots come from controld (directly, or through the primary in a worker).
        self._controld = False
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
        #: Workload certificate (bootstrap ``identity:``; enrolled: by the primary, relayed to
        #: the workers; files: every process); :attr:`tls` builds the mTLS contexts from it.
        self.identity: IdentityService | StaticIdentity | RelayedIdentity | None = None
        #: ``self.identity`` when it comes from files (``identity.static``).
        self._static_identity: StaticIdentity | None = None
        #: The bootstrap in force (a pushed snapshot is applied with it).
        self._bootstrap: Bootstrap | None = None
        #: controld mode: the telemetry reporter (None when off or in file mode).
        self.telemetry: TelemetryReporter | None = None

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
        if self._feed is not None and self._controld:
            self._feed.publish_snapshot(snapshot)
        if self.follower is not None:
            self.follower.report_applied(snapshot.version)

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
        if self.workers is not None:
            out["workers"] = self.workers.describe()
        return out

    def metrics_text(self) -> bytes:
        """This sidecar's metrics in the Prometheus text format; the view (:mod:`meshd.metrics`)
        loads at the first call (the first scrape), not at start-up."""
        if self._metrics is None:
            from meshd.metrics import MetricsView

            self._metrics = MetricsView(self.stats, self._pool_stats)
        return self._metrics.render()

    def _mirror_cluster(self, name: str) -> ClusterRuntime | None:
        """The cluster called ``name`` in the configuration in force (mirrored copies)."""
        runtime = self.runtime
        return runtime.clusters.get(name) if runtime is not None else None

    def _pool_stats(self) -> Iterator[tuple[str, str, int, int]]:
        if self.runtime is None:
            return
        for cluster in self.runtime.clusters.values():
            for ep in cluster.describe()["endpoints"]:  # type: ignore[attr-defined]
                yield cluster.name, ep["address"], ep["active"], ep["idle"]
