"""A cluster as the proxy uses it: pick an endpoint, check out a pooled connection.

The request path talks to a cluster only through this API, in this order::

    cluster.admit()                      # once per request; may raise PoolOverflow
    try:
        key = cluster.hash_key(headers, peer_ip)
        for each try:
            if it is a retry and not cluster.begin_retry(): stop retrying
            endpoint, conn = await cluster.acquire(hash_key=key, exclude=tried)
            ...exchange...
            cluster.report(endpoint, status, latency_s)   # status 0: no response
            cluster.release(endpoint, conn, reusable=...)
            if it was a retry: cluster.end_retry()
    finally:
        cluster.done()

When ``acquire`` fails to connect, its error's ``endpoint`` names the endpoint it picked:
the caller reports that try (status 0) like every other.

Health (:mod:`meshd.cluster.state`): the circuit breaker, the retry budget, outlier detection
and active health checks live in a :class:`ClusterState` that outlives the snapshot; the
:class:`~meshd.cluster.selector.EndpointSelector` avoids the endpoints it marks unavailable
(ejected or failing health checks), spilling over to lower-priority tiers and, below the panic
threshold, using every endpoint. Once a newer snapshot is in service, a replaced runtime (its
requests still in flight, and their retries) no longer uses the endpoints the newer one left
out, not even in panic.
"""

from __future__ import annotations

from collections.abc import Collection

from meshcore.model import Cluster, Endpoint
from meshd.cluster.lb import HASH_POLICIES
from meshd.cluster.outlier import Address
from meshd.cluster.pool import EndpointPool, PoolLimits, PoolManager, UpstreamConnection
from meshd.cluster.selector import EndpointSelector
from meshd.cluster.state import ClusterState
from meshd.context import now
from meshd.errors import NoHealthyUpstream, UpstreamError
from meshd.policystats import PolicyStats

_NEVER = float("inf")


class ClusterRuntime:
    """The live side of one snapshot's :class:`~meshcore.model.Cluster`.

    ``state``: the cluster's long-lived :class:`ClusterState` (the sidecar's
    :class:`~meshd.cluster.state.ClusterStates` configures it once the snapshot is in
    service); None: a private one, configured here. ``previous``: the same cluster's runtime
    of the snapshot this one replaces; its :attr:`selector` state (latency estimates,
    in-flight counts, unavailable endpoints) is carried over for the endpoints that stay.
    ``zone``: the calling sidecar's zone.
    """

    __slots__ = (
        "_address_of",
        "_addresses",
        "_budget",
        "_clock",
        "_hash_cookie",
        "_hash_header",
        "_hash_source",
        "_limits",
        "_max_requests",
        "_pools",
        "_unavailable",
        "hashes",
        "model",
        "name",
        "selector",
        "service",
        "state",
    )

    def __init__(
        self,
        model: Cluster,
        pools: PoolManager,
        state: ClusterState | None = None,
        *,
        zone: str | None = None,
        previous: ClusterRuntime | None = None,
    ) -> None:
        if state is None:
            state = ClusterState(model.name, PolicyStats())
            state.configure(model)
        self.state = state
        self._clock = state.clock
        self._limits = model.limits
        # Read per request: native copies, not the pydantic models' generic attributes.
        self._max_requests = model.limits.max_requests if model.limits is not None else None
        self._address_of: dict[int, Address] = {
            id(ep): (ep.host, ep.port) for ep in model.endpoints
        }
        self._budget = state.budget(model.retry_budget)
        self._unavailable: frozenset[Address] = frozenset()
        self._addresses: frozenset[Address] = frozenset(self._address_of.values())
        self.model = model
        self.name = model.name
        self.service = model.service
        self.selector: EndpointSelector = EndpointSelector(
            model, zone=zone, previous=previous.selector if previous is not None else None
        )
        policy = model.hash_policy if model.lb_policy in HASH_POLICIES else None
        self._hash_header = policy.header.encode() if policy and policy.header else None
        self._hash_cookie = policy.cookie.encode() if policy and policy.cookie else None
        self._hash_source = bool(policy and policy.source_ip)
        #: Whether :meth:`hash_key` can return a key (skip the call when it can't).
        self.hashes = policy is not None
        limits = PoolLimits(
            max_connections=model.max_connections,
            max_idle=model.max_idle_per_endpoint,
            idle_timeout_s=model.idle_timeout_s,
            connect_timeout_s=model.connect_timeout_s,
        )
        tls_id = model.tls.spiffe_id if model.tls is not None else None
        # Keyed by identity: hashing a pydantic model on every request would cost more.
        # TLS is per endpoint: a plain endpoint beside sidecars (``plaintext``) gets a plain
        # pool; every other endpoint of a TLS cluster is reached over mTLS.
        self._pools: dict[int, EndpointPool] = {
            id(ep): pools.pool(
                ep.host,
                ep.port,
                limits,
                tls_id=(ep.spiffe_id or tls_id) if tls_id and not ep.plaintext else None,
            )
            for ep in model.endpoints
        }

    def admit(self) -> None:
        """A request starts using this cluster; raises :class:`PoolOverflow` over a limit."""
        self.state.breaker.admit(self._max_requests)
        self._budget.record_request(self._clock())

    def done(self) -> None:
        """A request :meth:`admit` let in has ended, however it ended."""
        self.state.breaker.done()

    def begin_retry(self) -> bool:
        """Whether a retry may start now (retry budget, ``max_retries``); True counts it."""
        breaker = self.state.breaker
        if not breaker.begin_retry(self._limits):
            return False
        if not self._budget.try_retry(self._clock()):
            breaker.end_retry()
            self.state.stats.inc("meshd_retry_budget_exhausted", self.name)
            return False
        return True

    def end_retry(self) -> None:
        """A retry :meth:`begin_retry` allowed has ended."""
        self.state.breaker.end_retry()

    def hash_key(self, headers: list[tuple[bytes, bytes]], peer_ip: bytes) -> bytes | None:
        """What ``ring_hash``/``maglev`` hash for this request (None: no hash policy, or the
        request lacks the header or cookie): the first value of the policy's header, the
        policy's cookie from the ``Cookie`` headers, or the client's address."""
        if self._hash_source:
            return peer_ip
        name = self._hash_header
        if name is not None:
            for key, value in headers:
                if len(key) == len(name) and key.lower() == name:
                    return value
            return None
        cookie = self._hash_cookie
        if cookie is not None:
            for key, value in headers:
                if len(key) == 6 and key.lower() == b"cookie":
                    for pair in value.split(b";"):
                        found, sep, found_value = pair.strip().partition(b"=")
                        if sep and found == cookie:
                            return found_value.strip(b'"')
        return None

    def report(self, endpoint: Endpoint, status: int, latency_s: float) -> None:
        """The outcome of one try on ``endpoint``: the response status, or 0 when no response
        came (connect failure, reset, timeout). Feeds outlier detection and EWMA."""
        # EWMA latency (load balancing); keep this line separate from outlier detection.
        self.selector.observe(endpoint, latency_s, failed=status == 0)
        state = self.state
        if state.outliers is not None:
            address = self._address_of.get(id(endpoint))
            if address is None:  # not one of this snapshot's endpoints
                address = (endpoint.host, endpoint.port)
            state.report(address, status)

    async def acquire(
        self,
        *,
        hash_key: bytes | None = None,
        exclude: Collection[Endpoint] = (),
        fresh: bool = False,
        picked: Endpoint | None = None,
    ) -> tuple[Endpoint, UpstreamConnection]:
        """An endpoint (not one of ``exclude`` when another is available) and a connection to
        it; raises an :class:`UpstreamError`.

        ``hash_key``: from :meth:`hash_key`. The try counts as in flight on the endpoint
        (least-request, EWMA) from here until :meth:`release`. When the connect fails, the
        error's ``endpoint`` names the endpoint picked: the caller reports that try.
        ``picked``: the endpoint :meth:`acquire_idle` picked (no second pick).
        """
        state = self.state
        endpoint = picked if picked is not None else self._pick(hash_key, exclude)
        selector = self.selector
        pool = self._pools[id(endpoint)]
        limits = self._limits
        if limits is not None and (fresh or not pool.idle):
            await state.breaker.wait_connection_room(
                limits, self._open_connections, self._close_idle
            )
        # Counted before connecting, so concurrent picks see the pending try.
        selector.started(endpoint)
        start = now()
        try:
            reused = None if fresh else pool.take_idle()
            conn = reused if reused is not None else await pool.acquire(fresh=fresh)
        except UpstreamError as exc:
            selector.finished(endpoint)
            exc.endpoint = endpoint  # the request path reports it and retries elsewhere
            raise
        except BaseException:
            selector.finished(endpoint)
            raise
        conn.acquired_at = start
        return endpoint, conn

    def acquire_idle(
        self, hash_key: bytes | None = None
    ) -> tuple[Endpoint, UpstreamConnection | None] | None:
        """:meth:`acquire` when it needs no wait: the endpoint picked, and its idle
        connection, counted as :meth:`acquire` counts it.

        With no idle connection there: the endpoint alone, nothing counted; pass it to
        :meth:`acquire` as ``picked``. None: no endpoint to pick (:meth:`acquire` says why).
        """
        try:
            endpoint = self._pick(hash_key, ())
        except UpstreamError:
            return None
        pool = self._pools[id(endpoint)]
        if not pool.idle:
            return endpoint, None
        selector = self.selector
        selector.started(endpoint)
        start = now()
        conn = pool.take_idle()
        if conn is None:
            selector.finished(endpoint)
            return endpoint, None
        conn.acquired_at = start
        return endpoint, conn

    def _pick(self, hash_key: bytes | None, exclude: Collection[Endpoint]) -> Endpoint:
        state = self.state
        if state.due < _NEVER and state.due <= self._clock():
            state.tick()
        if state.unavailable is not self._unavailable:
            # Health changed, or the endpoints did (then this may be a replaced snapshot's
            # runtime, whose endpoints the newest snapshot left out are not to be used).
            self._unavailable = state.unavailable
            self.selector.set_unavailable(state.unavailable, state.removed(self._addresses))
        endpoint = self.selector.pick(hash_key, exclude)
        if endpoint is None:
            raise NoHealthyUpstream("no_healthy_upstream", f"cluster {self.name}: no endpoint")
        return endpoint

    def release(
        self, endpoint: Endpoint, conn: UpstreamConnection, *, reusable: bool, timed: bool = True
    ) -> None:
        """Give ``conn`` back after a request on ``endpoint``.

        ``timed``: the time since :meth:`acquire` is the try's latency (for EWMA, unless
        :meth:`report` gave one); False for connections whose lifetime is no latency (TCP).
        """
        start = conn.acquired_at  # an attribute: no dict keyed by id(conn) to update twice
        conn.acquired_at = -1.0
        if start >= 0.0 and timed:
            self.selector.finished(endpoint, now() - start)
        else:
            self.selector.finished(endpoint)
        conn.pool.release(conn, reusable=reusable)
        self.state.breaker.released()

    def _open_connections(self) -> int:
        """The cluster's upstream connections, pooled and in use."""
        return sum(p.active + p.idle for p in self._unique_pools())

    def _close_idle(self) -> bool:
        """Close the idle connections of one of the cluster's pools; False if none had any."""
        for pool in self._unique_pools():
            if pool.idle:
                pool.expire(float("inf"))
                return True
        return False

    def _unique_pools(self) -> list[EndpointPool]:
        return list({id(p): p for p in self._pools.values()}.values())

    def describe(self) -> dict[str, object]:
        """JSON-able state for the admin API."""
        state = self.state
        state.tick()
        breaker = state.breaker.describe(self._limits)
        breaker["connections"] = self._open_connections()
        return {
            "name": self.name,
            "service": self.service,
            "lb_policy": self.model.lb_policy,
            "circuit_breaker": breaker,
            "retry_budget": self._budget.describe(self._clock()),
            **self.selector.describe(),
            "endpoints": [
                {
                    "address": f"{ep.host}:{ep.port}",
                    "weight": ep.weight,
                    **self.selector.endpoint_state(ep),
                    "tls": self._pools[id(ep)].tls_id is not None,
                    "active": self._pools[id(ep)].active,
                    "idle": self._pools[id(ep)].idle,
                    "created": self._pools[id(ep)].created,
                    **state.describe_endpoint((ep.host, ep.port)),
                }
                for ep in self.model.endpoints
            ],
        }
