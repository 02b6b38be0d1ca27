"""Compiler properties over generated worlds: determinism, locality, valid output.

A world is a few services with endpoints, random resources about them, and proxies with
random upstreams. Warm (memoizing) compilation must always equal a cold one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.builders import ep, res
from controld.compiler import Compiler, snapshot_hash
from controld.compiler.hashing import FragmentHasher
from controld.discovery.view import DiscoveryView, ServiceEndpoint
from meshcore.model import ProxyDescriptor, Snapshot
from meshcore.model.resources import Resource, ResourceSet

SERVICES = ("a", "b", "c", "d", "e")
SUBSETS = ("v1", "v2", "nope")
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class World:
    endpoints: dict[str, tuple[ServiceEndpoint, ...]]
    resources: tuple[Resource, ...]
    proxies: dict[str, ProxyDescriptor]

    def view(self, shuffle: random.Random | None = None) -> DiscoveryView:
        services: dict[str, tuple[ServiceEndpoint, ...]] = {}
        for name, eps in self.endpoints.items():
            items = list(eps)
            if shuffle is not None:
                shuffle.shuffle(items)
            services[name] = tuple(items)
        return DiscoveryView(services=MappingProxyType(services), version=1)

    def resource_set(self, shuffle: random.Random | None = None) -> ResourceSet:
        items = list(self.resources)
        if shuffle is not None:
            shuffle.shuffle(items)
        return ResourceSet.of(items, revision=1)


service = st.sampled_from(SERVICES)
subset = st.sampled_from(SUBSETS)
endpoint = st.builds(
    lambda i, port, tags, zone, sidecar: ep(
        f"10.0.0.{i}", port, tags=tags, meta={"zone": zone} if zone else None, sidecar=sidecar
    ),
    st.integers(1, 40),
    st.sampled_from([21000, 21001]),
    st.lists(st.sampled_from(["v1", "v2", "x"]), unique=True, max_size=2),
    st.sampled_from([None, "a", "b"]),
    # Mostly sidecars, some plain instances: the per-endpoint TLS decision is in the key.
    st.sampled_from([True, True, True, False]),
)
backend = st.fixed_dictionaries(
    {},
    optional={"service": service, "subset": subset, "weight": st.integers(1, 5)},
)
rule = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["r1", "r2", "rule-1", "default"]),
        "match": st.sampled_from(
            [{}, {"path": {"prefix": "/x"}}, {"methods": ["POST"]}, {"query": [{"name": "q"}]}]
        ),
        "backends": st.lists(backend, max_size=3),
        "timeout_s": st.sampled_from([1.0, 2.5]),
        "mirror": st.fixed_dictionaries({"service": service}, optional={"subset": subset}),
    },
)


@st.composite
def route_res(draw: st.DrawFn, svc: str) -> Resource:
    rules = draw(st.lists(rule, max_size=3, unique_by=lambda r: r.get("name", id(r))))
    return res("HTTPRoute", f"route-{svc}", {"service": svc, "rules": rules})


@st.composite
def resolver_res(draw: st.DrawFn, svc: str) -> Resource:
    subsets: dict[str, Any] = draw(
        st.dictionaries(
            st.sampled_from(["v1", "v2"]),
            st.fixed_dictionaries(
                {}, optional={"tags": st.just(["v2"]), "meta": st.just({"zone": "a"})}
            ),
            max_size=2,
        )
    )
    spec: dict[str, Any] = {"subsets": subsets}
    pick_default: bool = draw(st.booleans())
    if subsets and pick_default:
        spec["default_subset"] = draw(st.sampled_from(sorted(subsets)))
    spec["failover"] = draw(
        st.lists(
            st.fixed_dictionaries({}, optional={"service": service, "subset": subset}),
            max_size=2,
        )
    )
    return res("ServiceResolver", svc, spec)


@st.composite
def defaults_res(draw: st.DrawFn, svc: str) -> Resource:
    spec = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "protocol": st.sampled_from(["http", "tcp"]),
                "lb_policy": st.sampled_from(["random", "least_request"]),
                "connect_timeout_s": st.sampled_from([1.0, 2.0]),
                "mtls": st.sampled_from(["strict", "permissive", "disabled"]),
            },
        )
    )
    return res("ServiceDefaults", svc, spec)


@st.composite
def access_res(draw: st.DrawFn, svc: str) -> Resource:
    rules = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "sources": st.lists(st.sampled_from([*SERVICES, "*"]), min_size=1, max_size=2),
                    "action": st.sampled_from(["allow", "deny", "audit"]),
                }
            ),
            max_size=2,
        )
    )
    return res("AccessPolicy", f"access-{svc}", {"destination": svc, "rules": rules})


def ratelimit_res(svc: str, rps: float) -> Resource:
    spec = {"destination": svc, "requests_per_second": rps, "burst": 3}
    return res("RateLimit", f"limit-{svc}", spec)


@st.composite
def resources_about(draw: st.DrawFn, svc: str) -> list[Resource]:
    out: list[Resource] = []
    if draw(st.booleans()):
        out.append(draw(route_res(svc)))
    if draw(st.booleans()):
        out.append(draw(resolver_res(svc)))
    if draw(st.booleans()):
        out.append(draw(defaults_res(svc)))
    if draw(st.booleans()):
        out.append(draw(access_res(svc)))
    if draw(st.booleans()):
        out.append(ratelimit_res(svc, draw(st.sampled_from([1.0, 5.0]))))
    return out


@st.composite
def worlds(draw: st.DrawFn) -> World:
    endpoints = {s: tuple(sorted(set(draw(st.lists(endpoint, max_size=4))))) for s in SERVICES}
    resources: list[Resource] = []
    for s in SERVICES:
        resources.extend(draw(resources_about(s)))
    if draw(st.booleans()):
        mesh_spec = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "default_protocol": st.sampled_from(["http", "tcp"]),
                    "timeout_s": st.just(3.0),
                    "trust_domain": st.just("corp.example"),
                },
            )
        )
        resources.append(res("Mesh", "default", mesh_spec))
    proxies: dict[str, ProxyDescriptor] = {}
    for i in range(draw(st.integers(1, 6))):
        own = draw(service)
        ups = draw(st.lists(service, unique=True, max_size=3))
        inbound = draw(st.sampled_from([None, "127.0.0.1:15006", "127.0.0.1:16006"]))
        proxies[f"p{i}"] = ProxyDescriptor.model_validate(
            {
                "proxy_id": f"p{i}",
                "service": own,
                "inbound": inbound,
                "upstreams": [{"service": u, "port": 15001 + j} for j, u in enumerate(ups)],
            }
        )
    return World(endpoints, tuple(resources), proxies)


def cold(world: World, *, shuffle: random.Random | None = None) -> dict[str, tuple[Snapshot, str]]:
    proxies = dict(world.proxies)
    if shuffle is not None:
        ids = list(proxies)
        shuffle.shuffle(ids)
        proxies = {pid: proxies[pid] for pid in ids}
    return Compiler().compile_all(world.view(shuffle), world.resource_set(shuffle), proxies)


@PROPERTY
@given(world=worlds(), seed=st.integers(0, 2**32 - 1))
def test_deterministic_and_valid(world: World, seed: int) -> None:
    first = cold(world)
    second = cold(world, shuffle=random.Random(seed))
    assert first == second
    hasher = FragmentHasher()
    for snapshot, digest in first.values():
        assert Snapshot.model_validate(snapshot.model_dump()) == snapshot
        assert Snapshot.model_validate_json(snapshot.model_dump_json()) == snapshot
        assert digest == snapshot_hash(snapshot) == hasher.hash(snapshot)


def reach(world: World, proxy: ProxyDescriptor) -> set[str]:
    """Services whose inputs may show up in ``proxy``'s snapshot (besides its own service)."""
    resources = world.resource_set()
    found: set[str] = set()
    for upstream in proxy.upstreams:
        found.add(upstream.service)
        route = resources.route_for(upstream.service)
        if route is not None:
            for r in route.spec.rules:
                found.update(b.service for b in r.backends if b.service)
                if r.mirror is not None:
                    found.add(r.mirror.service)
    for svc in list(found):
        resolver = resources.resolver(svc)
        if resolver is not None:
            found.update(t.service for t in resolver.failover if t.service)
    return found


@st.composite
def changes(draw: st.DrawFn, world: World) -> tuple[str, World]:
    """A world where something about one service changed."""
    svc = draw(service)
    what = draw(st.sampled_from(["endpoints", "resources", "drop"]))
    endpoints = dict(world.endpoints)
    resources = list(world.resources)
    if what == "endpoints":
        endpoints[svc] = tuple(sorted(set(draw(st.lists(endpoint, max_size=4)))))
    elif what == "drop":
        resources = [r for r in resources if _about(r) != svc]
    else:
        new = draw(resources_about(svc))
        keys = {(r.kind, r.metadata.name) for r in new}
        resources = [r for r in resources if (r.kind, r.metadata.name) not in keys] + new
    return svc, World(endpoints, tuple(resources), world.proxies)


def _about(resource: Resource) -> str:
    spec: Any = resource.spec
    for attr in ("service", "destination"):
        value = getattr(spec, attr, None)
        if isinstance(value, str):
            return value
    return resource.metadata.name


@PROPERTY
@given(data=st.data(), world=worlds())
def test_changes_about_a_service_only_touch_proxies_reaching_it(
    data: st.DataObject, world: World
) -> None:
    svc, changed = data.draw(changes(world))
    compiler = Compiler()
    before = compiler.compile_all(world.view(), world.resource_set(), world.proxies)
    after = compiler.compile_all(changed.view(), changed.resource_set(), changed.proxies)
    assert after == cold(changed)  # warm equals cold
    for pid, proxy in world.proxies.items():
        affected = proxy.service == svc or svc in reach(world, proxy) | reach(changed, proxy)
        if not affected:
            assert after[pid][1] == before[pid][1], (pid, svc)
            assert after[pid][0] is before[pid][0]


@PROPERTY
@given(world=worlds(), other=worlds())
def test_warm_compiler_equals_cold_across_unrelated_worlds(world: World, other: World) -> None:
    compiler = Compiler()
    compiler.compile_all(world.view(), world.resource_set(), world.proxies)
    assert compiler.compile_all(other.view(), other.resource_set(), other.proxies) == cold(other)
