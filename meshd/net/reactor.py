"""One epoll reactor per Trio run: it moves the bytes of every plain-TCP pump.

Why: a pump built from Trio tasks parks and wakes a task for every read (an ``epoll_ctl`` to
re-arm Trio's one-shot registration, a trip through the scheduler, a coroutine resumed), twice
per request/response over a kept-alive connection. That machinery, not the byte moving, was
most of an L4 proxy's CPU. Here every pumped socket is registered once, level-triggered, in an
epoll set of our own, which Trio's own I/O step serves right after Trio's ``epoll_wait``
(:func:`meshd.net.trio_io.serve_in_trio_io`; where it can't, one system task waits for the set
to be readable: one Trio wait however many sockets are ready): the bytes of each ready socket
move right there, without waking any task. The task that called :func:`relay` sleeps until
its connection is done (or idle for too long).

How bytes move, per direction: a read that doesn't fill the buffer (a request, a response) is
read (``os.read``) and written on, which costs the kernel less than two splices
for small messages; a read that fills it switches the direction to ``splice(2)`` through a
private pipe (zero-copy) until a read comes back short. Bytes the destination can't take yet
wait in that pipe (created on first need, so most connections never have one): the direction
stops reading its source and watches the destination for room.

Per socket the registration changes only on such back-pressure and when a direction ends.
Each ready socket moves at most :data:`_BURST` pipefuls per wake-up, so a bulk transfer cannot
starve the other sockets or the rest of the Trio run.

Half-close, resets, idle timeouts and cancellation behave as in the task-based pump (see
:mod:`meshd.net.pump`); closing a pumped :class:`SocketStream` (``close_nowait``/``reset``)
under the pump ends its connection with ``"reset"``.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import socket
from typing import Final

import trio

from meshd.net.flow import (
    CHUNK,
    DONE,
    EPOLLIN,
    EPOLLOUT,
    PAUSED,
    READING,
    SPLICE_AVAILABLE,
    SPLICE_FLAGS,
    End,
    Flow,
    Half,
    ProgressCallback,
    PumpReason,
    close_pipe,
    count_delivered,
    drain,
    hold,
    open_pipe,
    preload,
)
from meshd.net.stream import SocketStream
from meshd.net.waits import serve_set

__all__ = [
    "EPOLL_AVAILABLE",
    "ProgressCallback",
    "PumpReason",
    "Reactor",
    "current_reactor",
    "relay",
]

EPOLL_AVAILABLE: Final = SPLICE_AVAILABLE
"""Whether :func:`relay` can run here (Linux)."""

_IN: Final = EPOLLIN
_OUT: Final = EPOLLOUT
_ERR: Final = select.EPOLLERR if EPOLL_AVAILABLE else 8
_HUP: Final = select.EPOLLHUP if EPOLL_AVAILABLE else 16
# Pipefuls in a row from one socket per wake-up, while each fills the pipe (at most 512 KiB).
_BURST: Final = 8
# Events taken per wake-up; more wait for the next one (level-triggered: none is lost).
_MAX_EVENTS: Final = 256


class Reactor:
    """The epoll set and the system task that serves it (one per Trio run)."""

    __slots__ = ("_ends", "_epoll", "closed", "wakeups")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._ends: dict[int, End] = {}
        #: The task has ended (the run is ending): no flow is served any more.
        self.closed = False
        #: Times the task woke up (tests check it does not spin).
        self.wakeups = 0

    @property
    def watched(self) -> int:
        """How many sockets are registered now."""
        return len(self._ends)

    def open(
        self,
        down: SocketStream,
        up: SocketStream,
        initial_to_up: bytes,
        initial_to_down: bytes,
        on_progress: ProgressCallback | None,
    ) -> Flow | None:
        """Start pumping ``down`` and ``up``; None if the initial bytes don't fit a pipe or the
        reactor has stopped."""
        if self.closed:
            return None
        # Read waits (:mod:`meshd.net.waits`) would be woken by every byte pumped here.
        down.release_waits()
        up.release_waits()
        flow = Flow(self.finish, down, up, on_progress)
        try:
            if not (
                preload(flow.down_to_up, initial_to_up)
                and preload(flow.up_to_down, initial_to_down)
            ):
                self._release(flow)
                return None
            for end in flow.ends:
                self._watch(end)
        except BaseException:
            self._release(flow)
            raise
        down.on_close = up.on_close = flow.stream_closing
        return flow

    def finish(self, flow: Flow, reason: PumpReason | None) -> None:
        """Stop moving ``flow``'s bytes (the first reason given wins) and wake its task."""
        if flow.reason is None:
            flow.reason = reason
        self._release(flow)
        flow.done.set()

    def serve(self) -> None:
        """Move the bytes of the sockets the set reports ready now."""
        events = self._epoll.poll(0, _MAX_EVENTS)
        self.wakeups += 1
        ends = self._ends
        now = trio.current_time()
        for fd, mask in events:
            end = ends.get(fd)
            if end is not None:  # None: its flow ended earlier in this batch
                try:
                    self._serve(end, mask, now)
                except OSError:
                    self.finish(end.flow, "reset")
                except Exception as exc:  # noqa: BLE001 (from on_progress: re-raised to its caller)
                    end.flow.error = exc
                    self.finish(end.flow, "reset")

    async def run(self) -> None:
        """Serve the epoll set until the Trio run ends (:func:`~meshd.net.waits.serve_set`)."""
        await serve_set(self._epoll, self.serve, self._stopped)

    def _stopped(self) -> None:
        """The run ends: every flow ends with it."""
        self.closed = True
        for end in list(self._ends.values()):
            self.finish(end.flow, None)

    def _serve(self, end: End, mask: int, now: float) -> None:
        flow = end.flow
        if mask & _OUT:
            half = end.writes
            if half.state == PAUSED:
                drain(half)
                if half.state == READING and half.full:
                    # The last read filled its buffer, so the source likely has more: go on
                    # now rather than one wake-up later.
                    self._read(half, now)
                if flow.reason is not None:
                    return
                self._update(half.src)
                self._update(half.dst)
        if mask & (_IN | _HUP | _ERR):
            half = end.reads
            if half.state == READING:
                # After a reset too: bytes that came before it still go on, then the read
                # fails (and the flow ends with "reset").
                self._read(half, now)
                if flow.reason is not None:
                    return
                if half.state == PAUSED:
                    # Stop reading the source; watch the destination for room.
                    self._update(half.src)
                    self._update(half.dst)
            elif mask & _ERR and half.state == DONE:
                # Reset after its end of stream: nothing can go to it any more.
                self.finish(flow, "reset")
                return
            if mask & (_HUP | _ERR) and not end.wanted() & _IN:
                # Level-triggered HUP and ERR are reported on every wake-up, wanted or not:
                # with nothing to read now, stop watching this socket until reads resume.
                self._unwatch(end)

    def _read(self, half: Half, now: float) -> None:
        """Read what the source has and pass it on as far as the destination takes it."""
        if not half.full:
            # os.read and os.write on the descriptors rather than the socket's recv_into and
            # send: the same syscall work on a socket, with less argument parsing around it,
            # and the bytes read go on as they are (no slice of a shared buffer).
            try:
                data = os.read(half.src.fd, CHUNK)
            except BlockingIOError:
                return
            n = len(data)
            if not n:
                self._end_direction(half)
                return
            half.src.flow.last_activity = now
            try:
                sent = os.write(half.dst.fd, data)
            except BlockingIOError:
                sent = 0
            if sent:
                count_delivered(half, sent)
            if sent < n:
                hold(half, memoryview(data)[sent:])
                return
            if n < CHUNK:
                return
            half.full = True
        # Bulk: splice, another pipeful only while each fills the pipe and goes out whole.
        splice = os.splice
        src_fd = half.src.fd
        pipe_w = half.pipe_w if half.pipe_w >= 0 else open_pipe(half)
        for _ in range(_BURST):
            try:
                n = splice(src_fd, pipe_w, CHUNK, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                half.full = False
                return
            if not n:
                half.full = False
                self._end_direction(half)
                return
            half.src.flow.last_activity = now
            half.pending = n
            half.full = n == CHUNK
            drain(half)
            if half.pending or not half.full:
                return

    def _end_direction(self, half: Half) -> None:
        """End of stream from the source: pass it on (TCP half-close)."""
        half.state = DONE
        try:
            half.dst.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise
        flow = half.src.flow
        flow.open_halves -= 1
        if not flow.open_halves:
            self.finish(flow, "eof")
            return
        self._update(half.src)

    def _watch(self, end: End) -> None:
        mask = end.wanted()
        self._epoll.register(end.fd, mask)
        end.mask = mask
        end.registered = True
        self._ends[end.fd] = end

    def _update(self, end: End) -> None:
        mask = end.wanted()
        if not end.registered:
            if mask:
                self._watch(end)
        elif mask != end.mask:
            self._epoll.modify(end.fd, mask)
            end.mask = mask

    def _unwatch(self, end: End) -> None:
        if end.registered:
            end.registered = False
            self._ends.pop(end.fd, None)
            with contextlib.suppress(OSError):  # already closed: the kernel dropped it
                self._epoll.unregister(end.fd)

    def _release(self, flow: Flow) -> None:
        """Unregister both sockets and close the pipes; idempotent."""
        if flow.released:
            return
        flow.released = True
        for end in flow.ends:
            self._unwatch(end)
        close_pipe(flow.down_to_up)
        close_pipe(flow.up_to_down)
        for stream in flow.streams:
            stream.on_close = None


_REACTOR: trio.lowlevel.RunVar[Reactor] = trio.lowlevel.RunVar("meshd_reactor")


def current_reactor() -> Reactor:
    """This Trio run's reactor, started on first use."""
    try:
        return _REACTOR.get()
    except LookupError:
        pass
    reactor = Reactor()
    trio.lowlevel.spawn_system_task(reactor.run, name="meshd.net.reactor")
    _REACTOR.set(reactor)
    return reactor


async def relay(
    down: SocketStream,
    up: SocketStream,
    *,
    idle_timeout_s: float,
    initial_to_up: bytes = b"",
    initial_to_down: bytes = b"",
    on_progress: ProgressCallback | None = None,
) -> tuple[int, int, PumpReason] | None:
    """Pump two plain sockets through the run's reactor until both ends are done.

    Returns ``(down_to_up, up_to_down, reason)`` as :func:`~meshd.net.pump.pump` describes
    them, or None, having done nothing, when the initial bytes don't fit a pipe or the run's
    reactor has stopped (the run is ending); then the caller pumps some other way.
    """
    reactor = current_reactor()
    flow = reactor.open(down, up, initial_to_up, initial_to_down, on_progress)
    if flow is None:
        return None
    done = flow.done
    try:
        if idle_timeout_s == math.inf:
            await done.wait()
        else:
            while not done.is_set():
                deadline = flow.last_activity + idle_timeout_s
                if deadline <= trio.current_time():
                    reactor.finish(flow, "idle_timeout")
                    break
                with trio.move_on_at(deadline):
                    await done.wait()
    finally:
        # Cancelled (or done): either way, nothing of this flow stays registered.
        reactor._release(flow)
    if flow.error is not None:
        raise flow.error
    return flow.down_to_up.moved, flow.up_to_down.moved, flow.reason or "eof"
