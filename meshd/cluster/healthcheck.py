"""Active health checks: the sidecar probes each endpoint of clusters with ``health_check``.

:class:`HealthChecker` is a service object owning one probe loop per (cluster, endpoint). A
probe connects the way requests do (a private :class:`~meshd.cluster.pool.EndpointPool`:
plain TCP, or mTLS with the peer's SPIFFE ID checked when the endpoint is a sidecar), then:

- ``http``: sends ``GET <path>`` (``Host`` is the cluster's service) and succeeds on a 2xx
  status line within ``timeout_s``; through a sidecar the request reaches the app behind it
  like any other, subject to that sidecar's access policy;
- ``tcp``: succeeds once the connection (and TLS handshake) is up within ``timeout_s``.

The first probe runs at once, then every ``interval_s``. Results go to the cluster's
:class:`~meshd.cluster.state.ClusterState` (thresholds, metrics); an endpoint new to the
sidecar starts healthy because the registry put it in the snapshot as healthy. The set of
probes follows each snapshot applied (:meth:`HealthChecker.update`): probes of endpoints that
stay keep running and keep their state, others start or stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import trio

from meshcore.model import Cluster
from meshcore.model.policy import HealthCheck
from meshd.cluster.outlier import Address
from meshd.cluster.pool import ClientContexts, EndpointPool, PoolLimits
from meshd.cluster.state import ClusterStates
from meshd.errors import UpstreamError

__all__ = ["HealthChecker", "parse_status_line", "probe"]

#: Bytes read at most while looking for the status line.
_MAX_STATUS_LINE: Final = 8192
_USER_AGENT: Final = b"meshd-healthcheck"

#: (cluster name, host, port, expected SPIFFE ID or None)
_Key = tuple[str, str, int, str | None]


def parse_status_line(data: bytes) -> int | None:
    """The status of an HTTP/1.x status line at the start of ``data``; None if incomplete
    or not one."""
    end = data.find(b"\r\n")
    if end < 0:
        return None
    parts = data[:end].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None
    return int(parts[1])


def _limits(check: HealthCheck) -> PoolLimits:
    # One connection at a time, never pooled: every probe proves a new connection works.
    return PoolLimits(max_connections=1, max_idle=0, connect_timeout_s=check.timeout_s)


async def probe(pool: EndpointPool, check: HealthCheck, host: str) -> bool:
    """One health check of ``pool``'s endpoint; True on success. Never raises for an
    unhealthy endpoint (cancellation still propagates)."""
    with trio.move_on_after(check.timeout_s):
        try:
            conn = await pool.acquire(fresh=True)
        except UpstreamError:
            return False
        try:
            if check.kind == "tcp":
                return True
            request = (
                b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
                % (check.path.encode(), host.encode(), _USER_AGENT)
            )
            await conn.stream.send_all(request)
            data = b""
            while b"\r\n" not in data and len(data) < _MAX_STATUS_LINE:
                chunk = await conn.stream.receive_some(4096)
                if not chunk:
                    return False
                data += chunk
            status = parse_status_line(data)
            return status is not None and 200 <= status < 300
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        finally:
            pool.release(conn, reusable=False)
    return False


@dataclass(slots=True, eq=False)
class _Probe:
    cluster: str
    address: Address
    service: str
    pool: EndpointPool
    check: HealthCheck
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class HealthChecker:
    """Runs the active health checks of the snapshot in service."""

    def __init__(self, states: ClusterStates, contexts: ClientContexts | None = None) -> None:
        self.states = states
        self.contexts = contexts
        self._probes: dict[_Key, _Probe] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def probes(self) -> int:
        """Probe loops configured."""
        return len(self._probes)

    def update(self, models: Iterable[Cluster]) -> None:
        """Probe the endpoints of ``models`` that have a ``health_check``, and only those."""
        wanted: dict[_Key, tuple[Cluster, Address, HealthCheck]] = {}
        for model in models:
            check = model.health_check
            if check is None:
                continue
            tls_id = model.tls.spiffe_id if model.tls is not None else None
            for ep in model.endpoints:
                # As the cluster's pools: mTLS per endpoint unless it is a plain one.
                ep_tls = (ep.spiffe_id or tls_id) if tls_id and not ep.plaintext else None
                wanted[(model.name, ep.host, ep.port, ep_tls)] = (model, (ep.host, ep.port), check)
        for key in [k for k in self._probes if k not in wanted]:
            self._probes.pop(key).scope.cancel()
        for key, (model, address, check) in wanted.items():
            existing = self._probes.get(key)
            if existing is not None:
                existing.check = check
                existing.service = model.service
                existing.pool.limits = _limits(check)
                continue
            pool = EndpointPool(
                address[0], address[1], _limits(check), tls_id=key[3], contexts=self.contexts
            )
            new = self._probes[key] = _Probe(model.name, address, model.service, pool, check)
            if self._nursery is not None:
                self._nursery.start_soon(self._loop, new)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the probes (those configured already, and later ones) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for item in self._probes.values():
                    nursery.start_soon(self._loop, item)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    async def _loop(self, item: _Probe) -> None:
        with item.scope:
            while True:
                ok = await probe(item.pool, item.check, item.service)
                if item.scope.cancel_called:
                    return
                self.states.get(item.cluster).record_check(item.address, ok)
                await trio.sleep(item.check.interval_s)
