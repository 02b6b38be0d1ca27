"""Upstream connection pools: one per endpoint, shared by every snapshot that names it.

Pools are keyed by address, not by cluster, so a snapshot swap keeps warm connections.
Idle connections are reused most-recently-used first (warm in the kernel and in the peer),
checked for a peer close without blocking before reuse, and closed after the idle timeout.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import trio

from meshd.errors import PoolOverflow, UpstreamConnectError
from meshd.net.stream import SocketStream, open_tcp


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Per-endpoint limits, from the cluster that uses the endpoint."""

    max_connections: int = 1024
    max_idle: int = 128
    idle_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0


#: A connection idle for less than this is reused without asking the kernel whether the peer
#: closed it: a peer closes idle connections after seconds, and the proxy retries the rare
#: request that meets a dead one.
_TRUST_IDLE_S = 0.1


class UpstreamConnection:
    """A pooled upstream connection; give it back with :meth:`EndpointPool.release`."""

    __slots__ = ("pool", "protocol_state", "reused", "stream")

    def __init__(self, pool: EndpointPool, stream: SocketStream) -> None:
        self.pool = pool
        self.stream = stream
        self.reused = False
        #: Per-connection protocol state the proxy keeps across requests (its parser).
        self.protocol_state: Any = None


class EndpointPool:
    """Connections to one ``host:port``."""

    __slots__ = ("_idle", "active", "closed", "created", "host", "limits", "port", "reuses")

    def __init__(self, host: str, port: int, limits: PoolLimits) -> None:
        self.host = host
        self.port = port
        self.limits = limits
        self._idle: list[tuple[UpstreamConnection, float]] = []
        self.active = 0
        self.created = 0
        self.reuses = 0
        self.closed = False

    @property
    def idle(self) -> int:
        """Connections waiting in the pool."""
        return len(self._idle)

    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A pooled connection if one is usable (unless ``fresh``), else a new one."""
        if not fresh and self._idle:
            now = time.monotonic()
            expired = now - self.limits.idle_timeout_s
            untrusted = now - _TRUST_IDLE_S
            idle = self._idle
            while idle:
                conn, since = idle.pop()
                if since < expired or (since < untrusted and conn.stream.is_stale()):
                    conn.stream.close_nowait()
                    continue
                self.active += 1
                self.reuses += 1
                conn.reused = True
                return conn
        if self.active + len(self._idle) >= self.limits.max_connections:
            raise PoolOverflow("upstream_overflow", f"{self.host}:{self.port}")
        self.active += 1
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

    def release(self, conn: UpstreamConnection, *, reusable: bool) -> None:
        """Return ``conn``: pooled when ``reusable`` and there is room, else closed."""
        self.active -= 1
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

    def __init__(self) -> None:
        self._pools: dict[tuple[str, int], EndpointPool] = {}

    def pool(self, host: str, port: int, limits: PoolLimits) -> EndpointPool:
        """The pool for ``host:port`` (limits follow the newest snapshot that names it)."""
        key = (host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = EndpointPool(host, port, limits)
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
                        del self._pools[(pool.host, pool.port)]
        finally:
            for pool in self._pools.values():
                pool.close()
