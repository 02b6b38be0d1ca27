"""The byte pump: copy two streams into each other until both ends are done.

:func:`pump` is the whole of an L4 (TCP) proxy connection once the upstream is connected,
and the tunnel the HTTP proxy keeps after a ``101 Switching Protocols``. Each direction runs
in its own task; an EOF on one side becomes ``send_eof()`` (``shutdown(SHUT_WR)`` for a
:class:`~meshd.net.stream.SocketStream`) on the other, and the other direction keeps going
until it ends too (TCP half-close).

When both ends are plain :class:`~meshd.net.stream.SocketStream` sockets, no task wakes per
read: the run's reactor (:mod:`meshd.net.reactor`) moves the bytes as epoll reports the
sockets ready, small reads with ``read``/``write`` and bulk with ``splice(2)`` through a
pipe (zero-copy). Any other :class:`Stream` (trio memory streams, TLS) goes through
``receive_some``/``send_all`` in a task per direction.

The pump never closes its streams; that is the caller's job, and how depends on
:attr:`PumpResult.reason`:

* ``"eof"``: both sides ended cleanly and each has been sent our EOF; ``aclose()`` both.
* ``"reset"``: one side broke (reset, broken pipe, or closed under us). ``reset()`` the
  other so its peer sees an RST rather than a clean end it might take for a whole message.
* ``"idle_timeout"``: nothing moved in either direction for ``idle_timeout_s``; close or
  reset both.

Cancellation of the calling scope propagates as usual (no result is returned for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import trio

from meshd.net.reactor import EPOLL_AVAILABLE, ProgressCallback, PumpReason, relay
from meshd.net.stream import RECEIVE_SIZE, SocketStream, Stream

__all__ = [
    "SPLICE_AVAILABLE",
    "ProgressCallback",
    "PumpReason",
    "PumpResult",
    "pump",
    "reactor_can_pump",
]

SPLICE_AVAILABLE: Final = EPOLL_AVAILABLE
"""Whether this platform has ``os.splice`` and epoll (Linux), which the reactor needs."""

# The copy path does not checkpoint while the streams keep up, so a busy connection would
# starve the other tasks and never see a cancellation: yield after this many chunks.
_YIELD_EVERY: Final = 16


@dataclass(frozen=True, slots=True)
class PumpResult:
    """What a finished :func:`pump` moved, and why it stopped.

    The counts are bytes delivered to the other side, ``initial_to_*`` bytes included.
    """

    downstream_to_upstream: int
    upstream_to_downstream: int
    reason: PumpReason


def reactor_can_pump(down: Stream, up: Stream) -> bool:
    """True if :func:`pump` can move bytes between these two in the reactor (epoll, splice).

    Only exact :class:`SocketStream` instances qualify: a subclass might hold bytes of
    its own that the kernel does not know about.
    """
    return SPLICE_AVAILABLE and type(down) is SocketStream and type(up) is SocketStream


async def pump(
    down: Stream,
    up: Stream,
    *,
    idle_timeout_s: float,
    initial_to_up: bytes = b"",
    initial_to_down: bytes = b"",
    on_progress: ProgressCallback | None = None,
    use_reactor: bool | None = None,
) -> PumpResult:
    """Copy ``down`` into ``up`` and ``up`` into ``down`` until both have ended.

    Args:
        down: The downstream (client-side) connection.
        up: The upstream (server-side) connection.
        idle_timeout_s: Stop with ``"idle_timeout"`` once no bytes have been read in either
            direction for this long (``math.inf``: never). Must be positive.
        initial_to_up: Bytes already read from ``down`` that belong to ``up`` (say, what
            followed the headers of an HTTP upgrade); sent before anything else.
        initial_to_down: Likewise, bytes already read from ``up`` for ``down``.
        on_progress: Called with byte deltas ``(down->up, up->down)`` as bytes are
            delivered, for live metrics. It runs on the hot path: keep it cheap.
        use_reactor: ``None`` picks the reactor (:mod:`meshd.net.reactor`) when
            :func:`reactor_can_pump` allows it; ``False`` forces ``receive_some``/``send_all`` in a
            task per direction; ``True`` requires the reactor.

    Returns:
        Byte counts per direction and the reason for stopping (see the module docstring
        for what the caller must do with the streams in each case).

    Raises:
        ValueError: ``idle_timeout_s`` is not positive, or ``use_reactor=True`` for streams
            that cannot be spliced.
    """
    if not idle_timeout_s > 0:
        raise ValueError(f"idle_timeout_s must be positive, not {idle_timeout_s!r}")
    relayable = reactor_can_pump(down, up)
    if use_reactor is None:
        use_reactor = relayable
    elif use_reactor and not relayable:
        raise ValueError(
            "the reactor needs two SocketStreams on a platform with os.splice and epoll"
        )
    if use_reactor:
        assert isinstance(down, SocketStream)
        assert isinstance(up, SocketStream)
        moved = await relay(
            down,
            up,
            idle_timeout_s=idle_timeout_s,
            initial_to_up=initial_to_up,
            initial_to_down=initial_to_down,
            on_progress=on_progress,
        )
        if moved is not None:
            return PumpResult(*moved)
        # The initial bytes did not fit a pipe (rare), or the run is ending: copy instead.
    state = _Pump(on_progress)
    async with trio.open_nursery() as nursery:
        state.scope = nursery.cancel_scope
        nursery.start_soon(state.run_direction, down, up, initial_to_up, True)
        nursery.start_soon(state.run_direction, up, down, initial_to_down, False)
        if idle_timeout_s != math.inf:
            nursery.start_soon(state.watch_idle, idle_timeout_s)
    return PumpResult(state.down_to_up, state.up_to_down, state.reason or "eof")


class _Pump:
    """The state the two directions and the idle watcher share."""

    __slots__ = (
        "down_to_up",
        "last_activity",
        "on_progress",
        "open_directions",
        "reason",
        "scope",
        "up_to_down",
    )

    def __init__(self, on_progress: ProgressCallback | None) -> None:
        self.on_progress = on_progress
        self.down_to_up = 0
        self.up_to_down = 0
        self.open_directions = 2
        self.reason: PumpReason | None = None
        self.scope = trio.CancelScope()
        self.last_activity = trio.current_time()

    def finish(self, reason: PumpReason) -> None:
        """Stop everything; the first reason given wins."""
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()

    async def run_direction(self, src: Stream, dst: Stream, initial: bytes, to_up: bool) -> None:
        """Pump one direction; a broken side stops both."""
        try:
            await self._copy_one_way(src, dst, initial, to_up)
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.finish("reset")
            return
        self.open_directions -= 1
        if not self.open_directions:
            self.finish("eof")

    async def watch_idle(self, idle_timeout_s: float) -> None:
        """Sleep until the last read plus the timeout; stop if nothing was read meanwhile."""
        while True:
            deadline = self.last_activity + idle_timeout_s
            if deadline <= trio.current_time():
                self.finish("idle_timeout")
                return
            await trio.sleep_until(deadline)

    def _count(self, moved: int, to_up: bool) -> None:
        if to_up:
            self.down_to_up += moved
        else:
            self.up_to_down += moved

    async def _send_initial(self, dst: Stream, initial: bytes, to_up: bool) -> None:
        await dst.send_all(initial)
        self._count(len(initial), to_up)
        if self.on_progress is not None:
            n = len(initial)
            if to_up:
                self.on_progress(n, 0)
            else:
                self.on_progress(0, n)

    async def _copy_one_way(self, src: Stream, dst: Stream, initial: bytes, to_up: bool) -> None:
        if initial:
            await self._send_initial(dst, initial, to_up)
        report = self.on_progress
        current_time = trio.current_time
        moved = 0
        budget = _YIELD_EVERY
        try:
            while True:
                data = await src.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                self.last_activity = current_time()
                await dst.send_all(data)
                n = len(data)
                moved += n
                if report is not None:
                    if to_up:
                        report(n, 0)
                    else:
                        report(0, n)
                budget -= 1
                if not budget:
                    budget = _YIELD_EVERY
                    await trio.lowlevel.checkpoint()
        finally:
            self._count(moved, to_up)
