"""Byte streams.

The proxy's hot path talks to :class:`Stream`, a small protocol that trio's memory streams
also satisfy (handy in unit tests); the HTTP proxy needs a little more of its connections
(:class:`ProxyStream`: the peer's address, a reset, a parked read, a staleness check), which
:class:`SocketStream` and :class:`meshd.net.tls.TlsStream` both provide.

:class:`SocketStream` fills them with a non-blocking stdlib socket: it calls
``recv``/``send`` directly and parks only on ``EAGAIN``, which measured about half the cost per
proxied request of ``trio.socket`` and a third of ``trio.SocketStream``. Reads wait in the
run's dispatcher (:mod:`meshd.net.waits`: the socket registered once, no ``epoll_ctl`` per
park), writes on the trio loop's ``wait_writable`` (:func:`io_waits`).

Errors are trio's: :class:`trio.BrokenResourceError` for a reset or broken pipe,
:class:`trio.ClosedResourceError` after :meth:`SocketStream.aclose`.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import trio

from meshd.net.waits import EPOLL_WAITS, Reader, Waiter, current_dispatcher

#: Bytes asked of the kernel per read (Final: compiled code reads a C static, not a dict).
RECEIVE_SIZE: Final = 65536

#: Parks the calling task until a socket is readable (or writable).
Wait = Callable[[socket.socket], Awaitable[None]]

_LINGER_RESET = struct.pack("ii", 1, 0)


class Stream(Protocol):
    """What the proxy needs from a connection."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """Bytes that arrived, or ``b""`` at end of stream."""
        ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``."""
        ...

    async def send_eof(self) -> None:
        """Half-close: no more data will be sent."""
        ...

    async def aclose(self) -> None:
        """Close both directions."""
        ...


class ProxyStream(Stream, Protocol):
    """What the HTTP proxy needs from a downstream or upstream connection."""

    @property
    def parks_reads(self) -> bool:
        """True if :meth:`receive_later` is the cheaper way to wait for a next request."""
        ...

    async def receive_later(self, max_bytes: int | None = None) -> bytes:
        """Like ``receive_some``, for when bytes can't be there yet (a reply just asked for)."""
        ...

    def peer(self) -> tuple[str, int]:
        """The remote address, or ``("", 0)`` if the connection is gone."""
        ...

    def reset(self) -> None:
        """Abort the connection so the peer sees an error rather than an end."""
        ...

    def is_stale(self) -> bool:
        """True if the peer closed, reset or sent unexpected bytes (checked without blocking)."""
        ...

    def close_nowait(self) -> None:
        """Close at once."""
        ...


def io_waits() -> tuple[Wait, Wait]:
    """``wait_readable`` and ``wait_writable`` of the running trio loop's I/O manager.

    ``trio.lowlevel.wait_readable`` looks the loop up on every call and passes through a
    coroutine of its own to reach the same method: taken once per connection, a park costs
    ~2k fewer instructions (and meshd installs its own SIGINT handling, so the KeyboardInterrupt
    protection that wrapper adds has nothing to protect). Outside a trio run, or should trio
    ever move or rename its loop's state (a private module), the public functions.
    """
    try:
        from trio._core._run import GLOBAL_RUN_CONTEXT

        io = GLOBAL_RUN_CONTEXT.runner.io_manager
        return io.wait_readable, io.wait_writable
    except (ImportError, AttributeError):
        return trio.lowlevel.wait_readable, trio.lowlevel.wait_writable


class SocketStream:
    """A connected TCP socket in non-blocking mode."""

    __slots__ = (
        "_closed",
        "_full",
        "_peer",
        "_probe",
        "_wait_readable",
        "_wait_writable",
        "_waiter",
        "on_close",
        "sock",
    )

    #: Waiting for readability first saves the ``recv`` that would only say EAGAIN.
    parks_reads = True

    def __init__(self, sock: socket.socket, *, accepted_from: object = None) -> None:
        """Make ``sock`` non-blocking, without Nagle's delay when it is TCP.

        ``accepted_from``: the address ``accept()`` gave, for a socket a listener accepted.
        Such a socket is non-blocking already (:class:`meshcore.net.accept.Acceptor`) and has
        ``TCP_NODELAY`` from its listening socket (Linux copies it to accepted sockets;
        :func:`meshd.net.listen.nodelay_listener`), so the three system calls are left out,
        and :meth:`peer` answers with the address instead of asking the kernel.
        """
        self._peer: tuple[str, int] | None = None
        if accepted_from is None:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self._peer = peer_address(accepted_from)
        self.sock = sock
        self._closed = False
        self._probe: ReadProbe | None = None
        self._wait_readable, self._wait_writable = io_waits()
        #: The socket's registration for read waits (:mod:`meshd.net.waits`), made at the
        #: first wait.
        self._waiter: Waiter | None = None
        #: The last read filled its buffer: bytes may be left that no event will announce.
        self._full = False
        #: Called (once) just before the socket closes: set while a reactor pumps it
        #: (:mod:`meshd.net.reactor`), which must stop watching the descriptor first.
        self.on_close: Callable[[], None] | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return what the kernel has, waiting only when it has nothing."""
        sock = self.sock
        size = max_bytes or RECEIVE_SIZE
        while True:
            try:
                data = sock.recv(size)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._translate(exc) from exc
            else:
                self._read(len(data), size)
                return data
            waiter = self._waiter or self._watch()
            if waiter is None:
                await self._wait_readable(sock)
            else:
                await waiter.wait()

    async def receive_later(self, max_bytes: int | None = None) -> bytes:
        """Like :meth:`receive_some`, for when bytes can't be there yet (a reply just asked for).

        Parking first saves the ``recv`` that would only have said EAGAIN.
        """
        if self._full:
            # The last read left bytes behind, maybe: no event will say so.
            return await self.receive_some(max_bytes)
        sock = self.sock
        size = max_bytes or RECEIVE_SIZE
        while True:
            waiter = self._waiter or self._watch()
            if waiter is None:
                await self._wait_readable(sock)
            else:
                await waiter.wait()
            try:
                data = sock.recv(size)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._translate(exc) from exc
            self._read(len(data), size)
            return data

    def receive_nowait(self, max_bytes: int | None = None) -> bytes | None:
        """What the kernel has right now, ``b""`` at end of stream, None if nothing yet."""
        size = max_bytes or RECEIVE_SIZE
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._translate(exc) from exc
        self._read(len(data), size)
        return data

    @property
    def unread(self) -> bool:
        """The last read filled its buffer: bytes may be left that no event will announce."""
        return self._full

    @property
    def may_read(self) -> bool:
        """Bytes may be there to read: the last read filled its buffer, or an event came
        since the last short read."""
        waiter = self._waiter
        return self._full or (waiter is not None and waiter.ready)

    def serve_reads(self, reader: Reader | None) -> bool:
        """Have ``reader`` called for this socket's read events instead of waking a task
        (:meth:`Waiter.serve <meshd.net.waits.Waiter.serve>`), or stop with None; False when
        that can't be (no dispatcher here, or the stream is closed)."""
        if reader is None:
            waiter = self._waiter
            if waiter is not None:
                waiter.serve(None)
            return True
        waiter = self._waiter or self._watch()
        return waiter is not None and waiter.serve(reader)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the kernel takes right now; returns how many bytes that was."""
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise self._translate(exc) from exc

    def _read(self, n: int, size: int) -> None:
        """Keep the read waits' account: a short read took everything an event announced."""
        if n == size:
            self._full = True
            return
        self._full = False
        waiter = self._waiter
        if waiter is not None:
            waiter.ready = waiter.sticky

    def _watch(self) -> Waiter | None:
        """Register the socket for read waits (None: wait through Trio's I/O manager)."""
        if not EPOLL_WAITS or self._closed:
            return None
        waiter = self._waiter = current_dispatcher().watch(self.sock)
        return waiter

    def release_waits(self) -> None:
        """Drop the socket's registration for read waits (another poller takes it over)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.dispatcher.forget(waiter)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Write everything, waiting only while the kernel's buffer is full."""
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._translate(exc) from exc
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            await self._wait_writable(sock)
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise self._translate(exc) from exc
            view = view[sent:]

    async def send_eof(self) -> None:
        """Shut down the sending side (the peer reads end of stream)."""
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise self._translate(exc) from exc

    def is_stale(self) -> bool:
        """True if the peer closed, reset or sent unexpected bytes (checked without blocking)."""
        if self._closed or self.sock.fileno() < 0:
            return True
        probe = self._probe
        if probe is None:
            probe = self._probe = ReadProbe(self.sock)
        # Either end of stream, an error or bytes nobody asked for: can't be reused.
        return probe.ready()

    def close_nowait(self) -> None:
        """Close at once, waking any task parked on this socket."""
        if not self._closed:
            self._closed = True
            on_close = self.on_close
            if on_close is not None:
                self.on_close = None
                on_close()
            self.release_waits()  # a task parked on it gets ClosedResourceError
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    def reset(self) -> None:
        """Abort the connection with a TCP RST, so the peer sees an error rather than an end."""
        if not self._closed:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.close_nowait()

    async def aclose(self) -> None:
        """Close, with trio's checkpoint semantics."""
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    def _translate(self, exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._closed or exc.errno == errno.EBADF:
            return trio.ClosedResourceError("stream was closed")
        return trio.BrokenResourceError(f"connection broken: {exc.strerror or exc}")

    def peer(self) -> tuple[str, int]:
        """The remote address, or ``("", 0)`` if the socket is gone."""
        if self._peer is not None:
            return self._peer
        return socket_peer(self.sock)

    @property
    def known_peer(self) -> tuple[str, int] | None:
        """The remote address given as ``accepted_from``, else None."""
        return self._peer


def peer_address(addr: object) -> tuple[str, int]:
    """``(host, port)`` of an address ``accept()`` or ``getpeername()`` gave (IPv6 ones
    have four parts); ``("", 0)`` for any other kind (a Unix socket's path)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return ("", 0)


def socket_peer(sock: socket.socket) -> tuple[str, int]:
    """The remote address of ``sock``, or ``("", 0)`` if the socket is gone."""
    try:
        return peer_address(sock.getpeername())
    except OSError:
        return ("", 0)


class ReadProbe:
    """Whether a socket has anything to read right now: bytes, end of stream or an error.

    One ``poll(2)`` with a zero timeout on a poll object kept for the socket (registered
    once). A pooled connection is checked before every reuse; a ``recv(MSG_PEEK)`` does the
    same but raises ``BlockingIOError`` in the usual case, which measured about three times
    the cost. Check that the socket is still open first: a closed socket's descriptor number
    may belong to another one by now.
    """

    __slots__ = ("_poll",)

    def __init__(self, sock: socket.socket) -> None:
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def ready(self) -> bool:
        """True if a read would not block (POLLERR, POLLHUP and POLLNVAL count too)."""
        return bool(self._poll.poll(0))


async def open_tcp(host: str, port: int) -> SocketStream:
    """Connect to ``host:port`` without blocking the event loop (numeric hosts skip DNS)."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _name, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, errno.errorcode.get(err, str(err)))
        except OSError as exc:
            last = exc
            trio.lowlevel.notify_closing(sock)
            sock.close()
            continue
        except BaseException:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            raise
        return SocketStream(sock)
    raise OSError(f"cannot connect to {host}:{port}: {last}") from last
