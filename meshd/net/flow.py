"""The state of one pumped connection in the reactor (:mod:`meshd.net.reactor`), and the byte
moving that needs no epoll: a pipe's contents into a socket, bytes held back in a pipe.

A :class:`Flow` is two :class:`End` sockets and two :class:`Half` directions (``src`` into
``dst``); the reactor owns the epoll registration of each end and decides when to read.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Final, Literal

import trio

from meshd.net.stream import SocketStream

SPLICE_AVAILABLE: Final = hasattr(select, "epoll") and hasattr(os, "splice")
"""Whether the reactor can run here (Linux: epoll and ``splice(2)``)."""

# The read buffer's size, and the pipe's default capacity: asking splice for more than fits
# only makes it return less.
CHUNK: Final = 65536
# SPLICE_F_NONBLOCK covers the pipe; the sockets are non-blocking already (O_NONBLOCK).
SPLICE_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if SPLICE_AVAILABLE else 0
EPOLLIN: Final = select.EPOLLIN if SPLICE_AVAILABLE else 1
EPOLLOUT: Final = select.EPOLLOUT if SPLICE_AVAILABLE else 4

# A direction's states.
READING: Final = 0  # nothing held back: read the source when it is readable
PAUSED: Final = 1  # the pipe holds bytes the destination could not take yet
DONE: Final = 2  # end of stream read and passed on (shutdown of the destination)

ProgressCallback = Callable[[int, int], None]
"""Called with byte deltas ``(downstream_to_upstream, upstream_to_downstream)``."""

PumpReason = Literal["eof", "idle_timeout", "reset"]
"""Why a pump returned (see :mod:`meshd.net.pump`)."""


class Half:
    """One direction of a flow: ``src`` into ``dst``."""

    __slots__ = ("dst", "full", "moved", "pending", "pipe_r", "pipe_w", "src", "state", "to_up")

    def __init__(self, src: End, dst: End, to_up: bool) -> None:
        self.src = src
        self.dst = dst
        self.to_up = to_up
        self.state = READING
        self.pending = 0  # bytes in the pipe
        self.moved = 0  # bytes delivered to dst
        self.full = False  # the last read filled its buffer: the source likely has more
        self.pipe_r = self.pipe_w = -1  # the pipe, once needed


class End:
    """One socket of a flow and how it is registered."""

    __slots__ = ("fd", "flow", "mask", "reads", "registered", "sock", "writes")

    def __init__(self, flow: Flow, sock: socket.socket) -> None:
        self.flow = flow
        self.sock = sock
        self.fd = sock.fileno()
        self.mask = 0
        self.registered = False
        # Set right after both ends exist.
        self.reads: Half
        self.writes: Half

    def wanted(self) -> int:
        """The events this socket is watched for now."""
        mask = 0
        if self.reads.state == READING:
            mask = EPOLLIN
        if self.writes.state == PAUSED:
            mask |= EPOLLOUT
        return mask


class Flow:
    """One pumped connection: two sockets, two directions."""

    __slots__ = (
        "done",
        "down_to_up",
        "ends",
        "error",
        "finish",
        "last_activity",
        "on_progress",
        "open_halves",
        "reason",
        "released",
        "streams",
        "up_to_down",
    )

    def __init__(
        self,
        finish: Callable[[Flow, PumpReason | None], None],
        down: SocketStream,
        up: SocketStream,
        on_progress: ProgressCallback | None,
    ) -> None:
        #: The reactor's ``finish``: stop this flow for a reason and wake its task.
        self.finish = finish
        self.streams = (down, up)
        self.on_progress = on_progress
        self.reason: PumpReason | None = None
        self.error: Exception | None = None
        self.released = False
        self.done = trio.Event()
        self.last_activity = trio.current_time()
        self.open_halves = 2
        down_end = End(self, down.sock)
        up_end = End(self, up.sock)
        self.ends = (down_end, up_end)
        self.down_to_up = Half(down_end, up_end, True)
        self.up_to_down = Half(up_end, down_end, False)
        down_end.reads = up_end.writes = self.down_to_up
        up_end.reads = down_end.writes = self.up_to_down

    def stream_closing(self) -> None:
        """A pumped stream is being closed under the pump: stop, as for a reset."""
        self.finish(self, "reset")


def drain(half: Half) -> None:
    """Empty the pipe into the destination; the direction is paused if it won't take it all."""
    splice = os.splice
    pipe_r = half.pipe_r
    dst_fd = half.dst.fd
    left = half.pending
    delivered = 0
    try:
        while left:
            try:
                sent = splice(pipe_r, dst_fd, left, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                break
            if not sent:
                raise OSError(errno.EPIPE, "splice to the socket made no progress")
            left -= sent
            delivered += sent
    finally:
        half.pending = left
        if delivered:
            count_delivered(half, delivered)
    half.state = PAUSED if left else READING


def count_delivered(half: Half, n: int) -> None:
    """Count ``n`` bytes delivered by ``half`` (and report them, if asked)."""
    half.moved += n
    report = half.src.flow.on_progress
    if report is not None:
        if half.to_up:
            report(n, 0)
        else:
            report(0, n)


def hold(half: Half, data: memoryview | bytes) -> None:
    """Keep bytes the destination didn't take in the (empty) pipe, and pause the direction."""
    pipe_w = half.pipe_w if half.pipe_w >= 0 else open_pipe(half)
    written = os.write(pipe_w, data)
    # An empty pipe takes a whole buffer (its capacity is CHUNK); anything else would lose
    # bytes, so fail the connection rather than go on.
    if written != len(data):
        raise OSError(errno.ENOBUFS, "the pipe did not take the held-back bytes")
    half.pending = written
    half.state = PAUSED


def preload(half: Half, data: bytes) -> bool:
    """Put bytes already read into the direction's pipe, to go out first."""
    if not data:
        return True
    if len(data) > CHUNK:
        return False
    hold(half, data)
    return True


def open_pipe(half: Half) -> int:
    """Make ``half``'s pipe (on first need); returns its write end."""
    half.pipe_r, half.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    return half.pipe_w


def close_pipe(half: Half) -> None:
    """Close ``half``'s pipe, if it has one; idempotent."""
    if half.pipe_r >= 0:
        os.close(half.pipe_r)
        os.close(half.pipe_w)
        half.pipe_r = half.pipe_w = -1
