"""Read waits without an ``epoll_ctl`` per park: one epoll set per Trio run, served in Trio's
own I/O step.

Trio's I/O manager registers a socket one-shot and re-arms it at every park: an
``epoll_ctl`` per wait, twice per proxied L7 request. Here a :class:`SocketStream
<meshd.net.stream.SocketStream>` that waits to read registers its socket once, edge-triggered
(``EPOLLIN | EPOLLRDHUP | EPOLLET``), in an epoll set of our own. That set is registered once,
level-triggered, in Trio's own epoll, and Trio's I/O step serves it right after Trio's
``epoll_wait`` (:func:`serve_in_trio_io`): it wakes the tasks parked on the sockets the set
reports (``wait_task_rescheduled``/``reschedule``) and calls their readers, with no task of
its own woken (as :mod:`meshd.net.reactor` serves L4 flows from its own set). Where Trio's I/O
manager is not the epoll one this knows, a system task waits for the set instead (one Trio
wait however many sockets are ready).

Edge-triggered, an event comes once per arrival, so a wait must never miss one:

* an event for a socket nobody waits on marks it :attr:`Waiter.ready`: the next wait returns
  at once (the caller reads; EAGAIN sends it back to wait, now parked);
* end of stream, a reset or an error marks it ready for good (:attr:`Waiter.sticky`): the
  read says so, however many events came before;
* registering reports what is there already (``epoll_ctl(ADD)`` checks readiness);
* bytes left unread by a read that filled its buffer make no event: the stream reads again
  before it waits (:class:`~meshd.net.stream.SocketStream` keeps track).

A wake-up is only ever early, never missing: every caller reads after a wait and waits again
on EAGAIN. Cancellation and deadlines abort a parked wait as Trio's own do; closing the
socket (:meth:`Dispatcher.forget`) wakes a parked task with :class:`trio.ClosedResourceError`,
as ``notify_closing`` does. Once the run's task has ended, waits go to Trio's I/O manager.

A socket may instead be served by a :class:`Reader` (:meth:`Waiter.serve`): the dispatcher then
calls it for every event, with no task woken (:mod:`meshd.http.lane` serves simple HTTP
requests so). A reader is told when the socket closes or the dispatcher stops, and then stops
serving.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Callable
from typing import Final, Protocol

import outcome
import trio

from meshd.net.trio_io import serve_in_trio_io

__all__ = [
    "EPOLL_WAITS",
    "Dispatcher",
    "NativeReader",
    "Reader",
    "ServedStream",
    "Waiter",
    "current_dispatcher",
    "serve_in_trio_io",
    "serve_set",
]

#: Whether this platform has epoll (Linux): elsewhere streams wait through Trio.
EPOLL_WAITS: Final = hasattr(select, "epoll")

_FLAGS: Final = (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET) if EPOLL_WAITS else 0
# End of stream, reset, error: states that last, unlike the arrival of bytes.
_LASTING: Final = (select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR) if EPOLL_WAITS else 0
# Events taken per wake-up; edge-triggered ones left over come with the next (none is lost).
_MAX_EVENTS: Final = 256


class Reader(Protocol):
    """Serves a socket's events in the dispatcher's task (see :meth:`Waiter.serve`)."""

    def readable(self, waiter: Waiter) -> None:
        """The socket had an event (maybe early): read until EAGAIN or a short read. Must not
        raise."""

    def stopped(self, waiter: Waiter, closing: bool) -> None:
        """No more events come: the socket is ``closing``, or else the dispatcher stopped.
        Must not raise."""


class NativeReader:
    """A :class:`Reader` base whose subclasses the dispatcher calls natively when compiled.

    Compiled with mypyc, a call through the :class:`Reader` protocol is a generic method call
    (the method looked up by name, its arguments parsed by a wrapper); a call on this class
    goes through its vtable. :class:`meshd.http.lane.Lane` (two events per proxied request)
    derives from it; any other reader is called through the protocol.
    """

    __slots__ = ()

    def readable(self, waiter: Waiter) -> None:
        """As :meth:`Reader.readable`."""
        raise NotImplementedError

    def stopped(self, waiter: Waiter, closing: bool) -> None:
        """As :meth:`Reader.stopped`."""
        raise NotImplementedError


class ServedStream(Protocol):
    """A stream a :class:`Reader` can serve: reads and writes that never wait
    (:class:`~meshd.net.stream.SocketStream`, :class:`~meshd.net.tlsstream.TlsStream`:
    OpenSSL reads a record at a time). :mod:`meshd.http.lane` serves them."""

    @property
    def sock(self) -> socket.socket:
        """The TCP socket."""
        ...

    @property
    def may_read(self) -> bool:
        """Bytes may be there to read (no event will say so)."""
        ...

    @property
    def unread(self) -> bool:
        """The last read filled its buffer."""
        ...

    def receive_nowait(self, max_bytes: int | None = None) -> bytes | None:
        """Bytes there now, ``b""`` at the end, None if none yet."""
        ...

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what can go now; how much did."""
        ...

    def serve_reads(self, reader: Reader | None) -> bool:
        """Have ``reader`` called for the socket's events (None: stop); False if it can't."""
        ...


class Waiter:
    """One socket's registration in the dispatcher's set, and the task parked on it."""

    __slots__ = ("dispatcher", "fd", "reader", "ready", "sticky", "task")

    def __init__(self, dispatcher: Dispatcher, fd: int) -> None:
        self.dispatcher = dispatcher
        self.fd = fd
        #: An event came while no task waited: the next wait returns at once.
        self.ready = False
        #: End of stream, reset or error seen: every wait returns at once.
        self.sticky = False
        self.task: trio.lowlevel.Task | None = None
        #: Called for every event instead of waking a task (see :meth:`serve`).
        self.reader: Reader | None = None

    def serve(self, reader: Reader | None) -> bool:
        """Have ``reader`` called for the socket's events (None: back to waits); False once
        the dispatcher has stopped. The reader reads first: bytes may be there already."""
        if reader is not None:
            if self.task is not None:
                raise trio.BusyResourceError("another task is already reading this socket")
            if self.dispatcher.closed:
                return False
        self.reader = reader
        return True

    async def wait(self) -> None:
        """Park until the socket has something to read (possibly early, never late)."""
        if self.ready:
            # A cancelled task stops here, as in a park, even though the socket is ready
            # (and the mark stays for the next wait).
            await trio.lowlevel.checkpoint_if_cancelled()
            self.ready = self.sticky
            return
        if self.dispatcher.closed:
            await trio.lowlevel.wait_readable(self.fd)
            return
        if self.task is not None or self.reader is not None:
            raise trio.BusyResourceError("another task is already reading this socket")
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def drained(self) -> None:
        """A read came back short: whatever an event already reported has been read."""
        self.ready = self.sticky


class Dispatcher:
    """The epoll set of read waits and the system task that serves it (one per Trio run)."""

    __slots__ = ("_epoll", "_waiters", "closed", "inline", "wakeups")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiters: dict[int, Waiter] = {}
        #: The task has ended (the run is ending): waits go to Trio's I/O manager.
        self.closed = False
        #: Served from Trio's I/O step, not from a task (see :func:`serve_in_trio_io`).
        self.inline = False
        #: Times the set was served.
        self.wakeups = 0

    @property
    def watched(self) -> int:
        """How many sockets are registered now."""
        return len(self._waiters)

    def watch(self, sock: socket.socket) -> Waiter | None:
        """Register ``sock`` (once); None once the dispatcher has stopped."""
        if self.closed:
            return None
        fd = sock.fileno()
        try:
            self._epoll.register(fd, _FLAGS)
        except FileExistsError:
            # A descriptor number closed under a registration another file still holds.
            self._epoll.modify(fd, _FLAGS)
        waiter = Waiter(self, fd)
        self._waiters[fd] = waiter
        return waiter

    def forget(self, waiter: Waiter) -> None:
        """The socket is closing: drop its registration, wake its parked task with
        :class:`trio.ClosedResourceError`. Call before closing the descriptor."""
        if self._waiters.get(waiter.fd) is waiter:
            del self._waiters[waiter.fd]
            if not self.closed:
                with contextlib.suppress(OSError):  # closed already: the kernel dropped it
                    self._epoll.unregister(waiter.fd)
        reader = waiter.reader
        if reader is not None:
            waiter.reader = None
            reader.stopped(waiter, True)
        task = waiter.task
        if task is not None:
            waiter.task = None
            trio.lowlevel.reschedule(
                task, outcome.Error(trio.ClosedResourceError("another task closed this socket"))
            )

    def serve(self) -> None:
        """Serve what the set reports now: wake the parked tasks, call the readers."""
        self.wakeups += 1
        waiters = self._waiters
        reschedule = trio.lowlevel.reschedule
        for fd, mask in self._epoll.poll(0, _MAX_EVENTS):
            waiter = waiters.get(fd)
            if waiter is None:
                continue
            if mask & _LASTING:
                waiter.sticky = True
            reader = waiter.reader
            if reader is not None:
                if isinstance(reader, NativeReader):
                    native: NativeReader = reader
                    native.readable(waiter)
                else:
                    reader.readable(waiter)
                continue
            task = waiter.task
            if task is None:
                waiter.ready = True
            else:
                waiter.task = None
                reschedule(task)

    async def run(self) -> None:
        """Serve the epoll set until the Trio run ends (:func:`serve_set`)."""
        await serve_set(self._epoll, self.serve, self._stopped, inline=self._inline)

    def _inline(self) -> None:
        self.inline = True

    def _stopped(self) -> None:
        """The run ends: parked tasks read again (EAGAIN) and wait through Trio from now on."""
        self.closed = True
        waiters = self._waiters
        reschedule = trio.lowlevel.reschedule
        for waiter in list(waiters.values()):
            waiter.ready = True
            reader = waiter.reader
            if reader is not None:
                waiter.reader = None
                reader.stopped(waiter, False)
            task = waiter.task
            if task is not None:
                waiter.task = None
                reschedule(task)
        waiters.clear()


async def serve_set(
    epoll: select.epoll,
    serve: Callable[[], None],
    stopped: Callable[[], None],
    *,
    inline: Callable[[], None] | None = None,
) -> None:
    """Call ``serve`` whenever the epoll set ``epoll`` is readable, until this task is
    cancelled (the Trio run ends): from Trio's own I/O step when it can
    (:func:`serve_in_trio_io`; then ``inline()``), else from this task, which waits for the set
    to be readable. Then ``stopped()``, and the set is closed. (The dispatcher's and the L4
    reactor's sets.)"""
    fileno = epoll.fileno()
    unhook = serve_in_trio_io(fileno, serve)
    try:
        if unhook is not None:
            if inline is not None:
                inline()
            await trio.sleep_forever()
        else:
            wait_readable = trio.lowlevel.wait_readable
            while True:
                await wait_readable(fileno)
                serve()
    finally:
        if unhook is not None:
            unhook()
        stopped()
        if unhook is None:
            trio.lowlevel.notify_closing(fileno)
        epoll.close()


_DISPATCHER: trio.lowlevel.RunVar[Dispatcher] = trio.lowlevel.RunVar("meshd_dispatcher")


def current_dispatcher() -> Dispatcher:
    """This Trio run's dispatcher, started on first use."""
    try:
        return _DISPATCHER.get()
    except LookupError:
        pass
    dispatcher = Dispatcher()
    trio.lowlevel.spawn_system_task(dispatcher.run, name="meshd.net.waits")
    _DISPATCHER.set(dispatcher)
    return dispatcher
