"""L4 listener connections: pick an endpoint, connect, pump bytes both ways."""

from __future__ import annotations

import trio

from meshd.context import ProxyShared
from meshd.errors import UpstreamError
from meshd.net.pump import pump
from meshd.net.stream import SocketStream, Stream
from meshd.net.tls import TlsStream
from meshd.tcp.config import TcpListenerConfig


async def serve_tcp(
    down: Stream, cfg: TcpListenerConfig, shared: ProxyShared, *, peer_identity: bytes | None = None
) -> None:
    """Serve one downstream TCP connection until both sides are done.

    ``peer_identity``: the client's SPIFFE ID (inbound mTLS). A connection the listener's
    access policy denies is closed at once, before any byte is forwarded.
    """
    cluster = cfg.cluster
    stats = shared.stats
    if cfg.direction == "outbound":
        source, destination = cfg.local_service, cluster.service
    else:
        source, destination = "unknown", cfg.local_service
    stats.downstream_opened(cfg.name)
    try:
        guard = cfg.guard
        if guard is not None and not guard.admit_connection(peer_identity):
            if isinstance(down, SocketStream | TlsStream):
                down.reset()
            return
        try:
            endpoint, conn = await cluster.acquire(fresh=True)
        except UpstreamError as exc:
            stats.upstream_error(cluster.name, exc.reason)
            if isinstance(down, SocketStream):
                down.reset()
            return
        stats.tcp_opened(cfg.direction, source, destination)
        received = sent = 0
        try:
            result = await pump(down, conn.stream, idle_timeout_s=cfg.idle_timeout_s)
            received, sent = result.downstream_to_upstream, result.upstream_to_downstream
            if result.reason == "reset" and isinstance(down, SocketStream):
                down.reset()
        finally:
            cluster.release(endpoint, conn, reusable=False, timed=False)
            stats.tcp_closed(cfg.direction, source, destination, received, sent)
    finally:
        stats.downstream_closed(cfg.name)
        with trio.CancelScope(shield=True):
            await down.aclose()
