"""Runtime helpers shared by the daemons: logging setup, sd_notify and socket activation."""

from meshcore.runtime.activation import (
    SD_LISTEN_FDS_START,
    ActivationError,
    InheritedSocket,
    UnsupportedSocketError,
    listen_fds,
    match_socket,
)
from meshcore.runtime.logging import configure_logging
from meshcore.runtime.sdnotify import Notifier, WatchdogService, watchdog_interval

__all__ = [
    "SD_LISTEN_FDS_START",
    "ActivationError",
    "InheritedSocket",
    "Notifier",
    "UnsupportedSocketError",
    "WatchdogService",
    "configure_logging",
    "listen_fds",
    "match_socket",
    "watchdog_interval",
]
