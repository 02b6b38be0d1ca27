"""Upstream connection pools: one per endpoint, shared by every snapshot that names it.

Pools are keyed by address, not by cluster, so a snapshot swap keeps warm connections.
Idle connections are reused most-recently-used first (warm in the kernel and in the peer),
checked without blocking before every reuse (a peer close, or bytes nobody asked for, and the
connection is closed instead), and closed after the idle timeout.

A cluster whose endpoints are sidecars (``Cluster.tls``) gets pools of its own, keyed by the
SPIFFE ID expected too: their connections are mTLS (once this sidecar has an identity),
the peer's identity is checked after each handshake, and each pool keeps the last TLS
session of its endpoint for resumption.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from meshd.errors import PoolOverflow, UpstreamConnectError, UpstreamTlsError
from meshd.net.stream import SocketStream, open_tcp

if TYPE_CHECKING:
    # The TLS layer (with ssl and OpenSSL, ~4 MB resident) loads with a pool's first mTLS
    # connection: a sidecar without TLS never loads it (issue 15).
    import ssl

    from meshd.net.tls import TlsStream


class ClientContexts(Protocol):
    """Where a pool finds the client TLS context in force (None: no identity yet)."""

    client: ssl.SSLContext | None


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Per-endpoint limits, from the cluster that uses the endpoint."""

    max_connections: int = 1024
    max_idle: int = 128
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0


class UpstreamConnection:
    """A pooled upstream connection; give it back with :meth:`EndpointPool.release`."""

    __slots__ = ("acquired_at", "pool", "protocol_state", "reused", "session_taken", "stream")

    def __init__(self, pool: EndpointPool, stream: SocketStream | TlsStream) -> None:
        self.pool = pool
        self.stream = stream
        self.reused = False
        #: When a cluster's ``acquire`` gave it out (:func:`meshd.context.now`), until its
        #: ``release``; -1.0: not given out by one.
        self.acquired_at = -1.0
        #: TLS: this connection's session was kept for resumption already.
        self.session_taken = False
        #: Per-connection protocol state the proxy keeps across requests (its parser).
        self.protocol_state: Any = None


class EndpointPool:
    """Connections to one ``host:port``."""

    __slots__ = (
        "_idle",
        "active",
        "closed",
        "contexts",
        "created",
        "host",
        "limits",
        "port",
        "resumed",
        "reuses",
        "session",
        "tls_id",
    )

    def __init__(
        self,
        host: str,
        port: int,
        limits: PoolLimits,
        *,
        tls_id: str | None = None,
        contexts: ClientContexts | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.limits = limits
        #: The SPIFFE ID the endpoint must present (None: plaintext pool).
        self.tls_id = tls_id
        self.contexts = contexts
        #: The last TLS session of this endpoint, offered for resumption.
        self.session: ssl.SSLSession | None = None
        #: TLS connections whose handshake resumed ``session``.
        self.resumed = 0
        self._idle: list[tuple[UpstreamConnection, float]] = []
        self.active = 0
        self.created = 0
        self.reuses = 0
        self.closed = False

    @property
    def idle(self) -> int:
        """Connections waiting in the pool."""
        return len(self._idle)

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled connection that is still usable, or None (then :meth:`acquire` connects).

        Synchronous, so the request path's usual case costs no coroutine of its own.
        """
        idle = self._idle
        if not idle:
            return None
        expired = time.monotonic() - self.limits.idle_timeout_s
        while idle:
            conn, since = idle.pop()
            # Every reuse asks the kernel first (one non-blocking peek): bytes the upstream
            # wrote after its complete response, however soon, must never become the next
            # request's answer, and a closed connection is not worth a failed attempt.
            if since < expired or conn.stream.is_stale():
                conn.stream.close_nowait()
                continue
            self.active += 1
            self.reuses += 1
            conn.reused = True
            return conn
        return None

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A pooled connection if one is usable (unless ``fresh``), else a new one."""
        if not fresh:
            conn = self.take_idle()
            if conn is not None:
                return conn
        if self.active + len(self._idle) >= self.limits.max_connections:
            raise PoolOverflow("upstream_overflow", f"{self.host}:{self.port}")
        self.active += 1
        ctx = None
        if self.tls_id is not None and self.contexts is not None:
            ctx = self.contexts.client
        if ctx is not None:
            return await self._connect_tls(ctx)
        try:
            with trio.move_on_after(self.limits.connect_timeout_s) as scope:
                stream = await open_tcp(self.host, self.port)
        except OSError as exc:
            self.active -= 1
            raise UpstreamConnectError("upstream_connect_failed", str(exc)) from exc
        except BaseException:
            self.active -= 1
            raise
        if scope.cancelled_caught:
            self.active -= 1
            raise UpstreamConnectError(
                "upstream_connect_failed", f"{self.host}:{self.port}: connect timeout"
            )
        self.created += 1
        return UpstreamConnection(self, stream)

    async def _connect_tls(self, ctx: ssl.SSLContext) -> UpstreamConnection:
        from meshd.net.tls import TlsHandshakeError, tls_connect
        from meshd.net.tlsconfig import PeerIdentityError, check_peer

        expected = self.tls_id
        assert expected is not None
        stream: TlsStream | None = None
        try:
            with trio.move_on_after(self.limits.connect_timeout_s) as scope:
                stream = await tls_connect(self.host, self.port, ctx, session=self.session)
            if stream is None or scope.cancelled_caught:
                raise UpstreamConnectError(
                    "upstream_connect_failed", f"{self.host}:{self.port}: connect timeout"
                )
            check_peer(stream, expected)
        except OSError as exc:
            self.active -= 1
            raise UpstreamConnectError("upstream_connect_failed", str(exc)) from exc
        except TlsHandshakeError as exc:
            self.active -= 1
            raise UpstreamTlsError("upstream_tls_failed", str(exc)) from exc
        except PeerIdentityError as exc:
            self.active -= 1
            assert stream is not None
            stream.close_nowait()
            raise UpstreamTlsError("upstream_identity_mismatch", str(exc)) from exc
        except BaseException:
            self.active -= 1
            if stream is not None:
                stream.close_nowait()
            raise
        self.created += 1
        if stream.session_reused:
            self.resumed += 1
        return UpstreamConnection(self, stream)

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Return ``conn``: pooled when ``reusable`` and there is room, else closed."""
        self.active -= 1
        if self.tls_id is not None and not conn.session_taken:
            # Once per connection (reading a session copies it); something was read by now,
            # so the server's ticket has usually arrived.
            conn.session_taken = True
            stream = conn.stream
            if not isinstance(stream, SocketStream):  # a TlsStream
                self.session = stream.session or self.session
        if reusable and not self.closed and len(self._idle) < self.limits.max_idle:
            self._idle.append((conn, time.monotonic()))
        else:
            conn.stream.close_nowait()

    def expire(self, now: float) -> int:
        """Close idle connections past the idle timeout; returns how many."""
        deadline = now - self.limits.idle_timeout_s
        keep = [(s, t) for s, t in self._idle if t >= deadline]
        expired = len(self._idle) - len(keep)
        for conn, since in self._idle:
            if since < deadline:
                conn.stream.close_nowait()
        self._idle = keep
        return expired

    def close(self) -> None:
        """Close idle connections and stop pooling (in-use ones close when released)."""
        self.closed = True
        for conn, _ in self._idle:
            conn.stream.close_nowait()
        self._idle = []


class PoolManager:
    """All endpoint pools of a sidecar, plus the task that expires idle connections."""

    def __init__(self, contexts: ClientContexts | None = None) -> None:
        self._pools: dict[tuple[str, int, str | None], EndpointPool] = {}
        self.contexts = contexts

    def pool(
        self, host: str, port: int, limits: PoolLimits, *, tls_id: str | None = None
    ) -> EndpointPool:
        """The pool for ``host:port`` (limits follow the newest snapshot that names it).

        With ``tls_id`` the pool's connections are mTLS to a peer with that SPIFFE ID.
        """
        key = (host, port, tls_id)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = EndpointPool(
                host, port, limits, tls_id=tls_id, contexts=self.contexts
            )
        elif pool.limits != limits:
            pool.limits = limits
        return pool

    def __iter__(self) -> Iterator[EndpointPool]:
        return iter(list(self._pools.values()))

    def stats(self) -> Iterator[tuple[str, int, int, int]]:
        """(endpoint, active, idle, created) per pool."""
        for pool in self._pools.values():
            yield (f"{pool.host}:{pool.port}", pool.active, pool.idle, pool.created)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire idle connections periodically until cancelled; then close every pool."""
        task_status.started()
        try:
            while True:
                interval = min(
                    (p.limits.idle_timeout_s for p in self._pools.values()), default=math.inf
                )
                await trio.sleep(min(max(interval / 4, 0.05), 5.0))
                now = time.monotonic()
                for pool in list(self._pools.values()):
                    pool.expire(now)
                    if pool.active == 0 and pool.idle == 0 and pool.closed:
                        del self._pools[(pool.host, pool.port, pool.tls_id)]
        finally:
            for pool in self._pools.values():
                pool.close()
