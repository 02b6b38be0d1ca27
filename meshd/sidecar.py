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

With ``workers: N`` the process started is the primary: it alone talks to controld, enrolls
the identity and registers; its worker processes (:mod:`meshd.workers`) follow it over a
channel and drain with it. The state and the admin views live in :mod:`meshd.sidecar_base`,
the controld and worker sources in :mod:`meshd.sidecar_control`.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from meshcore.errors import ConfigError
from meshcore.model import Bootstrap, Snapshot
from meshcore.model.loading import load_model
from meshcore.runtime.sdnotify import WatchdogService
from meshd.control.settings import control_settings
from meshd.drain import IDLE_CLOSE_AFTER_S
from meshd.errors import SnapshotRejected
from meshd.memory import settle_after_start
from meshd.telemetry.wiring import start_reporter, start_tracing

if TYPE_CHECKING:
    # The identity modules (and cryptography) load only when the bootstrap has ``identity:``;
    # registration, the worker modules and controld's client likewise only in the modes that
    # use them (issue 15: a file-mode sidecar doesn't carry them in its memory).
    pass

from meshd.sidecar_control import CACHE_AFTER_S, ControlledSidecar

log = structlog.get_logger("meshd.sidecar")

#: Longest a worker waits, in the primary's drain delay, for the SIGTERM that ends it.
_WORKER_DELAY_MAX_S = 3600.0

__all__ = ["CACHE_AFTER_S", "Sidecar", "load_config"]


def load_config(bootstrap_path: Path) -> tuple[Bootstrap, Snapshot | None]:
    """Read and validate the bootstrap file and the snapshot file it names.

    A relative snapshot path is taken relative to the bootstrap file. With
    ``snapshot.controld`` there is no file: the snapshot is None, and the controld settings
    are checked (token file readable, https only with an enrolled identity).
    """
    bootstrap = load_model(Bootstrap, bootstrap_path)
    source = bootstrap.snapshot.file
    if source is None:
        control_settings(bootstrap, bootstrap_path)
        return bootstrap, None
    if not source.is_absolute():
        source = bootstrap_path.parent / source
    return bootstrap, load_model(Snapshot, source)


class Sidecar(ControlledSidecar):
    """One meshd process (or one worker of it)."""

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Sidecar] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until drained. Raises :class:`ConfigError` if the first configuration is bad."""
        bootstrap, snapshot = load_config(self.bootstrap_path)
        self._controld = snapshot is None
        workers = bootstrap.workers
        if workers > 1:
            # Inherited sockets are shared with the workers as they are; others are bound by
            # each process.
            self.listeners.reuse_port = True
            if not self.worker_index:
                from meshd.workers.feed import WorkerFeed

                self._feed = WorkerFeed()
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
            await start_tracing(self, nursery, bootstrap)
            source = "file"
            enrolled = self._enrolled_identity(bootstrap)
            relayed = await self._follow_primary(nursery, bootstrap)
            if snapshot is not None:
                try:
                    self._apply(bootstrap, snapshot)
                except SnapshotRejected as exc:
                    raise ConfigError(str(exc)) from exc
            elif self.follower is None:
                control = await nursery.start(self._run_control, bootstrap)
                self.telemetry = await start_reporter(self, nursery, bootstrap, control)
            if self._serve_admin:
                from meshd.admin.app import build_admin_app
                from meshd.admin.server import AdminServer

                app = build_admin_app(self, self.metrics_text)
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
                if self._feed is not None:
                    nursery.start_soon(self._feed.follow_identity, enrolled)
            elif relayed is not None:
                nursery.start_soon(self.tls.run, relayed)
            if snapshot is None and self.follower is not None:
                await self.follower.first_snapshot.wait()
                assert self.runtime is not None
                snapshot, source = self.runtime.snapshot, "primary"
            elif snapshot is None:
                snapshot, source = await self._first_snapshot()
                assert self._bootstrap is not None
                bootstrap = self._bootstrap
            if bootstrap.registry is not None and self.worker_index == 0:
                from meshd.registration import Registration

                self.registration = Registration.for_sidecar(
                    self, bootstrap.registry, self.stats, bootstrap_path=self.bootstrap_path
                )
                await nursery.start(self.registration.run)
            if self._feed is not None:
                from meshd.workers import WorkerSupervisor

                self.workers = WorkerSupervisor(
                    self.bootstrap_path,
                    workers,
                    feed=self._feed,
                    inherited=self.listeners.inherited_sockets,
                )
                await nursery.start(self.workers.run)
            await nursery.start(WatchdogService(self.notifier, _watchdog()).run)
            await nursery.start(self._signals)
            if self.worker_index:
                from meshd.workers.follower import watch_primary

                nursery.start_soon(watch_primary, os.getppid(), self._primary_gone)
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
            if self._settle_memory:
                settle_after_start()
            await self.drain_control.requested.wait()
            restart = self.drain_control.restart
            if self._feed is not None and not restart:
                self._feed.announce_drain()  # the workers' /ready says 503 as ours does
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

    async def _signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(
            signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2
        ) as signals:
            # Before READY=1: a SIGHUP right after it must reload, not kill (default action).
            task_status.started()
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

    def reload(self) -> bool:
        """Re-read the configuration files; on any error keep serving the current one."""
        self.notifier.reloading()
        try:
            bootstrap, snapshot = load_config(self.bootstrap_path)
            if self._static_identity is not None:
                # New certificate files apply to new connections (MeshTls follows).
                self._static_identity.reload()
            if (snapshot is None) != self._controld:
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
                if self.control is not None:
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

    async def _drain_delay(self) -> None:
        """Keep serving while callers learn we are gone (workers: through the primary's delay,
        which ends with the SIGTERM it sends them)."""
        bootstrap = self.runtime.bootstrap if self.runtime is not None else self._bootstrap
        delay_s = bootstrap.drain_delay_s if bootstrap is not None and not self.worker_index else 0
        if self._delay_from_primary:
            log.info("drain delay, serving until the primary closes")
            await self.drain_control.wait_delay(_WORKER_DELAY_MAX_S)
        elif delay_s > 0:
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
        if self.workers is not None:
            self.workers.start_drain()  # they close their listeners with ours
        deadline = trio.current_time() + grace_s
        with trio.move_on_after(min(grace_s, IDLE_CLOSE_AFTER_S)):
            await self.listeners.wait_connections_done()
        self.listeners.close_silent()
        self.shared.start_drain()
        with trio.move_on_at(deadline):
            await self.listeners.wait_connections_done()
            if self.workers is not None:
                await self.workers.wait_exited()
        left = self.listeners.connection_count
        if left:
            log.warning("drain timeout, closing connections", connections=left)
            self.listeners.cancel_connections()
        log.info("drained")


def _watchdog() -> float | None:
    from meshcore.runtime.sdnotify import watchdog_interval

    return watchdog_interval()
