"""One epoll reactor per Trio run: it moves the bytes of every plain-TCP pump.

Why: a pump built from Trio tasks parks and wakes a task for every read (an ``epoll_ctl`` to
re-arm Trio's one-shot registration, a trip through the scheduler, a coroutine resumed), twice
per request/response over a kept-alive connection. That machinery, not the byte moving, was
most of an L4 proxy's CPU. Here every pumped socket is registered once, level-triggered, in an
epoll set of our own; one system task waits for that set to be readable (one Trio wait however
many sockets are ready) and moves the bytes of each ready socket right there, without waking
any task. The task that called :func:`relay` sleeps until its connection is done (or idle for
too long).

How bytes move, per direction: a read that doesn't fill the buffer (a request, a response) is
``recv_into`` one shared buffer and ``send`` on, which costs the kernel less than two splices
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
from collections.abc import Callable
from typing import Final, Literal

import trio

from meshd.net.stream import SocketStream

EPOLL_AVAILABLE: Final = hasattr(select, "epoll") and hasattr(os, "splice")
"""Whether :func:`relay` can run here (Linux)."""

# The buffer's size, and the pipe's default capacity: asking splice for more than fits only
# makes it return less.
_CHUNK: Final = 65536
# SPLICE_F_NONBLOCK covers the pipe; the sockets are non-blocking already (O_NONBLOCK).
_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if EPOLL_AVAILABLE else 0
_IN: Final = select.EPOLLIN if EPOLL_AVAILABLE else 1
_OUT: Final = select.EPOLLOUT if EPOLL_AVAILABLE else 4
_ERR: Final = select.EPOLLERR if EPOLL_AVAILABLE else 8
_HUP: Final = select.EPOLLHUP if EPOLL_AVAILABLE else 16
# Pipefuls in a row from one socket per wake-up, while each fills the pipe (at most 512 KiB).
_BURST: Final = 8
# Events taken per wake-up; more wait for the next one (level-triggered: none is lost).
_MAX_EVENTS: Final = 256

# A direction's states.
_READING: Final = 0  # nothing held back: read the source when it is readable
_PAUSED: Final = 1  # the pipe holds bytes the destination could not take yet
_DONE: Final = 2  # end of stream read and passed on (shutdown of the destination)

ProgressCallback = Callable[[int, int], None]
"""Called with byte deltas ``(downstream_to_upstream, upstream_to_downstream)``."""

PumpReason = Literal["eof", "idle_timeout", "reset"]
"""Why a pump returned (see :mod:`meshd.net.pump`)."""


class _Half:
    """One direction of a flow: ``src`` into ``dst``."""

    __slots__ = ("dst", "full", "moved", "pending", "pipe_r", "pipe_w", "src", "state", "to_up")

    def __init__(self, src: _End, dst: _End, to_up: bool) -> None:
        self.src = src
        self.dst = dst
        self.to_up = to_up
        self.state = _READING
        self.pending = 0  # bytes in the pipe
        self.moved = 0  # bytes delivered to dst
        self.full = False  # the last read filled its buffer: the source likely has more
        self.pipe_r = self.pipe_w = -1  # the pipe, once needed


class _End:
    """One socket of a flow and how it is registered."""

    __slots__ = ("fd", "flow", "mask", "reads", "registered", "sock", "writes")

    def __init__(self, flow: Flow, sock: socket.socket) -> None:
        self.flow = flow
        self.sock = sock
        self.fd = sock.fileno()
        self.mask = 0
        self.registered = False
        # Set right after both ends exist.
        self.reads: _Half
        self.writes: _Half

    def wanted(self) -> int:
        """The events this socket is watched for now."""
        mask = 0
        if self.reads.state == _READING:
            mask = _IN
        if self.writes.state == _PAUSED:
            mask |= _OUT
        return mask


class Flow:
    """One pumped connection: two sockets, two directions."""

    __slots__ = (
        "done",
        "down_to_up",
        "ends",
        "error",
        "last_activity",
        "on_progress",
        "open_halves",
        "reactor",
        "reason",
        "released",
        "streams",
        "up_to_down",
    )

    def __init__(
        self,
        reactor: Reactor,
        down: SocketStream,
        up: SocketStream,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.reactor = reactor
        self.streams = (down, up)
        self.on_progress = on_progress
        self.reason: PumpReason | None = None
        self.error: Exception | None = None
        self.released = False
        self.done = trio.Event()
        self.last_activity = trio.current_time()
        self.open_halves = 2
        down_end = _End(self, down.sock)
        up_end = _End(self, up.sock)
        self.ends = (down_end, up_end)
        self.down_to_up = _Half(down_end, up_end, True)
        self.up_to_down = _Half(up_end, down_end, False)
        down_end.reads = up_end.writes = self.down_to_up
        up_end.reads = down_end.writes = self.up_to_down

    def stream_closing(self) -> None:
        """A pumped stream is being closed under the pump: stop, as for a reset."""
        self.reactor.finish(self, "reset")


class Reactor:
    """The epoll set and the system task that serves it (one per Trio run)."""

    __slots__ = ("_buffer", "_ends", "_epoll", "_view", "closed", "wakeups")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._ends: dict[int, _End] = {}
        # One buffer for every small read of this reactor: its bytes are sent on (or put in a
        # pipe) before the next read. Per reactor, not per process: runs in other threads
        # have reactors of their own.
        self._buffer = bytearray(_CHUNK)
        self._view = memoryview(self._buffer)
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
        flow = Flow(self, down, up, on_progress)
        try:
            if not (
                _preload(flow.down_to_up, initial_to_up)
                and _preload(flow.up_to_down, initial_to_down)
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

    async def run(self) -> None:
        """Serve the epoll set until the Trio run ends."""
        epoll = self._epoll
        ends = self._ends
        fileno = epoll.fileno()
        poll = epoll.poll
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        try:
            while True:
                await wait_readable(fileno)
                events = poll(0, _MAX_EVENTS)
                self.wakeups += 1
                now = current_time()
                for fd, mask in events:
                    end = ends.get(fd)
                    if end is None:
                        continue  # its flow ended earlier in this batch
                    try:
                        self._serve(end, mask, now)
                    except OSError:
                        self.finish(end.flow, "reset")
                    except Exception as exc:  # noqa: BLE001 (from on_progress: re-raised to its caller)
                        end.flow.error = exc
                        self.finish(end.flow, "reset")
        finally:
            self.closed = True
            for end in list(ends.values()):
                self.finish(end.flow, None)
            trio.lowlevel.notify_closing(fileno)
            epoll.close()

    def _serve(self, end: _End, mask: int, now: float) -> None:
        flow = end.flow
        if mask & _OUT:
            half = end.writes
            if half.state == _PAUSED:
                _drain(half)
                if half.state == _READING and half.full:
                    # The last read filled its buffer, so the source likely has more: go on
                    # now rather than one wake-up later.
                    self._read(half, now)
                if flow.reason is not None:
                    return
                self._update(half.src)
                self._update(half.dst)
        if mask & (_IN | _HUP | _ERR):
            half = end.reads
            if half.state == _READING:
                # After a reset too: bytes that came before it still go on, then the read
                # fails (and the flow ends with "reset").
                self._read(half, now)
                if flow.reason is not None:
                    return
                if half.state == _PAUSED:
                    # Stop reading the source; watch the destination for room.
                    self._update(half.src)
                    self._update(half.dst)
            elif mask & _ERR and half.state == _DONE:
                # Reset after its end of stream: nothing can go to it any more.
                self.finish(flow, "reset")
                return
            if mask & (_HUP | _ERR) and not end.wanted() & _IN:
                # Level-triggered HUP and ERR are reported on every wake-up, wanted or not:
                # with nothing to read now, stop watching this socket until reads resume.
                self._unwatch(end)

    def _read(self, half: _Half, now: float) -> None:
        """Read what the source has and pass it on as far as the destination takes it."""
        if not half.full:
            view = self._view
            try:
                n = half.src.sock.recv_into(self._buffer)
            except BlockingIOError:
                return
            if not n:
                self._end_direction(half)
                return
            half.src.flow.last_activity = now
            try:
                sent = half.dst.sock.send(view[:n])
            except BlockingIOError:
                sent = 0
            if sent:
                _delivered(half, sent)
            if sent < n:
                _hold(half, view[sent:n])
                return
            if n < _CHUNK:
                return
            half.full = True
        # Bulk: splice, another pipeful only while each fills the pipe and goes out whole.
        splice = os.splice
        src_fd = half.src.fd
        pipe_w = half.pipe_w if half.pipe_w >= 0 else _open_pipe(half)
        for _ in range(_BURST):
            try:
                n = splice(src_fd, pipe_w, _CHUNK, None, None, _FLAGS)
            except BlockingIOError:
                half.full = False
                return
            if not n:
                half.full = False
                self._end_direction(half)
                return
            half.src.flow.last_activity = now
            half.pending = n
            half.full = n == _CHUNK
            _drain(half)
            if half.pending or not half.full:
                return

    def _end_direction(self, half: _Half) -> None:
        """End of stream from the source: pass it on (TCP half-close)."""
        half.state = _DONE
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

    def _watch(self, end: _End) -> None:
        mask = end.wanted()
        self._epoll.register(end.fd, mask)
        end.mask = mask
        end.registered = True
        self._ends[end.fd] = end

    def _update(self, end: _End) -> None:
        mask = end.wanted()
        if not end.registered:
            if mask:
                self._watch(end)
        elif mask != end.mask:
            self._epoll.modify(end.fd, mask)
            end.mask = mask

    def _unwatch(self, end: _End) -> None:
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
        _close_pipe(flow.down_to_up)
        _close_pipe(flow.up_to_down)
        for stream in flow.streams:
            stream.on_close = None


def _drain(half: _Half) -> None:
    """Empty the pipe into the destination; the direction is paused if it won't take it all."""
    splice = os.splice
    pipe_r = half.pipe_r
    dst_fd = half.dst.fd
    left = half.pending
    delivered = 0
    try:
        while left:
            try:
                sent = splice(pipe_r, dst_fd, left, None, None, _FLAGS)
            except BlockingIOError:
                break
            if not sent:
                raise OSError(errno.EPIPE, "splice to the socket made no progress")
            left -= sent
            delivered += sent
    finally:
        half.pending = left
        if delivered:
            _delivered(half, delivered)
    half.state = _PAUSED if left else _READING


def _delivered(half: _Half, n: int) -> None:
    half.moved += n
    report = half.src.flow.on_progress
    if report is not None:
        if half.to_up:
            report(n, 0)
        else:
            report(0, n)


def _hold(half: _Half, data: memoryview | bytes) -> None:
    """Keep bytes the destination didn't take in the (empty) pipe, and pause the direction."""
    pipe_w = half.pipe_w if half.pipe_w >= 0 else _open_pipe(half)
    written = os.write(pipe_w, data)
    # An empty pipe takes a whole buffer (its capacity is _CHUNK); anything else would lose
    # bytes, so fail the connection rather than go on.
    if written != len(data):
        raise OSError(errno.ENOBUFS, "the pipe did not take the held-back bytes")
    half.pending = written
    half.state = _PAUSED


def _preload(half: _Half, data: bytes) -> bool:
    """Put bytes already read into the direction's pipe, to go out first."""
    if not data:
        return True
    if len(data) > _CHUNK:
        return False
    _hold(half, data)
    return True


def _open_pipe(half: _Half) -> int:
    half.pipe_r, half.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return half.pipe_w


def _close_pipe(half: _Half) -> None:
    if half.pipe_r >= 0:
        os.close(half.pipe_r)
        os.close(half.pipe_w)
        half.pipe_r = half.pipe_w = -1


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
    flow = current_reactor().open(down, up, initial_to_up, initial_to_down, on_progress)
    if flow is None:
        return None
    reactor = flow.reactor
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
