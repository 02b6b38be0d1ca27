"""Connection- and head-level limits of the lean HTTP servers, and the counter of their events.

Apart from :mod:`controld.registry.httpserver` so configuration (the daemon's settings, the
command line) can name them without importing the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from meshcore.net.accept import ConnectionLimits, default_max_connections

__all__ = ["HANDSHAKE_TIMEOUT_S", "ServerLimits", "limit_events_counter"]

#: Longest a TLS client may take to finish its handshake.
HANDSHAKE_TIMEOUT_S = 10.0
#: Lean servers per controld (registry, push, TLS): their default caps share RLIMIT_NOFILE.
_SERVERS = 3


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Connection- and head-level limits of one server; the defaults are safe."""

    #: Open connections at most; None: a share of RLIMIT_NOFILE (below it).
    max_connections: int | None = None
    #: A new connection that sends nothing for this long is closed (under TLS, the handshake
    #: must also finish within :data:`HANDSHAKE_TIMEOUT_S`).
    first_byte_timeout_s: float = 10.0
    #: Time from a request's first byte to the end of its head; over it: 408.
    head_timeout_s: float = 10.0
    #: Request line plus headers, in bytes; over it: 431.
    max_head_bytes: int = 64 * 1024
    #: Header fields per request; over it: 431.
    max_headers: int = 100

    def __post_init__(self) -> None:
        for name in ("first_byte_timeout_s", "head_timeout_s", "max_head_bytes", "max_headers"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")

    def connection_limits(self, *, tls: bool) -> ConnectionLimits:
        """What the accept loop enforces."""
        first_byte = self.first_byte_timeout_s
        if tls:
            first_byte = min(first_byte, HANDSHAKE_TIMEOUT_S)
        return ConnectionLimits(
            max_connections=self.max_connections
            or default_max_connections(fds_per_connection=_SERVERS),
            first_byte_timeout_s=first_byte,
        )


def limit_events_counter(registry: CollectorRegistry) -> Counter:
    """``controld_listener_limit_events_total{listener, event}``, registered in ``registry``.

    Pass ``lambda event: counter.labels(<listener>, event).inc()`` as a server's ``on_event``.
    """
    return Counter(
        "controld_listener_limit_events",
        "Connections closed or refused by a listener's connection limits, and failed accepts "
        "(over_limit, idle_evicted, first_byte_timeout, accept_failed).",
        ("listener", "event"),
        registry=registry,
    )
