"""controld under a service manager: sd_notify, the watchdog, signals and reload.

``controld run`` runs the daemon inside :class:`Lifecycle` (systemd ``Type=notify-reload``,
or ``Type=notify`` with ``ExecReload=kill -HUP $MAINPID``):

* ``READY=1`` (with a ``STATUS=`` line naming the listeners) once every listener is bound and
  the API serves;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the service manager asks for it (and
  ``WATCHDOG_PID``, if set, is this process), from the start on;
* SIGHUP: ``RELOADING=1`` (with ``MONOTONIC_USEC``), the configuration read again (the
  ``--config`` file and the command line), what can change applied, then ``READY=1`` with a
  status saying what was applied and what needs a restart. A configuration that doesn't
  parse is rejected as a whole: nothing changes, the error is logged and in the status.
* SIGTERM or SIGINT: ``STOPPING=1``, then the daemon stops (long-polls answered, listeners
  closed, the registry's database closed) and the process exits 0. While still starting
  (``STATUS=starting``, no ``READY=1`` yet) the start is cancelled instead.

What a reload applies:

* ``log-level``: at once, for every logger;
* the admin token: the ``--admin-token-file`` is read again, so a token is rotated by
  writing the new one into the file and sending SIGHUP (the old one is refused from then on).

Every other option (addresses, data dir, registry, KV prefix, limits, TLS names, log format)
is compared with the running configuration; a changed one is logged at warning level as
``restart needed`` with the option names, and named in the status line. Nothing is ignored
silently.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import structlog
import trio

from controld.activation import ListenerSockets, assign_sockets
from controld.auth import TokenFileError, load_admin_token
from controld.daemon import ControlDaemon, DaemonConfig, DaemonPorts
from meshcore.errors import MeshError
from meshcore.runtime.activation import InheritedSocket
from meshcore.runtime.logging import LogLevel
from meshcore.runtime.sdnotify import Notifier, WatchdogService

__all__ = [
    "Lifecycle",
    "ReloadError",
    "RunSettings",
    "listener_addresses",
    "listener_sockets",
    "restart_needed",
]

log = structlog.get_logger("controld.lifecycle")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ReloadError(MeshError):
    """The configuration read on SIGHUP is not valid (it is rejected as a whole)."""


@dataclass(frozen=True)
class RunSettings:
    """Everything ``controld run`` was configured with."""

    config: DaemonConfig
    log_level: str = "info"
    log_format: str = "json"


def listener_addresses(config: DaemonConfig) -> dict[str, tuple[str, int] | None]:
    """Each listener's configured ``(host, port)``, None when it is off."""
    registry = config.registry
    return {
        "admin": (config.admin_host, config.admin_port),
        "push": None if config.push_port is None else (config.push_host, config.push_port),
        "tls": None if config.tls_port is None else (config.tls_host, config.tls_port),
        "registry": None if registry is None else (registry.host, registry.port),
    }


def listener_sockets(config: DaemonConfig, inherited: list[InheritedSocket]) -> ListenerSockets:
    """The inherited sockets assigned to ``config``'s listeners (see :mod:`controld.activation`)."""
    return assign_sockets(inherited, listener_addresses(config))


def restart_needed(running: RunSettings, new: RunSettings) -> list[str]:
    """Names of the settings that differ and that only a restart applies."""
    names = [
        f.name
        for f in dataclasses.fields(DaemonConfig)
        if getattr(running.config, f.name) != getattr(new.config, f.name)
    ]
    names += [
        name for name in ("log_level", "log_format") if getattr(running, name) != getattr(new, name)
    ]
    return names


class Lifecycle:
    """Runs a :class:`ControlDaemon` until SIGTERM/SIGINT, reloading on SIGHUP (a service
    object)."""

    def __init__(
        self,
        daemon: ControlDaemon,
        settings: RunSettings,
        *,
        load: Callable[[], RunSettings],
        notifier: Notifier,
        watchdog: WatchdogService,
        log_level: LogLevel | None = None,
        on_ready: Callable[[DaemonPorts], None] | None = None,
    ) -> None:
        """``load`` reads the configuration again (raising :class:`ReloadError`); ``log_level``
        is the reloadable threshold of the logging configuration (None: not reloadable)."""
        self.daemon = daemon
        #: The settings the daemon runs with (only the reloadable parts ever change).
        self.settings = settings
        self._load = load
        self.notifier = notifier
        self._watchdog = watchdog
        self._log_level = log_level
        self._on_ready = on_ready
        #: Reloads answered (applied or rejected).
        self.reloads = 0
        self._up = False

    async def run(
        self, *, task_status: trio.TaskStatus[DaemonPorts] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until a stop signal has stopped the daemon (or it returned by itself)."""
        # Receivers first: a SIGHUP's default action would end the process.
        signals_wanted = (signal.SIGHUP, *_STOP_SIGNALS)
        with trio.open_signal_receiver(*signals_wanted) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._watchdog.run)
                nursery.start_soon(self._on_signals, signals, nursery)
                self.notifier.status("starting")
                ports: DaemonPorts = await nursery.start(self._serve, nursery)
                self._up = True
                status = serving_status(self.daemon.config, ports, self.daemon.sockets)
                self.notifier.ready(status)
                if self._on_ready is not None:
                    self._on_ready(ports)
                task_status.started(ports)

    async def _on_signals(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                if self._up:
                    self.reload()
                else:
                    # systemd sends no reload before READY=1; someone else did: say so.
                    log.warning("SIGHUP while starting: nothing to reload yet")
                continue
            name = signal.Signals(signum).name
            log.info("stopping", signal=name)
            self.notifier.stopping()
            self.notifier.status(f"stopping ({name})")
            if self._up:
                self.daemon.shutdown_nowait()
            else:
                # Still starting: abandon the start (every service object cleans up on
                # cancellation) rather than finish it only to stop.
                nursery.cancel_scope.cancel()
            return

    async def _serve(
        self, nursery: trio.Nursery, *, task_status: trio.TaskStatus[DaemonPorts]
    ) -> None:
        await self.daemon.run(task_status=task_status)
        nursery.cancel_scope.cancel()  # the signal task and the watchdog too

    def reload(self) -> bool:
        """Read the configuration again and apply what can change; False when rejected."""
        self.reloads += 1
        self.notifier.reloading()
        try:
            new = self._load()
            token = self._admin_token(new)
            if self._log_level is not None:
                LogLevel(new.log_level)  # validate before changing anything
        except (ReloadError, TokenFileError, ValueError) as exc:
            log.error("reload rejected, keeping the running configuration", error=str(exc))
            self.notifier.ready(f"reload rejected: {exc}".splitlines()[0])
            return False
        applied: list[str] = []
        if new.log_level != self.settings.log_level and self._log_level is not None:
            self._log_level.set(new.log_level)
            self.settings = dataclasses.replace(self.settings, log_level=new.log_level)
            applied.append("log_level")
        if token is not None and self.daemon.auth.replace_admin(token):
            applied.append("admin_token")
        restart = restart_needed(self.settings, new)
        if restart:
            log.warning("restart needed to apply", settings=restart)
        log.info("reloaded", applied=applied, restart_needed=restart)
        status = "reloaded"
        status += f"; applied: {', '.join(applied)}" if applied else "; nothing to apply"
        if restart:
            status += f"; restart needed for: {', '.join(restart)}"
        self.notifier.ready(status)
        return True

    def _admin_token(self, new: RunSettings) -> str | None:
        """The admin token file's token, when the file is still the running one's."""
        path = self.settings.config.token_path
        if new.config.token_path != path:
            return None  # a different file is a restart-needed change, reported as such
        return load_admin_token(path)


def serving_status(
    config: DaemonConfig, ports: DaemonPorts, sockets: ListenerSockets | None = None
) -> str:
    """The ``STATUS=`` line once up: each listener's address (``inherited`` when passed in)."""
    inherited: Mapping[str, str] = sockets.describe() if sockets is not None else {}
    parts = []
    for name, host, port in (
        ("API", config.admin_host, ports.admin_port),
        ("push", config.push_host, ports.push_port),
        ("TLS", config.tls_host, ports.tls_port),
    ):
        if port is not None:
            key = name.lower() if name != "API" else "admin"
            where = inherited.get(key) or f"{host}:{port}"
            parts.append(f"{name} {where}{' (inherited)' if key in inherited else ''}")
    if config.registry is not None and ports.registry_port is not None:
        where = inherited.get("registry") or f"{config.registry.host}:{ports.registry_port}"
        parts.append(f"registry {where}")
    else:
        parts.append(f"registry {ports.registry_url}")
    return "serving: " + ", ".join(parts)
