"""Micro-benchmark: controld's compiler on the control-plane bench's mesh shape.

1000 proxies (10 services ``s0``..``s9`` x 100 instances; each proxy calls 2 other services),
every service with an HTTPRoute (a header rule to a subset, a weighted split), a resolver with
two subsets and a failover, and ServiceDefaults. Prints the time of ``Compiler.compile_all``:

* cold: a new Compiler;
* warm, nothing changed;
* warm, one service's endpoints changed (one instance gone);
* warm, one HTTPRoute changed.

    PYTHONPATH=. python bench/compile_micro.py [--reps 5]

Not a test: figures depend on the machine (best of ``--reps`` runs).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from types import MappingProxyType

from controld.compiler import Compiler
from controld.discovery.view import DiscoveryView, ServiceEndpoint
from meshcore.model import ProxyDescriptor, SocketAddr, Upstream
from meshcore.model.resources import Resource, ResourceSet, parse_resource

SERVICES = 10
INSTANCES = 100


def make_view(drop: str | None = None) -> DiscoveryView:
    """10 services x 100 sidecar endpoints; ``drop``: that service loses its last instance."""
    services: dict[str, tuple[ServiceEndpoint, ...]] = {}
    for s in range(SERVICES):
        name = f"s{s}"
        count = INSTANCES - 1 if name == drop else INSTANCES
        # Sorted, as build_view hands them out (the compiler sorts any other order itself).
        services[name] = tuple(
            sorted(
                ServiceEndpoint(
                    host=f"10.{s}.{i // 250}.{i % 250 + 1}",
                    port=21000,
                    instance_id=f"{name}-{i}",
                    node=f"node-{i}",
                    sidecar=True,
                    tags=("v2",) if i % 10 == 0 else ("v1",),
                    meta=(("zone", "a" if i % 2 else "b"),),
                )
                for i in range(count)
            )
        )
    return DiscoveryView(services=MappingProxyType(services), version=1)


def _res(kind: str, name: str, spec: dict[str, object]) -> Resource:
    return parse_resource({"kind": kind, "metadata": {"name": name}, "spec": spec})


def make_resources(changed: str | None = None) -> ResourceSet:
    """Per service: an HTTPRoute, a ServiceResolver and ServiceDefaults.

    ``changed``: that service's HTTPRoute has another timeout.
    """
    out: list[Resource] = []
    for s in range(SERVICES):
        name = f"s{s}"
        timeout_s = 6.0 if name == changed else 5.0
        rules = [
            {
                "name": "canary",
                "match": {"headers": [{"name": "x-canary", "exact": "1"}]},
                "backends": [{"subset": "v2"}],
                "timeout_s": timeout_s,
            },
            {
                "name": "split",
                "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
            },
        ]
        out.append(_res("HTTPRoute", f"{name}-route", {"service": name, "rules": rules}))
        out.append(
            _res(
                "ServiceResolver",
                name,
                {
                    "subsets": {
                        "v1": {"tags": ["v1"]},
                        "v2": {"tags": ["v2"], "meta": {"zone": "b"}},
                    },
                    "failover": [{"service": f"s{(s + 5) % SERVICES}"}],
                },
            )
        )
        out.append(_res("ServiceDefaults", name, {"lb_policy": "least_request"}))
    return ResourceSet.of(out, revision=1)


def make_proxies() -> dict[str, ProxyDescriptor]:
    """1000 proxies, 100 per service, each with 2 upstreams."""
    proxies: dict[str, ProxyDescriptor] = {}
    for p in range(SERVICES * INSTANCES):
        s = p % SERVICES
        pid = f"s{s}-{p // SERVICES}"
        proxies[pid] = ProxyDescriptor(
            proxy_id=pid,
            service=f"s{s}",
            inbound=SocketAddr(host="127.0.0.1", port=15006),
            upstreams=(
                Upstream(service=f"s{(s + 1) % SERVICES}", port=15001),
                Upstream(service=f"s{(s + 2) % SERVICES}", port=15002),
            ),
        )
    return proxies


def best(reps: int, setup: Callable[[], Compiler], run: Callable[[Compiler], object]) -> float:
    """Best wall time of ``run`` over ``reps`` runs, each on a fresh ``setup()``."""
    times = []
    for _ in range(reps):
        compiler = setup()
        gc.collect()
        start = time.perf_counter()
        run(compiler)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    view, resources, proxies = make_view(), make_resources(), make_proxies()
    changed_view, changed_resources = make_view(drop="s3"), make_resources(changed="s3")

    def warmed() -> Compiler:
        compiler = Compiler()
        compiler.compile_all(view, resources, proxies)
        return compiler

    cold = best(args.reps, Compiler, lambda c: c.compile_all(view, resources, proxies))
    same = best(args.reps, warmed, lambda c: c.compile_all(view, resources, proxies))
    endpoints = best(args.reps, warmed, lambda c: c.compile_all(changed_view, resources, proxies))
    route = best(args.reps, warmed, lambda c: c.compile_all(view, changed_resources, proxies))

    tracemalloc.start()
    compiler = Compiler()
    result = compiler.compile_all(view, resources, proxies)
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result

    print(f"compile_all: {len(proxies)} proxies, {SERVICES} services x {INSTANCES} instances,")
    print("  2 upstreams each (best of --reps runs)")
    print(f"  cold (new Compiler)            {cold * 1000:8.1f} ms")
    print(f"  warm, nothing changed          {same * 1000:8.1f} ms")
    print(f"  warm, one service's endpoints  {endpoints * 1000:8.1f} ms")
    print(f"  warm, one HTTPRoute changed    {route * 1000:8.1f} ms  (s3's)")
    per_proxy = size / len(proxies) / 1024
    print(f"  memory held by compiler+result {size / 1024:8.0f} KiB ({per_proxy:.1f} KiB/proxy)")


if __name__ == "__main__":
    main()
