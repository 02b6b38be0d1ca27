"""When a sidecar's drain starts, how long its drain delay lasts, and what cuts it short.

A drain goes through three phases (:class:`DrainPhase`):

* ``serving``: normal operation.
* ``delay``: SIGTERM (or SIGINT, or ``POST /drain``) arrived. ``/ready`` answers 503, the
  sidecar leaves the registry, and everything else goes on as before (listeners accept,
  kept-alive connections are served, pushed snapshots apply) for ``drain_delay_s``, so callers
  get the endpoint list without this instance before its listeners close. A second SIGTERM or
  SIGINT ends the delay at once.
* ``closing``: the listeners stop accepting, in-flight requests get ``drain_timeout_s``, then
  the process exits.

:class:`DrainControl` is the small state machine the sidecar and its signal handler share; the
I/O around it (deregistration, closing listeners) stays in :mod:`meshd.sidecar`.

A restart (SIGUSR2, or a successor that took the sockets over, :mod:`meshd.handoff`) is a drain
with :attr:`DrainControl.restart` set: the sidecar keeps its registration, skips the delay and
goes straight to ``closing`` (the sockets live on in the service manager or the successor).
"""

from __future__ import annotations

import enum

import structlog
import trio

__all__ = ["IDLE_CLOSE_AFTER_S", "DrainControl", "DrainPhase"]

log = structlog.get_logger("meshd.drain")

#: In ``closing``, a kept-alive connection idle this long is closed; one in use gets
#: ``Connection: close`` on its next answer instead (closing it would race with that request).
IDLE_CLOSE_AFTER_S = 1.0


class DrainPhase(enum.Enum):
    """Where a sidecar is in its drain."""

    SERVING = "serving"
    DELAY = "delay"
    CLOSING = "closing"


class DrainControl:
    """The drain's phase, the request that starts it and the signal that skips its delay."""

    def __init__(self) -> None:
        self.phase = DrainPhase.SERVING
        #: Set by the first :meth:`request`.
        self.requested = trio.Event()
        self._skip = trio.Event()
        #: ``trio.current_time()`` at which the delay ends (None outside the delay).
        self.delay_ends_at: float | None = None
        #: The drain is a restart: keep the registration, no delay.
        self.restart = False

    @property
    def started(self) -> bool:
        """A drain was requested (whatever its phase)."""
        return self.requested.is_set()

    def request(self, *, restart: bool = False) -> bool:
        """Start the drain (a restart with ``restart``); False if it had already started
        (then nothing changes: a stop stays a stop, a restart a restart)."""
        if self.requested.is_set():
            return False
        self.restart = restart
        self.phase = DrainPhase.DELAY
        self.requested.set()
        return True

    def skip_delay(self) -> None:
        """End the delay now (or make a delay not yet begun end at once)."""
        if not self._skip.is_set():
            if self.phase is DrainPhase.DELAY:
                log.info("drain delay skipped")
            self._skip.set()

    async def wait_delay(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless :meth:`skip_delay` is called; True if it ran to the end.

        The phase stays ``delay`` until :meth:`close` (the caller may still have work to do
        between the two).
        """
        if delay_s <= 0 or self._skip.is_set():
            return delay_s <= 0
        self.delay_ends_at = trio.current_time() + delay_s
        try:
            with trio.move_on_after(delay_s):
                await self._skip.wait()
                return False
            return True
        finally:
            self.delay_ends_at = None

    def close(self) -> None:
        """Enter the ``closing`` phase."""
        self.phase = DrainPhase.CLOSING

    def describe(self) -> dict[str, object]:
        """JSON-able state (for ``/stats``)."""
        left = None
        if self.delay_ends_at is not None:
            left = round(max(0.0, self.delay_ends_at - trio.current_time()), 3)
        return {"phase": self.phase.value, "delay_left_s": left, "restart": self.restart}
