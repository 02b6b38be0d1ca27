"""Snapshot features sidecars can't enforce: ``meshctl apply`` warnings (``--strict``
refusals) and the enforcement section of ``explain``.

Each sidecar declares the features it enforces on its polls (``x-meshd-features``; see
:mod:`meshcore.model.features`), and NACKs a snapshot that uses another. Here controld
compiles what resources would give the connected sidecars and says which of them would get
something they can't enforce, before it is stored. Sidecars that declare nothing (older
ones) are not judged: their features are unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from controld.compiler import Compiler
from controld.compiler.snapshot import outbound_listener_name
from controld.discovery import DiscoveryView
from controld.push.state import SidecarInfo
from meshcore.api.errors import Problem
from meshcore.api.explain import FeatureUse, SidecarEnforcement
from meshcore.api.resources import FeatureWarning
from meshcore.model.base import SocketAddr
from meshcore.model.features import feature_uses
from meshcore.model.proxy import ProxyDescriptor, Upstream
from meshcore.model.resources import ResourceSet
from meshcore.model.snapshot import Snapshot

__all__ = ["FeatureGap", "enforcement", "feature_gaps"]

_SHAPE_INBOUND = SocketAddr(host="127.0.0.1", port=15006)
_SHAPE_PORT = 20000


@dataclass(frozen=True, slots=True)
class FeatureGap:
    """A connected sidecar would get a snapshot using a feature it doesn't enforce."""

    proxy_id: str
    service: str
    feature: str
    #: The first field of the sidecar's snapshot that uses it.
    path: str

    @property
    def message(self) -> str:
        """What ``meshctl apply`` prints (the sidecar's NACK would say the first half)."""
        return (
            f"unsupported feature {self.feature} at {self.path}: sidecar {self.proxy_id} "
            f"(service {self.service}) does not enforce it and would refuse the snapshot"
        )

    def as_warning(self) -> FeatureWarning:
        """The API form (``warnings`` of ``PUT /v1/resources``)."""
        return FeatureWarning(
            proxy_id=self.proxy_id,
            service=self.service,
            feature=self.feature,
            path=self.path,
            message=self.message,
        )

    def as_problem(self) -> Problem:
        """The 422 problem of a ``strict`` apply (no resource document to name)."""
        return Problem(document=None, kind=None, name=None, path=self.path, message=self.message)


def _compile(
    view: DiscoveryView, resources: ResourceSet, proxies: Mapping[str, ProxyDescriptor]
) -> dict[str, Snapshot]:
    """Snapshots of ``proxies``; one that fails to compile is left out (the reconciler logs
    it and the sidecar keeps its snapshot: nothing new to enforce)."""
    compiler = Compiler()
    try:
        return {p: s for p, (s, _) in compiler.compile_all(view, resources, proxies).items()}
    except ValueError:
        out: dict[str, Snapshot] = {}
        for pid, descriptor in proxies.items():
            try:
                out.update(
                    {
                        p: s
                        for p, (s, _) in compiler.compile_all(
                            view, resources, {pid: descriptor}
                        ).items()
                    }
                )
            except ValueError:
                continue
        return out


def _shape(descriptor: ProxyDescriptor) -> ProxyDescriptor:
    """``descriptor`` without what can't change which features its snapshot uses or their
    field paths: its id, version and addresses (listener names and order come from the
    upstream services, not their ports)."""
    upstreams = sorted(descriptor.upstreams, key=lambda u: u.service)
    return descriptor.model_copy(
        update={
            "proxy_id": "feature-check",
            "meshd_version": "",
            "inbound": None if descriptor.inbound is None else _SHAPE_INBOUND,
            "upstreams": tuple(
                Upstream(service=u.service, port=_SHAPE_PORT + i) for i, u in enumerate(upstreams)
            ),
        }
    )


def feature_gaps(
    view: DiscoveryView, resources: ResourceSet, sidecars: Iterable[SidecarInfo]
) -> list[FeatureGap]:
    """Features ``resources`` would give a connected sidecar that it doesn't declare."""
    # Compiled once per shape: sidecars of one service with the same upstreams and features
    # get the same answer (this runs on the event loop, inside the store's write).
    groups: dict[tuple[ProxyDescriptor, frozenset[str]], list[SidecarInfo]] = {}
    for sidecar in sidecars:
        if not sidecar.connected or sidecar.features is None:
            continue
        groups.setdefault((_shape(sidecar.descriptor), sidecar.features), []).append(sidecar)
    if not groups:
        return []
    leaders = {members[0].proxy_id: members[0].descriptor for members in groups.values()}
    snapshots = _compile(view, resources, leaders)
    gaps: list[FeatureGap] = []
    for (_, features), members in groups.items():
        snapshot = snapshots.get(members[0].proxy_id)
        if snapshot is None:
            continue
        missing: dict[str, str] = {}
        for feature, path in feature_uses(snapshot):
            if feature not in features:
                missing.setdefault(feature, path)
        for sidecar in members:
            gaps += [
                FeatureGap(sidecar.proxy_id, sidecar.descriptor.service, f, p)
                for f, p in missing.items()
            ]
    gaps.sort(key=lambda g: (g.proxy_id, g.feature))
    return gaps


def _prefixes(
    snapshot: Snapshot, role: str, destination: str, route: str | None, clusters: Sequence[str]
) -> tuple[str, ...]:
    """Path prefixes of the parts of ``snapshot`` the explained request goes through."""
    if role == "destination":
        found = ["inbound_policy.", "rate_limits"]
        found += [
            f"listeners.{i}." for i, x in enumerate(snapshot.listeners) if x.name == "inbound"
        ]
        return tuple(found)
    listener = outbound_listener_name(destination)
    found = [f"listeners.{i}." for i, x in enumerate(snapshot.listeners) if x.name == listener]
    for t, table in enumerate(snapshot.route_tables):
        if table.name != destination:
            continue
        for r, rule in enumerate(table.routes):
            if rule.name == route:
                found.append(f"route_tables.{t}.routes.{r}.")
    names = set(clusters)
    found += [f"clusters.{i}." for i, c in enumerate(snapshot.clusters) if c.name in names]
    return tuple(found)


def _uses(snapshot: Snapshot | None, prefixes: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    if snapshot is None:
        return out
    for feature, path in feature_uses(snapshot):
        if path.startswith(prefixes):
            out.setdefault(feature, path)
    return out


def enforcement(
    sidecars: Iterable[SidecarInfo],
    *,
    source: str,
    destination: str,
    route: str | None,
    clusters: Sequence[str],
) -> list[SidecarEnforcement]:
    """``explain``'s ``sidecars`` section: for each sidecar of the ``source``
    service (and of the ``destination``, which enforces inbound policy and rate limits), the
    features of this request's path in the snapshot it ACKed, and those of the latest
    snapshot it doesn't declare ("NOT ENFORCED by <proxy>")."""
    section: list[SidecarEnforcement] = []
    for sidecar in sidecars:
        service = sidecar.descriptor.service
        if service not in (source, destination):
            continue
        role: Literal["source", "destination"] = "source" if service == source else "destination"
        running = _uses(
            sidecar.acked_snapshot,
            ()
            if sidecar.acked_snapshot is None
            else _prefixes(sidecar.acked_snapshot, role, destination, route, clusters),
        )
        latest = sidecar.latest_snapshot
        wanted = _uses(
            latest,
            () if latest is None else _prefixes(latest, role, destination, route, clusters),
        )
        declared = sidecar.features
        missing = {} if declared is None else {f: p for f, p in wanted.items() if f not in declared}
        section.append(
            SidecarEnforcement(
                proxy_id=sidecar.proxy_id,
                service=service,
                role=role,
                connected=sidecar.connected,
                acked_version=sidecar.acked_version,
                latest_version=sidecar.latest_version,
                features=None if declared is None else len(declared),
                enforces=tuple(FeatureUse(feature=f, path=p) for f, p in running.items()),
                not_enforced=tuple(FeatureUse(feature=f, path=p) for f, p in missing.items()),
            )
        )
    return section
