"""The mTLS stream: OpenSSL over a non-blocking TCP socket, under trio's fd waits.

:class:`TlsStream` fills the :class:`~meshd.net.stream.Stream` protocol like
:class:`~meshd.net.stream.SocketStream` does: it calls OpenSSL's read/write on the socket
directly and parks on the loop's ``wait_readable``/``wait_writable`` only when OpenSSL
says it wants to read or write. OpenSSL's contract lets either operation
want either direction, so every loop handles both (with TLS 1.3 only, reads only want reads
and writes only writes in practice: no renegotiation, KeyUpdate answers go out with the
next write). Decrypted bytes buffered inside OpenSSL are always drained first: we only park
after OpenSSL itself asked for more input.

The connection object is OpenSSL's own, without the ``ssl.SSLSocket`` wrapper
(:mod:`meshd.net.sslconn` says why).

One task may receive while another sends (full duplex); two tasks receiving (or sending)
at once is an error, as with any trio stream.

Errors are trio's, as for ``SocketStream``: :class:`trio.BrokenResourceError` for a reset, a
TLS alert or an end of TCP without ``close_notify`` (a possible truncation),
:class:`trio.ClosedResourceError` after :meth:`TlsStream.aclose`. Handshake failures raise
:class:`TlsHandshakeError` carrying OpenSSL's reason.

Streams are opened (connected or accepted, handshaken, admitted) by :mod:`meshd.net.tls`,
which re-exports this module's public names: callers import them from there.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
import struct

import trio

from meshd.errors import MeshdError
from meshd.net.sslconn import CLOSED, SslConnection, os_reason, ssl_reason
from meshd.net.stream import RECEIVE_SIZE, ReadProbe, io_waits, socket_peer
from meshd.net.waits import EPOLL_WAITS, Reader, Waiter, current_dispatcher

__all__ = ["TlsError", "TlsHandshakeError", "TlsStream"]

_WantRead = ssl.SSLWantReadError
_WantWrite = ssl.SSLWantWriteError

_LINGER_RESET = struct.pack("ii", 1, 0)


class TlsError(MeshdError):
    """Base of the TLS layer's own errors."""


class TlsHandshakeError(TlsError):
    """The TLS handshake failed (bad certificate, protocol mismatch, reset, ...)."""


class TlsStream:
    """A TLS connection over a non-blocking TCP socket.

    Build one with :func:`~meshd.net.tls.tls_connect` or :func:`~meshd.net.tls.tls_accept`;
    both return it handshaken. A ``send_all`` cancelled while parked leaves OpenSSL
    mid-record, so the stream is then broken: later sends raise
    :class:`trio.BrokenResourceError` (trio's ``SSLStream`` does the same).
    """

    __slots__ = (
        "__weakref__",  # a PeerGuard keeps open streams weakly, to close a revoked peer's
        "_broken",
        "_closed",
        "_conn",
        "_eof_sent",
        "_fresh",
        "_more",
        "_peer",
        "_peer_der",
        "_probe",
        "_reused",
        "_unwrapped",
        "_wait_readable",
        "_wait_writable",
        "_waiter",
        "sock",
    )

    #: A next request is awaited with :meth:`receive_later`: on a keep-alive connection it
    #: comes a round trip after the last response, so reading first would only raise
    #: SSLWantRead (a failed ``read`` and a Python exception per request).
    parks_reads = True

    def __init__(
        self, sock: socket.socket, conn: SslConnection, peer: tuple[str, int] | None = None
    ) -> None:
        #: The TCP socket (non-blocking); OpenSSL reads and writes its descriptor.
        self.sock = sock
        self._conn = conn
        #: The remote address when known already (accepted connections), else asked for.
        self._peer = peer
        self._closed = False
        self._broken = False
        self._eof_sent = False
        # The shutdown completed: both close_notify alerts went through, so reads answer
        # end of stream themselves.
        self._unwrapped = False
        self._peer_der: bytes | None = None
        self._reused = False
        self._probe: ReadProbe | None = None
        # No read since the handshake: a client's first bytes usually came right behind its
        # Finished, so the first receive_later reads at once.
        self._fresh = True
        # The running loop's own waits, taken once (see meshd.net.stream.io_waits).
        self._wait_readable, self._wait_writable = io_waits()
        #: The socket's registration with the run's dispatcher, made by :meth:`serve_reads`.
        self._waiter: Waiter | None = None
        #: Records may be left on the socket: the last read returned bytes.
        self._more = True

    async def do_handshake(self) -> None:
        """Run the handshake; raise :class:`TlsHandshakeError` if it fails."""
        sock = self.sock
        conn = self._conn
        while True:
            try:
                conn.do_handshake()
            except _WantRead:
                await self._wait_readable(sock)
            except _WantWrite:
                await self._wait_writable(sock)
            except ssl.SSLError as exc:
                raise TlsHandshakeError(f"TLS handshake failed: {ssl_reason(exc)}") from exc
            except (OSError, ValueError) as exc:  # ValueError: closed under us
                raise TlsHandshakeError(f"TLS handshake failed: {os_reason(exc)}") from exc
            else:
                # Kept: gone once the stream is closed.
                self._peer_der = conn.getpeercert(True)
                self._reused = bool(conn.session_reused)
                return
            if sock.fileno() == -1:
                # Closed while this task was parked or about to resume (a handshake deadline,
                # :mod:`meshd.mtls`): OpenSSL keeps the descriptor's number, which may be
                # another socket's by now, so it must not read or write again.
                raise TlsHandshakeError("TLS handshake failed: connection closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Decrypted bytes, or ``b""`` once the peer sent ``close_notify``."""
        if self._unwrapped:
            # Both close_notify went through: nothing more comes over TLS.
            return b""
        sock = self.sock
        conn = self._conn
        size = max_bytes or RECEIVE_SIZE
        while True:
            try:
                return conn.read(size)
            except _WantRead:
                await self._wait_readable(sock)
                continue
            except _WantWrite:
                await self._wait_writable(sock)
                continue
            except (OSError, ValueError) as exc:
                return self._read_failed(exc)

    async def receive_later(self, max_bytes: int | None = None) -> bytes:
        """Like :meth:`receive_some`, for when bytes can't be there yet (a reply just asked for).

        Parks on the fd first, saving the read that would only have raised SSLWantRead,
        unless OpenSSL already holds decrypted bytes (``pending()``), the stream ended, or
        this is the first read since the handshake (a client's first request usually
        arrives with its Finished). For a reply to a request just sent, parking first
        measured slower than :meth:`receive_some` for 1 KB echoes with an echo server on
        loopback (the reply was usually there already), but a sidecar's upstream takes
        longer than that to answer.
        """
        if self._fresh:
            self._fresh = False
            # The request usually came with the client's Finished: read it here, without
            # the coroutine of receive_some (which waits if it didn't).
            if not self._unwrapped:
                try:
                    return self._conn.read(max_bytes or RECEIVE_SIZE)
                except (_WantRead, _WantWrite):
                    pass
                except (OSError, ValueError) as exc:
                    return self._read_failed(exc)
        elif not self._unwrapped and not self._conn.pending():
            try:
                await self._wait_readable(self.sock)
            except (OSError, ValueError) as exc:
                raise self._translate(exc) from exc
            # The usual case read here, not through receive_some: a coroutine less per read.
            try:
                return self._conn.read(max_bytes or RECEIVE_SIZE)
            except (_WantRead, _WantWrite):
                pass  # woken before a whole record came: receive_some waits for the rest
            except (OSError, ValueError) as exc:
                return self._read_failed(exc)
        return await self.receive_some(max_bytes)

    def receive_nowait(self, max_bytes: int | None = None) -> bytes | None:
        """Decrypted bytes there right now (one record's), ``b""`` at the end, None if
        OpenSSL needs more from the socket first."""
        self._fresh = False
        if self._unwrapped:
            return b""
        try:
            data = self._conn.read(max_bytes or RECEIVE_SIZE)
        except (_WantRead, _WantWrite):
            self._more = False
            waiter = self._waiter
            if waiter is not None:
                waiter.drained()
            return None
        except (OSError, ValueError) as exc:
            return self._read_failed(exc)
        self._more = True
        return data

    @property
    def may_read(self) -> bool:
        """Bytes may be there to read: decrypted ones OpenSSL holds, or more on the socket
        (OpenSSL reads a record at a time, so a read that returned bytes doesn't say the
        socket is drained: a ``poll`` does, cheaper than a read that fails), or an event
        came since the last read wanted more."""
        if self._more and not self._closed:
            probe = self._probe
            if probe is None:
                probe = self._probe = ReadProbe(self.sock)
            self._more = bool(self._conn.pending()) or probe.ready()
        waiter = self._waiter
        return self._more or (waiter is not None and waiter.ready)

    #: A read never fills its buffer (a record is at most 16 KiB): see :attr:`may_read`.
    unread = False

    def serve_reads(self, reader: Reader | None) -> bool:
        """As :meth:`SocketStream.serve_reads <meshd.net.stream.SocketStream.serve_reads>`:
        ``reader`` is called for the socket's events (read until :meth:`receive_nowait`
        says None); the stream's own waits stay Trio's."""
        if reader is None:
            waiter = self._waiter
            if waiter is not None:
                waiter.serve(None)
            return True
        waiter = self._waiter
        if waiter is None:
            if not EPOLL_WAITS or self._closed:
                return False
            waiter = self._waiter = current_dispatcher().watch(self.sock)
            if waiter is None:
                return False
        return waiter.serve(reader)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and write what OpenSSL takes right now (all of ``data`` or nothing); the
        bytes taken. After 0, :meth:`send_all` must be given the same bytes."""
        if self._broken or self._eof_sent:
            raise self._send_refused()
        try:
            return self._conn.write(data)
        except (_WantRead, _WantWrite):
            return 0
        except (OSError, ValueError) as exc:
            raise self._translate(exc) from exc

    def release_waits(self) -> None:
        """Drop the socket's registration with the dispatcher (before it closes)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.dispatcher.forget(waiter)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and write all of ``data``, parking only while OpenSSL can't proceed."""
        if self._broken or self._eof_sent:
            raise self._send_refused()
        try:
            sent = self._conn.write(data)
        except (_WantRead, _WantWrite):
            sent = 0
        except (OSError, ValueError) as exc:
            raise self._translate(exc) from exc
        if sent == len(data):
            return
        await self._send_slow(data, sent)

    async def _send_slow(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        # OpenSSL without partial writes: after WANT_*, the retry must pass the same bytes,
        # which `view` is until a call returns a count.
        sock = self.sock
        conn = self._conn
        view = memoryview(data)[sent:]
        want_read = False
        try:
            while view:
                if want_read:
                    await self._wait_readable(sock)
                else:
                    await self._wait_writable(sock)
                try:
                    sent = conn.write(view)
                except _WantRead:
                    want_read = True
                    continue
                except _WantWrite:
                    want_read = False
                    continue
                except (OSError, ValueError) as exc:
                    raise self._translate(exc) from exc
                want_read = False
                view = view[sent:]
        except BaseException:
            self._broken = True
            raise

    async def send_eof(self) -> None:
        """Send ``close_notify``: the peer reads end of stream; we can still receive.

        TLS 1.3 allows this half-close. Returns once the alert is written; it doesn't wait
        for the peer's own ``close_notify``.
        """
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._broken:
            raise self._send_refused()
        if self._eof_sent:
            return
        sock = self.sock
        self._eof_sent = True
        while True:
            try:
                self._conn.shutdown()
            except _WantRead:
                # Our alert is out; the peer's hasn't come yet. That's the half-close.
                return
            except _WantWrite:
                await self._wait_writable(sock)
                continue
            except (OSError, ValueError) as exc:
                raise self._translate(exc) from exc
            self._unwrapped = True
            return

    def is_stale(self) -> bool:
        """True if the peer closed, reset or sent unexpected data (checked without blocking).

        TLS control records (session tickets, key updates) waiting on the socket are read
        and don't make the connection stale; application bytes do.
        """
        sock = self.sock
        if self._closed or self._broken or self._unwrapped or self._conn.pending():
            return True
        if sock.fileno() < 0:
            return True
        probe = self._probe
        if probe is None:
            probe = self._probe = ReadProbe(sock)
        if not probe.ready():
            return False  # nothing on the socket (the usual case)
        try:
            self._conn.read(1)
        except _WantRead:
            return False  # only control records
        except (OSError, ValueError):
            return True
        # Either end of stream or bytes nobody asked for: the connection can't be reused.
        return True

    def reset(self) -> None:
        """Abort with a TCP RST and no ``close_notify``: the peer sees an error, not an end."""
        if not self._closed:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self._broken = True
            self.close_nowait()

    def close_nowait(self) -> None:
        """Close at once: a best-effort ``close_notify`` that never waits, then the socket."""
        if self._closed:
            return
        self._closed = True
        sock = self.sock
        if not (self._broken or self._unwrapped):
            # One non-blocking attempt: a dead or stalled peer must not hold us up.
            try:  # noqa: SIM105 - not contextlib.suppress: a context manager per connection
                self._conn.shutdown()
            except (OSError, ValueError):
                pass  # usually SSLWantRead: our close_notify is out, the peer's not in
        # OpenSSL's state goes now, before the descriptor does (its number may be reused).
        self._conn = CLOSED
        self.release_waits()
        trio.lowlevel.notify_closing(sock)
        sock.close()

    async def aclose(self) -> None:
        """Close, with trio's checkpoint semantics; returns promptly on a dead peer."""
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    def peer_certificate_der(self) -> bytes | None:
        """The peer's leaf certificate (DER), or None if it sent none."""
        return self._peer_der

    @property
    def session(self) -> ssl.SSLSession | None:
        """The TLS session, to pass to :func:`~meshd.net.tls.tls_connect` for resumption.

        With TLS 1.3 the server sends its session tickets after the handshake, so a client
        has a resumable session only once it has read something (a first response). Take it
        before :meth:`aclose` (None after). Each read copies the session (~0.3 ms with
        OpenSSL 3), so pools should take it once per connection, not per request.
        """
        if self._closed or self._unwrapped:
            return None
        return _session_of(self._conn)

    @property
    def session_reused(self) -> bool:
        """True if the handshake resumed an earlier session."""
        return self._reused

    def peer(self) -> tuple[str, int]:
        """The remote address, or ``("", 0)`` if the socket is gone."""
        if self._peer is not None:
            return self._peer
        return socket_peer(self.sock)

    def _read_failed(self, exc: OSError | ValueError) -> bytes:
        """What a read that raised ``exc`` (not a WANT_*) returns: ``b""`` for a
        ``close_notify`` after our own (CPython returns ``b""`` itself only when the peer's
        came first); else raises the stream error (ValueError: closed under us)."""
        if isinstance(exc, ssl.SSLZeroReturnError):
            return b""
        raise self._translate(exc) from exc

    def _send_refused(self) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._closed:
            return trio.ClosedResourceError("stream was closed")
        if self._broken:
            return trio.BrokenResourceError("TLS stream broken by an interrupted send")
        return trio.ClosedResourceError("send_eof was called")

    def _translate(
        self, exc: OSError | ValueError
    ) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._closed or (isinstance(exc, OSError) and exc.errno == errno.EBADF):
            return trio.ClosedResourceError("stream was closed")
        if self._unwrapped:
            return trio.ClosedResourceError("TLS session was shut down")
        if isinstance(exc, ssl.SSLError):
            return trio.BrokenResourceError(f"TLS connection broken: {ssl_reason(exc)}")
        return trio.BrokenResourceError(f"connection broken: {os_reason(exc)}")


def _session_of(conn: SslConnection) -> ssl.SSLSession | None:
    try:
        return conn.session
    except ValueError:  # no session to serialize: the handshake didn't complete
        return None
