"""L4 listener connections: pick an endpoint, connect, pump bytes both ways."""

from __future__ import annotations

import trio

from meshcore.model import Endpoint
from meshd.context import ProxyShared, now
from meshd.errors import UpstreamConnectError, UpstreamError, UpstreamTlsError
from meshd.net.pump import pump
from meshd.net.stream import ProxyStream
from meshd.tcp.config import TcpListenerConfig

#: What a TCP connection reports to outlier detection once its upstream connection is open
#: (there is no response status at L4: a connection is a success or a local-origin failure).
_CONNECTED = 200


async def serve_tcp(
    down: ProxyStream,
    cfg: TcpListenerConfig,
    shared: ProxyShared,
    *,
    peer_identity: bytes | None = None,
) -> None:
    """Serve one downstream TCP connection until both sides are done.

    ``peer_identity``: the client's SPIFFE ID (inbound mTLS). A connection the listener's
    access policy denies, or that its connection-rate limit refuses, is closed (reset) at
    once, before any byte is forwarded.
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
            down.reset()
            return
        limiter = cfg.rate_limiter
        if limiter is not None:
            # Over the connection rate: closed at once, before the upstream is contacted.
            peer = down.peer()[0].encode() or None
            if limiter.check_connection(peer_identity or peer) is not None:
                down.reset()
                return
        try:
            cluster.admit()
        except UpstreamError as exc:
            stats.upstream_error(cluster.name, exc.reason)
            down.reset()
            return
        try:
            await _forward(down, cfg, shared, source, destination)
        finally:
            cluster.done()
    finally:
        stats.downstream_closed(cfg.name)
        with trio.CancelScope(shield=True):
            await down.aclose()


async def _forward(
    down: ProxyStream, cfg: TcpListenerConfig, shared: ProxyShared, source: str, destination: str
) -> None:
    cluster = cfg.cluster
    stats = shared.stats
    started = now()
    try:
        endpoint, conn = await cluster.acquire(fresh=True)
    except UpstreamError as exc:
        failed = exc.endpoint
        if isinstance(exc, UpstreamConnectError | UpstreamTlsError) and isinstance(
            failed, Endpoint
        ):
            cluster.report(failed, 0, now() - started)
        stats.upstream_error(cluster.name, exc.reason)
        down.reset()
        return
    cluster.report(endpoint, _CONNECTED, now() - started)
    stats.tcp_opened(cfg.direction, source, destination)
    received = sent = 0
    try:
        result = await pump(down, conn.stream, idle_timeout_s=cfg.idle_timeout_s)
        received, sent = result.downstream_to_upstream, result.upstream_to_downstream
        if result.reason == "reset":
            down.reset()
    finally:
        cluster.release(endpoint, conn, reusable=False, timed=False)
        stats.tcp_closed(cfg.direction, source, destination, received, sent)
