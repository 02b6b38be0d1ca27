"""The systemd notify protocol (``sd_notify``) and the watchdog keep-alive, without libsystemd.

A message is newline-separated ``KEY=VALUE`` assignments sent as one datagram to the
``AF_UNIX`` socket named by ``NOTIFY_SOCKET`` (a path, or an abstract name when it starts
with ``@``). Outside systemd the variable is unset and every call is a no-op returning False.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog
import trio

__all__ = ["Notifier", "WatchdogService", "watchdog_interval"]


class Notifier:
    """Sends state changes to the service manager; cheap and synchronous.

    A datagram send on a local socket never blocks meaningfully, so this is safe to call from
    trio tasks. Failures never raise: the call returns False, ``failures`` is incremented and
    a warning is logged, because a lost notification must not take the daemon down.
    """

    __slots__ = ("_address", "failures", "sent")

    def __init__(self, address: str | None) -> None:
        """Notify to ``address`` (a path or ``\\0``-prefixed abstract name); None disables."""
        self._address = address
        self.sent = 0
        self.failures = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET``; disabled when unset or not an AF_UNIX address."""
        raw = environ.get("NOTIFY_SOCKET", "")
        if raw.startswith("@"):
            return cls("\0" + raw[1:])
        if raw.startswith("/"):
            return cls(raw)
        if raw:
            # e.g. "vsock:CID:PORT" (systemd >= 254); a VM guest agent we don't need.
            structlog.get_logger(__name__).warning("sd_notify.unsupported_socket", address=raw)
        return cls(None)

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to talk to."""
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True when the datagram was sent.

        Values must not contain newlines (the protocol's separator); that is a programming
        error and raises ValueError.
        """
        if self._address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify field {key} contains a newline")
            lines.append(f"{key}={text}")
        data = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(data, self._address)
        except OSError as exc:
            self.failures += 1
            structlog.get_logger(__name__).warning(
                "sd_notify.failed", fields=",".join(fields), error=str(exc)
            )
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) finished: ``READY=1``, optionally with a status line."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=_one_line(status))

    def reloading(self) -> bool:
        """A reload started (``Type=notify-reload``); follow with :meth:`ready` when done."""
        return self.send(
            RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )

    def stopping(self) -> bool:
        """Shutdown (draining) started: ``STOPPING=1``."""
        return self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        """A free-form status line shown by ``systemctl status``; newlines become spaces."""
        return self.send(STATUS=_one_line(text))

    def watchdog(self) -> bool:
        """Keep-alive ping: ``WATCHDOG=1``."""
        return self.send(WATCHDOG=1)


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None when not requested.

    ``WATCHDOG_PID``, when set, must name this process: the variables may have leaked from a
    parent that is the one being watched.
    """
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


class WatchdogService:
    """Pings ``WATCHDOG=1`` every ``interval`` seconds until cancelled."""

    def __init__(self, notifier: Notifier, interval: float | None) -> None:
        """``interval`` None (no watchdog configured) makes :meth:`run` return at once."""
        self._notifier = notifier
        self._interval = interval

    @classmethod
    def from_env(
        cls, notifier: Notifier, environ: Mapping[str, str] = os.environ
    ) -> WatchdogService:
        """A service using :func:`watchdog_interval` of ``environ``."""
        return cls(notifier, watchdog_interval(environ))

    @property
    def interval(self) -> float | None:
        """Seconds between pings, or None when disabled."""
        return self._interval

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping now and then every interval; returns right after ``started()`` when disabled."""
        task_status.started()
        if self._interval is None or not self._notifier.enabled:
            return
        while True:
            self._notifier.watchdog()
            await trio.sleep(self._interval)
