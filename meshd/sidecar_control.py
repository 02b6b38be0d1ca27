"""Where a sidecar's snapshots and identity come from, beyond a snapshot file.

* controld mode (the primary process): the long-poll session (:mod:`meshd.control.source`),
  the enrolled identity, the cached snapshot served while controld is slow to answer.
* A worker process (``workers: N``): everything from the primary over its channel
  (:mod:`meshd.workers.follower`): the identity, revocations, the snapshots in controld mode,
  and the start of the primary's drain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio

from meshcore import __version__
from meshcore.errors import ConfigError
from meshcore.model import Bootstrap, Snapshot
from meshd.control.settings import control_settings
from meshd.errors import SnapshotRejected
from meshd.features import features_header

if TYPE_CHECKING:
    # controld's client and the worker's follower load in the modes that use them.
    from meshd.control.source import ControlSource

    # The identity modules (and cryptography) load only when the bootstrap has ``identity:``.
    from meshd.identity import IdentityService
    from meshd.identity.trust import ControldTrust
    from meshd.workers.identity import RelayedIdentity

from meshd.sidecar_base import SidecarBase

log = structlog.get_logger("meshd.sidecar")

#: controld mode: how long start-up waits for controld before serving the cached snapshot.
CACHE_AFTER_S = 2.0


class ControlledSidecar(SidecarBase):
    """Snapshots and identity from controld, or (a worker) from the primary process."""

    # -- controld mode ------------------------------------------------------------------------

    async def _run_control(
        self,
        bootstrap: Bootstrap,
        *,
        task_status: trio.TaskStatus[ControlSource] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        from meshd.control.source import ControlSource

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
            # controld relays an operator's drain (POST /v1/proxies/{id}/drain).
            on_drain=self.start_drain,
        )
        with self._control_scope:
            await self.control.run(task_status=task_status)

    async def _follow_primary(
        self, nursery: trio.Nursery, bootstrap: Bootstrap
    ) -> RelayedIdentity | None:
        """A worker: follow the primary's channel (identity, controld snapshots, drain) and
        wait for its first batch; the relayed identity if the sidecar enrolls one."""
        if self._channel is None:
            return None
        relayed = None
        if _enrolls(bootstrap):
            from meshd.workers.identity import RelayedIdentity

            relayed = RelayedIdentity()
            self.identity = relayed
        from meshd.workers.follower import WorkerFollower

        self.follower = WorkerFollower(
            self._channel,
            apply=self._apply_relayed if self._controld else None,
            on_drain=self._drain_by_primary,
            on_primary_gone=self._primary_gone,
            identity=relayed,
        )
        await nursery.start(self.follower.run)
        await self.follower.synced.wait()
        if relayed is not None:
            # In force before the first snapshot applies, so STRICT holds from the start.
            self.tls.use(relayed.current)
        return relayed

    def _apply_relayed(self, snapshot: Snapshot) -> None:
        """A worker in controld mode: the snapshot the primary applied."""
        if self.shared.draining:
            raise SnapshotRejected("draining")
        assert self._bootstrap is not None
        self._apply(self._bootstrap, snapshot)
        log.info("snapshot applied", version=snapshot.version)

    def _drain_by_primary(self) -> None:
        if self.drain_control.request():
            self._delay_from_primary = True
            log.info("draining with the primary")

    def _primary_gone(self) -> None:
        self.start_drain()
        self.drain_control.skip_delay()

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
        from meshd.control.cache import load_cache

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


def _enrolls(bootstrap: Bootstrap) -> bool:
    """The sidecar enrolls with controld (and so gets its sidecar token from it)."""
    return bootstrap.identity is not None and bootstrap.identity.static is None
