"""Read readiness of the proxy's sockets from one edge-triggered epoll set of their own.

``trio.lowlevel.wait_readable`` re-arms a one-shot epoll registration on every wait (an
``epoll_ctl`` call) and goes through several layers of Python per park. A proxied request
parks twice (downstream and upstream reads), so :class:`SocketStream` waits here instead:
each socket is registered once, edge-triggered, for its lifetime; a wait is a dict entry and
``trio.lowlevel.wait_task_rescheduled``. One system task per trio run waits for this epoll
set to be readable (through trio) and wakes the tasks whose sockets had events, a batch per
wake-up. An edge that comes while nobody waits is remembered, so the next wait returns at
once (after a checkpoint) and the caller's read finds the bytes, or EAGAIN and waits again.
Edge-triggered means a socket left with unread bytes gets no new edge: a TCP ``recv`` that
returns less than asked for has emptied the receive queue, and one that filled its buffer
must be followed by :meth:`Reactor.mark_ready` (the stream does this). A socket whose peer
closed (or that failed) stays readable from then on.

Only reads: a full send buffer is rare on the request path, and waits for writability stay
with trio (the socket can be in both epoll sets).
"""

from __future__ import annotations

import contextlib
import select
from typing import Final

import outcome
import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    RunVar,
    Task,
    current_task,
    reschedule,
    spawn_system_task,
    wait_task_rescheduled,
)

__all__ = ["Reactor", "current_reactor"]

_FLAGS: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
#: End of stream or an error: from then on every read returns at once.
_FINAL: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
#: Events taken per ``epoll_wait``; a full batch means more may be waiting.
_BATCH: Final = 256

_RUN_REACTOR: RunVar[Reactor] = RunVar("meshd_reactor")


class Reactor:
    """Edge-triggered read waits for registered file descriptors (one per trio run)."""

    __slots__ = ("_ended", "_epoll", "_ready", "_waiters")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        #: fd -> the task parked until it is readable.
        self._waiters: dict[int, Task] = {}
        #: fds that had an edge while no task waited on them.
        self._ready: set[int] = set()
        #: fds whose peer closed (or that failed): readable for good, whatever was read.
        self._ended: set[int] = set()

    def register(self, fd: int) -> None:
        """Watch ``fd`` until :meth:`unregister` (call that before closing it)."""
        try:
            self._epoll.register(fd, _FLAGS)
        except FileExistsError:
            self._epoll.modify(fd, _FLAGS)
        # Adding a socket that is readable already reports an event at once: nothing is missed.

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; a task parked on it gets :class:`trio.ClosedResourceError`."""
        self._ready.discard(fd)
        self._ended.discard(fd)
        task = self._waiters.pop(fd, None)
        if task is not None:
            reschedule(task, outcome.Error(trio.ClosedResourceError("stream was closed")))
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def mark_ready(self, fd: int) -> None:
        """A read filled its whole buffer: more may be waiting, and no new edge will say so."""
        self._ready.add(fd)

    async def wait_readable(self, fd: int) -> None:
        """Park until ``fd`` had a readable edge (or end of stream, or an error).

        A checkpoint either way. Raises :class:`trio.BusyResourceError` if another task
        waits on ``fd`` already.
        """
        ready = self._ready
        if fd in ready:
            await trio.lowlevel.checkpoint()
            ready.discard(fd)  # only now: a cancelled wait must not lose the edge
            return
        if fd in self._ended:
            await trio.lowlevel.checkpoint()
            return
        waiters = self._waiters
        if fd in waiters:
            raise trio.BusyResourceError("another task is already reading this socket")
        waiters[fd] = current_task()

        def abort(_: RaiseCancelT) -> Abort:
            del waiters[fd]
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    async def run(self) -> None:
        """Wake the tasks whose sockets had events, for as long as the run lasts."""
        epoll = self._epoll
        waiters = self._waiters
        ready = self._ready
        ended = self._ended
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                while True:
                    events = epoll.poll(0, _BATCH)
                    for fd, flags in events:
                        if flags & _FINAL:
                            # The end of stream comes once, perhaps with the last bytes:
                            # a read that takes those must not leave a later wait parked.
                            ended.add(fd)
                        task = waiters.pop(fd, None)
                        if task is None:
                            ready.add(fd)
                        else:
                            reschedule(task)
                    if len(events) < _BATCH:
                        break
        finally:
            epoll.close()


def current_reactor() -> Reactor:
    """This trio run's :class:`Reactor`, started (as a system task) on first use."""
    try:
        return _RUN_REACTOR.get()
    except LookupError:
        pass
    reactor = Reactor()
    _RUN_REACTOR.set(reactor)
    spawn_system_task(reactor.run, name="meshd.net.reactor")
    return reactor
