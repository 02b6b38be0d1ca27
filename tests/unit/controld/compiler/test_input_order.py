"""The compiler is a pure function of its inputs, whatever order they come in.

Concrete worlds built by hand (test_properties checks the same over generated worlds): a
discovery view whose endpoints arrive in another order compiles to the same snapshots, the
same digests, and (warm) the very same objects.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import permutations
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.builders import defaults, ep, mesh, proxy, rset
from controld.compiler import Compiler
from controld.compiler.endpoint_tls import endpoint_mix
from controld.compiler.inputs import Inputs, endpoint_order
from controld.discovery.view import DiscoveryView, ServiceEndpoint
from meshcore.model.resources import ResourceSet

# Two endpoints at one address: a sidecar and a plain instance (the same instance ID), plus a
# sidecar elsewhere. The compiled endpoints of the first two differ only in ``plaintext``.
SAME_ADDRESS = (
    ep("10.0.0.1"),
    ep("10.0.0.2", sidecar=False),
    ep("10.0.0.2"),
)


def _view(endpoints: Sequence[ServiceEndpoint], service: str = "e") -> DiscoveryView:
    """A view with ``endpoints`` in the order given (unlike builders.view, which sorts)."""
    services = {"a": (), "b": (), service: tuple(endpoints)}
    return DiscoveryView(services=MappingProxyType(services), version=1)


def test_endpoint_order_does_not_change_snapshots_or_digests() -> None:
    # The example test_deterministic_and_valid found (seed 0): p0's digest depended on the
    # order of e's endpoints.
    proxies = {"p0": proxy("p0", "a", ["a", "b", "e"], inbound=None)}
    resources = ResourceSet.of([], revision=1)
    compiled = [
        Compiler().compile_all(_view(order), resources, proxies)
        for order in permutations(SAME_ADDRESS)
    ]
    assert all(c == compiled[0] for c in compiled)
    (cluster,) = (c for c in compiled[0]["p0"][0].clusters if c.name == "e")
    # Ties of the endpoint sort (same priority, address and tags) keep endpoint_order.
    assert [(e.host, e.plaintext) for e in cluster.endpoints] == [
        ("10.0.0.1", False),
        ("10.0.0.2", True),
        ("10.0.0.2", False),
    ]


def test_endpoints_differing_in_zone_only_compile_in_one_order() -> None:
    endpoints = (ep("10.0.0.3", zone="b"), ep("10.0.0.3", zone=None), ep("10.0.0.3", zone="a"))
    proxies = {"p0": proxy("p0", "a", ["e"])}
    resources = rset(defaults("e", lb_policy="least_request"))
    compiled = [
        Compiler().compile_all(_view(order), resources, proxies)
        for order in permutations(endpoints)
    ]
    assert all(c == compiled[0] for c in compiled)


def test_a_warm_compiler_keeps_its_snapshot_when_only_the_order_changes() -> None:
    proxies = {"p0": proxy("p0", "a", ["e"])}
    resources = ResourceSet.of([], revision=1)
    compiler = Compiler()
    before = compiler.compile_all(_view(SAME_ADDRESS), resources, proxies)
    after = compiler.compile_all(_view(SAME_ADDRESS[::-1]), resources, proxies)
    assert after["p0"][0] is before["p0"][0]
    assert after["p0"][1] == before["p0"][1]


def test_excluded_endpoints_are_listed_in_one_order() -> None:
    # Under STRICT the plain endpoints are left out; status and explain list them.
    endpoints = (ep("10.0.0.9", sidecar=False), ep("10.0.0.1"), ep("10.0.0.3", sidecar=False))
    resources = rset(mesh(mtls="strict"))
    mixes = [
        endpoint_mix(Inputs(_view(order), resources), ["a", "b", "e"])
        for order in permutations(endpoints)
    ]
    assert all(m == mixes[0] for m in mixes)
    assert [x["host"] for x in mixes[0]["e"]["excluded"]] == ["10.0.0.3", "10.0.0.9"]


# Few hosts and instance IDs, so that ties on the first fields (and None against a zone) occur.
endpoint = st.builds(
    lambda host, instance, sidecar, tags, zone: ep(
        host, instance=instance, sidecar=sidecar, tags=tags, zone=zone
    ),
    st.sampled_from(["10.0.0.1", "10.0.0.2"]),
    st.sampled_from(["i1", "i2"]),
    st.booleans(),
    st.sampled_from([(), ("v1",)]),
    st.sampled_from([None, "a", "b"]),
)


@settings(max_examples=200, deadline=None)
@given(endpoints=st.lists(endpoint, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_inputs_hand_out_endpoints_in_one_order(
    endpoints: list[ServiceEndpoint], seed: int
) -> None:
    shuffled = list(endpoints)
    random.Random(seed).shuffle(shuffled)
    resources = ResourceSet.of([], revision=1)
    first = Inputs(_view(endpoints), resources).endpoints("e")
    second = Inputs(_view(shuffled), resources).endpoints("e")
    assert first == second == tuple(sorted(endpoints, key=endpoint_order))
