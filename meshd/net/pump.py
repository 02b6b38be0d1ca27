"""The byte pump: copy two streams into each other until both ends are done.

:func:`pump` is the whole of an L4 (TCP) proxy connection once the upstream is connected,
and the tunnel the HTTP proxy keeps after a ``101 Switching Protocols``. Each direction runs
in its own task; an EOF on one side becomes ``send_eof()`` (``shutdown(SHUT_WR)`` for a
:class:`~meshd.net.stream.SocketStream`) on the other, and the other direction keeps going
until it ends too (TCP half-close).

When both ends are plain :class:`~meshd.net.stream.SocketStream` sockets the bytes never
enter Python: each direction moves them with ``splice(2)`` from the source socket into a
private pipe and from the pipe into the destination socket. Any other :class:`Stream`
(trio memory streams, TLS) goes through ``receive_some``/``send_all``.

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

import errno
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import trio

from meshd.net.stream import RECEIVE_SIZE, SocketStream, Stream

PumpReason = Literal["eof", "idle_timeout", "reset"]
"""Why :func:`pump` returned."""

ProgressCallback = Callable[[int, int], None]
"""Called with byte deltas ``(downstream_to_upstream, upstream_to_downstream)``."""

SPLICE_AVAILABLE: Final = hasattr(os, "splice") and hasattr(os, "pipe2")
"""Whether this platform has ``os.splice`` (Linux, Python 3.10+)."""

# The pipe's default capacity: asking for more than fits only makes splice return less.
_SPLICE_CHUNK: Final = 65536
# SPLICE_F_NONBLOCK covers the pipe; the sockets are non-blocking already (O_NONBLOCK).
_SPLICE_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if SPLICE_AVAILABLE else 0
# Neither path checkpoints while the kernel keeps up, so a busy connection would starve the
# other tasks and never see a cancellation: yield after this many chunks (at most 1 MiB;
# the splice path counts only chunks in a row that did not wait).
_YIELD_EVERY: Final = 16


@dataclass(frozen=True, slots=True)
class PumpResult:
    """What a finished :func:`pump` moved, and why it stopped.

    The counts are bytes delivered to the other side, ``initial_to_*`` bytes included.
    """

    downstream_to_upstream: int
    upstream_to_downstream: int
    reason: PumpReason


def can_splice(down: Stream, up: Stream) -> bool:
    """True if :func:`pump` can move bytes between these two with ``splice(2)``.

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
    use_splice: bool | None = None,
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
        use_splice: ``None`` picks ``splice(2)`` when :func:`can_splice` allows it; ``False``
            forces ``receive_some``/``send_all``; ``True`` requires splice.

    Returns:
        Byte counts per direction and the reason for stopping (see the module docstring
        for what the caller must do with the streams in each case).

    Raises:
        ValueError: ``idle_timeout_s`` is not positive, or ``use_splice=True`` for streams
            that cannot be spliced.
    """
    if not idle_timeout_s > 0:
        raise ValueError(f"idle_timeout_s must be positive, not {idle_timeout_s!r}")
    spliceable = can_splice(down, up)
    if use_splice is None:
        use_splice = spliceable
    elif use_splice and not spliceable:
        raise ValueError("splice needs two SocketStreams on a platform with os.splice")
    state = _Pump(on_progress, use_splice=use_splice)
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
        "use_splice",
    )

    def __init__(self, on_progress: ProgressCallback | None, *, use_splice: bool) -> None:
        self.on_progress = on_progress
        self.use_splice = use_splice
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
            if self.use_splice:
                assert isinstance(src, SocketStream)
                assert isinstance(dst, SocketStream)
                await self._splice_one_way(src, dst, initial, to_up)
            else:
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

    async def _splice_one_way(
        self, src: SocketStream, dst: SocketStream, initial: bytes, to_up: bool
    ) -> None:
        if initial:
            await self._send_initial(dst, initial, to_up)
        report = self.on_progress
        current_time = trio.current_time
        splice = os.splice
        wait_readable = trio.lowlevel.wait_readable
        wait_writable = trio.lowlevel.wait_writable
        src_sock = src.sock
        dst_sock = dst.sock
        moved = 0
        budget = _YIELD_EVERY
        pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        drained = False
        try:
            while True:
                if drained:
                    # The last read took less than a pipeful, so the socket was empty then:
                    # park first rather than make a splice that would only say EAGAIN.
                    drained = False
                    budget = _YIELD_EVERY
                    await wait_readable(src_sock)
                # The pipe is empty here, so EAGAIN can only mean the socket has nothing.
                # fileno() is read after every await: a socket closed while we were parked
                # gives -1 (EBADF), never a recycled descriptor.
                try:
                    n = splice(src_sock.fileno(), pipe_w, _SPLICE_CHUNK, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    budget = _YIELD_EVERY
                    await wait_readable(src_sock)
                    continue
                if not n:
                    return
                self.last_activity = current_time()
                # Drain the pipe completely before reading again, so the next read's
                # EAGAIN is unambiguous and EOF is only seen with nothing left to send.
                left = n
                while left:
                    try:
                        sent = splice(pipe_r, dst_sock.fileno(), left, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        budget = _YIELD_EVERY
                        await wait_writable(dst_sock)
                        continue
                    if not sent:
                        raise trio.BrokenResourceError("splice to the socket made no progress")
                    left -= sent
                    moved += sent
                if report is not None:
                    if to_up:
                        report(n, 0)
                    else:
                        report(0, n)
                drained = n < _SPLICE_CHUNK
                budget -= 1
                if not budget:
                    budget = _YIELD_EVERY
                    await trio.lowlevel.checkpoint()
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("stream was closed") from exc
            raise trio.BrokenResourceError(f"connection broken: {exc.strerror or exc}") from exc
        finally:
            os.close(pipe_r)
            os.close(pipe_w)
            self._count(moved, to_up)
