"""Snapshot compilation: discovery view + resources + a sidecar's descriptor -> Snapshot.

Pure and deterministic. Listeners: ``inbound`` (when the proxy has an inbound address; to
the local app, with the protocol of the proxy's service) and one ``outbound-<service>`` per
upstream, at the upstream's address: HTTP through route table ``<service>``, TCP straight
to the service's cluster. HTTP listeners take the mesh's ``path_with_escaped_slashes``; tcp
listeners keep ``keep`` (they parse no paths). Only the clusters these name are included.
Lists are sorted by name.

:class:`Compiler` memoizes: the route table and clusters of an upstream depend only on the
inputs of the services involved, so they are built once per pass and reused by every proxy,
and across passes while those inputs compare equal.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from controld.compiler.clusters import build_cluster, cluster_key
from controld.compiler.hashing import FragmentHasher
from controld.compiler.inputs import ClusterRef, Inputs, cluster_name
from controld.compiler.policy import InboundParts, build_inbound, inbound_key
from controld.compiler.routes import build_route_table, route_refs, table_key
from controld.discovery.view import DiscoveryView
from meshcore.model.base import SocketAddr
from meshcore.model.policy import EscapedSlashes
from meshcore.model.proxy import ProxyDescriptor, Upstream
from meshcore.model.resources import ResourceSet
from meshcore.model.snapshot import Cluster, Listener, RouteTable, Snapshot, WorkloadIdentity

__all__ = ["Compiler", "compile_snapshot"]

INBOUND_LISTENER = "inbound"

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def outbound_listener_name(service: str) -> str:
    """Name of the outbound listener for calls to ``service``."""
    return f"outbound-{service}"


@dataclass(frozen=True, slots=True)
class _Upstream:
    """Compiled parts of calls to one service (shared by every proxy calling it)."""

    protocol: str
    table: RouteTable | None
    clusters: tuple[Cluster, ...]


class _Pass:
    """One compilation pass: the inputs plus what this pass has built so far."""

    __slots__ = ("clusters", "identities", "inbound", "inputs", "listeners", "upstreams")

    def __init__(self, inputs: Inputs) -> None:
        self.inputs = inputs
        self.clusters: dict[ClusterRef, Cluster] = {}
        self.upstreams: dict[str, _Upstream] = {}
        self.inbound: dict[str, InboundParts] = {}
        self.listeners: dict[Hashable, Listener] = {}
        self.identities: dict[tuple[str, str, str], WorkloadIdentity] = {}


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _reuse(
    cache: dict[_K, tuple[Hashable, _V]],
    inputs: Inputs,
    name: _K,
    key_of: Callable[[Inputs, _K], Hashable],
    build: Callable[[Inputs, _K], _V],
) -> _V:
    """``build(inputs, name)``, or the value ``cache`` keeps while ``key_of`` compares equal."""
    key = key_of(inputs, name)
    cached = cache.get(name)
    if cached is not None and cached[0] == key:
        return cached[1]
    value = build(inputs, name)
    cache[name] = (key, value)
    return value


def _once(
    passed: dict[_K, _V],
    kept: dict[_K, tuple[Hashable, _V]],
    inputs: Inputs,
    name: _K,
    *,
    key_of: Callable[[Inputs, _K], Hashable],
    build: Callable[[Inputs, _K], _V],
) -> _V:
    """What this pass already has for ``name`` (``passed``), else :func:`_reuse`'s, recorded."""
    found = passed.get(name)
    if found is None:
        found = passed[name] = _reuse(kept, inputs, name, key_of, build)
    return found


class Compiler:
    """Compiles snapshots for many proxies, reusing what their inputs have in common.

    Not thread-safe; one instance per daemon, used from one task.
    """

    def __init__(self) -> None:
        self._clusters: dict[ClusterRef, tuple[Hashable, Cluster]] = {}
        self._tables: dict[str, tuple[Hashable, RouteTable]] = {}
        self._inbound: dict[str, tuple[Hashable, InboundParts]] = {}
        self._snapshots: dict[str, tuple[ProxyDescriptor, tuple[Any, ...], Snapshot, str]] = {}
        self._listeners: dict[Hashable, Listener] = {}
        self._upstreams: dict[str, _Upstream] = {}
        self._identities: dict[tuple[str, str, str], WorkloadIdentity] = {}
        self._hasher = FragmentHasher()

    def compile_all(
        self,
        view: DiscoveryView,
        resources: ResourceSet,
        proxies: Mapping[str, ProxyDescriptor],
    ) -> dict[str, tuple[Snapshot, str]]:
        """``proxy_id -> (snapshot, hash)`` for every proxy (snapshot versions are 0)."""
        work = _Pass(Inputs(view, resources))
        out: dict[str, tuple[Snapshot, str]] = {}
        snapshots: dict[str, tuple[ProxyDescriptor, tuple[Any, ...], Snapshot, str]] = {}
        for proxy_id in sorted(proxies):
            proxy = proxies[proxy_id]
            parts = self._parts(work, proxy)
            cached = self._snapshots.get(proxy_id)
            if cached is not None and cached[0] == proxy and _same(cached[1], parts):
                snapshot, digest = cached[2], cached[3]
            else:
                snapshot = self._assemble(work, proxy, parts)
                digest = self._hasher.hash(snapshot)
            snapshots[proxy_id] = (proxy, parts, snapshot, digest)
            out[proxy_id] = (snapshot, digest)
        # Keep only what this pass used: memory follows the live proxies and services.
        self._snapshots = snapshots
        self._clusters = {ref: self._clusters[ref] for ref in work.clusters}
        self._tables = {s: self._tables[s] for s in work.upstreams if s in self._tables}
        self._inbound = {s: self._inbound[s] for s in work.inbound}
        self._upstreams = dict(work.upstreams)
        self._listeners = work.listeners
        self._identities = work.identities
        self._hasher.sweep()
        return out

    # -- parts ---------------------------------------------------------------------------

    def _parts(self, work: _Pass, proxy: ProxyDescriptor) -> tuple[Any, ...]:
        inbound = self._inbound_parts(work, proxy.service)
        parts: list[Any] = [inbound]
        if proxy.inbound is not None:
            protocol = work.inputs.protocol(proxy.service)
            parts.append(self._listener(work, None, proxy.inbound, protocol))
        for upstream in sorted(proxy.upstreams, key=lambda u: u.service):
            compiled = self._upstream(work, upstream.service)
            parts.append(self._listener(work, upstream, None, compiled.protocol))
            parts.append(compiled)
        return tuple(parts)

    def _listener(
        self, work: _Pass, upstream: Upstream | None, inbound: SocketAddr | None, protocol: str
    ) -> Listener:
        target: str | None = None
        if upstream is not None and protocol != "http":
            target = cluster_name(work.inputs.plain_ref(upstream.service))
        # Escaped slashes are an HTTP listener setting; tcp listeners keep the default.
        escaped: EscapedSlashes = (
            work.inputs.mesh.path_with_escaped_slashes if protocol == "http" else "keep"
        )
        key: Hashable = (
            (upstream.service, upstream.host, upstream.port, protocol, target, escaped)
            if upstream is not None
            else (inbound, protocol, escaped)
        )
        found = work.listeners.get(key) or self._listeners.get(key)
        if found is None:
            if upstream is not None:
                service = upstream.service
                found = Listener(
                    name=outbound_listener_name(service),
                    direction="outbound",
                    address=SocketAddr(host=upstream.host, port=upstream.port),
                    protocol="http" if protocol == "http" else "tcp",
                    route_table=service if protocol == "http" else None,
                    cluster=target,
                    path_with_escaped_slashes=escaped,
                )
            else:
                assert inbound is not None
                found = Listener(
                    name=INBOUND_LISTENER,
                    direction="inbound",
                    address=inbound,
                    protocol="http" if protocol == "http" else "tcp",
                    path_with_escaped_slashes=escaped,
                )
        work.listeners[key] = found
        return found

    def _inbound_parts(self, work: _Pass, service: str) -> InboundParts:
        return _once(
            work.inbound,
            self._inbound,
            work.inputs,
            service,
            key_of=inbound_key,
            build=build_inbound,
        )

    def _cluster(self, work: _Pass, ref: ClusterRef) -> Cluster:
        return _once(
            work.clusters, self._clusters, work.inputs, ref, key_of=cluster_key, build=build_cluster
        )

    def _upstream(self, work: _Pass, service: str) -> _Upstream:
        found = work.upstreams.get(service)
        if found is not None:
            return found
        inputs = work.inputs
        protocol = inputs.protocol(service)
        table: RouteTable | None = None
        if protocol == "http":
            table = _reuse(self._tables, inputs, service, table_key, build_route_table)
            refs = route_refs(inputs, service)
        else:
            refs = (inputs.plain_ref(service),)
        clusters = tuple(self._cluster(work, ref) for ref in refs)
        previous = self._upstreams.get(service)
        if (
            previous is not None
            and previous.protocol == protocol
            and previous.table is table
            and _same(previous.clusters, clusters)
        ):
            found = previous  # the same object keeps unchanged proxies' snapshots as they are
        else:
            found = self._upstreams[service] = _Upstream(protocol, table, clusters)
        work.upstreams[service] = found
        return found

    # -- assembly ------------------------------------------------------------------------

    def _identity(self, work: _Pass, proxy: ProxyDescriptor) -> WorkloadIdentity:
        key = (proxy.service, proxy.namespace, work.inputs.mesh.trust_domain)
        found = work.identities.get(key) or self._identities.get(key)
        if found is None:
            found = WorkloadIdentity(service=key[0], namespace=key[1], trust_domain=key[2])
        work.identities[key] = found
        return found

    def _assemble(self, work: _Pass, proxy: ProxyDescriptor, parts: tuple[Any, ...]) -> Snapshot:
        inbound: InboundParts = parts[0]
        listeners = sorted((p for p in parts if isinstance(p, Listener)), key=lambda x: x.name)
        tables: dict[str, RouteTable] = {}
        clusters: dict[str, Cluster] = {}
        for part in parts:
            if isinstance(part, _Upstream):
                if part.table is not None:
                    tables[part.table.name] = part.table
                for cluster in part.clusters:
                    clusters[cluster.name] = cluster
        return Snapshot(
            version=0,
            listeners=tuple(listeners),
            route_tables=tuple(tables[name] for name in sorted(tables)),
            clusters=tuple(clusters[name] for name in sorted(clusters)),
            identity=self._identity(work, proxy),
            mtls=inbound.mtls,
            inbound_policy=inbound.policy,
            rate_limits=inbound.rate_limits,
        )


def compile_snapshot(
    view: DiscoveryView, resources: ResourceSet, proxy: ProxyDescriptor
) -> Snapshot:
    """The snapshot of one proxy (version 0)."""
    return Compiler().compile_all(view, resources, {proxy.proxy_id: proxy})[proxy.proxy_id][0]
