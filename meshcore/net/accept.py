"""The accept loop of both daemons, with connection-level limits.

Each listening socket gets an :class:`Acceptor`, which enforces its :class:`ConnectionLimits`:

* **A cap on open connections.** A connection accepted over the cap makes room by closing the
  oldest connection that has not sent a byte yet (``idle_evicted``): such a connection costs a
  descriptor and serves nobody, and a real client sends its request right after connecting, so
  it is the newest in that queue, never the oldest. With no such connection to close, the new
  one is closed at once (``over_limit``). Connections that sent something are never touched.
* **A time to first byte.** A connection that sends nothing for ``first_byte_timeout_s`` is
  closed (``first_byte_timeout``); until then the handler isn't even started. None: no limit,
  for protocols where the server speaks first (SMTP, MySQL, SSH behind a TCP listener).
* **Running out of descriptors.** When ``accept()`` fails with ``EMFILE``/``ENFILE`` (the
  process or the system has no descriptor left), the loop closes the oldest silent connection
  if there is one, else backs off (10 ms doubling up to 1 s) and tries again, so the
  connections it has keep being served and the loop neither spins nor dies (``accept_failed``).

The default cap (:func:`default_max_connections`) sits below ``RLIMIT_NOFILE``, so a full
listener refuses at the cap before the process runs out of descriptors for its upstream
connections, log files and the like.

Every event above is passed to ``on_event`` (the daemon counts it in a metric) and kept in
:attr:`Acceptor.counts`.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

__all__ = [
    "LIMIT_EVENTS",
    "Acceptor",
    "ConnectionHandler",
    "ConnectionLimits",
    "default_max_connections",
    "nofile_limit",
    "raise_nofile_limit",
]

#: Every ``on_event`` name, for metrics that list them all.
LIMIT_EVENTS: Final = ("over_limit", "idle_evicted", "first_byte_timeout", "accept_failed")

#: Descriptors kept for what isn't a downstream connection (logs, pools, the admin server).
_RESERVED_FDS: Final = 64
_BACKOFF_MIN_S: Final = 0.01
_BACKOFF_MAX_S: Final = 1.0
#: ``accept()`` errors that say nothing about the listening socket: retry later.
_TRANSIENT: Final = frozenset(
    {errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPROTO}
)
_OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE})

ConnectionHandler = Callable[[socket.socket, Any], Awaitable[None]]
"""Serves one accepted connection: ``(non-blocking socket, peer address)``.

The acceptor closes the socket when the handler returns (closing it earlier is fine).
"""


def nofile_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE`` (a large number if unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one (at most 2**20); the new soft limit.

    systemd starts services with a soft limit of 1024 and a much higher hard one, expecting
    programs that need more to raise it themselves (as Go's runtime does). The daemons call
    this once at start, before deriving their default connection caps.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return nofile_limit()
    # Refused e.g. above fs.nr_open: keep what we have.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return nofile_limit()


def default_max_connections(*, fds_per_connection: int = 2) -> int:
    """A per-listener cap below ``RLIMIT_NOFILE``.

    ``fds_per_connection``: descriptors one connection may hold (a proxied one holds its
    upstream connection too). At least 16, so a tiny limit still serves someone.
    """
    return max(16, (nofile_limit() - _RESERVED_FDS) // max(1, fds_per_connection))


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Connection-level limits of one listener."""

    #: Open connections at most (accepted, not yet closed).
    max_connections: int
    #: A connection that sends nothing for this long is closed; None: no limit.
    first_byte_timeout_s: float | None = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.first_byte_timeout_s is not None and not self.first_byte_timeout_s > 0:
            raise ValueError("first_byte_timeout_s must be positive")


class _Conn:
    """One accepted connection, for as long as it counts against the cap."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def close(self) -> None:
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


class Acceptor:
    """Accepts on one listening socket within :class:`ConnectionLimits`.

    ``limits`` may be replaced while serving (a new snapshot); new connections and the next
    cap check use the new value.
    """

    def __init__(
        self,
        limits: ConnectionLimits,
        handler: ConnectionHandler,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.limits = limits
        self._handler = handler
        self._on_event = on_event
        self._live: set[_Conn] = set()
        # Connections that have sent nothing yet, oldest first (dicts keep insertion order).
        self._silent: dict[_Conn, None] = {}
        #: How often each of :data:`LIMIT_EVENTS` happened.
        self.counts: dict[str, int] = dict.fromkeys(LIMIT_EVENTS, 0)

    @property
    def open_connections(self) -> int:
        """Connections accepted and not closed yet."""
        return len(self._live)

    @property
    def silent_connections(self) -> int:
        """Open connections that have not sent a byte yet."""
        return len(self._silent)

    def close_silent(self) -> None:
        """Close every connection that has not sent a byte (draining)."""
        while self._silent:
            self._evict()

    async def serve(self, sock: socket.socket, nursery: trio.Nursery) -> None:
        """Accept on ``sock`` until cancelled; each connection runs in ``nursery``.

        Accepts in batches until the backlog is empty, so a burst costs one wakeup.
        """
        backoff = _BACKOFF_MIN_S
        accept = _accept_of(sock)
        while True:
            try:
                conn, addr = accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    raise
                if exc.errno in _OUT_OF_FDS:
                    self._event("accept_failed")
                    if self._silent:
                        self._evict()  # frees a descriptor: retry at once
                        continue
                await trio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_MIN_S
            if len(self._live) >= self.limits.max_connections:
                if not self._silent:
                    conn.close()
                    self._event("over_limit")
                    continue
                self._evict()
            conn.setblocking(False)
            entry = _Conn(conn)
            self._live.add(entry)
            timeout = self.limits.first_byte_timeout_s
            if timeout is not None:
                # Silent from now on, not from when its task starts: in a burst, many are
                # accepted before any task runs, and each must be evictable at once.
                self._silent[entry] = None
            nursery.start_soon(self._run, entry, addr, timeout)

    def _evict(self) -> None:
        oldest = next(iter(self._silent))
        del self._silent[oldest]
        self._live.discard(oldest)
        oldest.close()  # wakes its task, parked in wait_readable, with ClosedResourceError
        self._event("idle_evicted")

    def _event(self, name: str) -> None:
        self.counts[name] += 1
        if self._on_event is not None:
            self._on_event(name)

    async def _run(self, conn: _Conn, addr: Any, first_byte_s: float | None) -> None:
        try:
            if conn.sock.fileno() == -1:
                return  # evicted before this task started
            if first_byte_s is not None:
                if _readable_now(conn.sock):
                    # The usual case: the client wrote right behind its connect. Saves the
                    # deadline scope and the park/wake through epoll.
                    self._silent.pop(conn, None)
                else:
                    try:
                        with trio.move_on_after(first_byte_s) as timer:
                            await trio.lowlevel.wait_readable(conn.sock)
                    except trio.ClosedResourceError:
                        return  # evicted
                    finally:
                        self._silent.pop(conn, None)
                    if timer.cancelled_caught:
                        self._event("first_byte_timeout")
                        return
                    if conn.sock.fileno() == -1:
                        # Evicted (a drain's close_silent, a full listener) after the socket
                        # became readable but before this task ran again: nothing to serve.
                        return
            await self._handler(conn.sock, addr)
        finally:
            self._silent.pop(conn, None)
            self._live.discard(conn)
            conn.close()


def _accept_of(listener: socket.socket) -> Callable[[], tuple[socket.socket, Any]]:
    """``listener.accept`` without its per-call look-ups.

    ``socket.accept`` converts the listener's family and type to enums (interpreted Python,
    twice per connection) to build the accepted socket; they are the same for every
    connection, so they are taken once here. The socket is built as ``socket.accept`` builds
    it, from the descriptor ``_socket.socket._accept`` returns (the listener is non-blocking,
    so ``accept``'s reset to blocking mode never applies). Without ``_accept`` (another
    Python), ``accept`` itself.
    """
    raw = getattr(listener, "_accept", None)
    if raw is None or listener.gettimeout() != 0.0:
        return listener.accept
    family, type_, proto = int(listener.family), int(listener.type), listener.proto
    make = socket.socket

    def accept() -> tuple[socket.socket, Any]:
        fd, addr = raw()
        return make(family, type_, proto, fileno=fd), addr

    return accept


def _readable_now(sock: socket.socket) -> bool:
    """Whether a read of ``sock`` would not block (bytes, end of stream or an error).

    A ``recv(MSG_PEEK)`` of one byte: nothing is consumed, and it raises only when there is
    nothing yet.
    """
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True  # a reset is readable too: the handler's first read reports it
    return True
