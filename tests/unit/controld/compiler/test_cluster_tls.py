"""Cluster.tls: set when the endpoints are sidecars of the service and mTLS isn't disabled."""

from __future__ import annotations

from compiler.builders import defaults, ep, mesh, proxy, resolver, rset, view
from controld.compiler import compile_snapshot
from controld.discovery.view import ServiceEndpoint
from meshcore.model.resources import Resource
from meshcore.model.snapshot import Cluster

API = [ep("10.0.0.1"), ep("10.0.0.2")]


def _clusters(
    services: dict[str, list[ServiceEndpoint]], *resources: Resource
) -> dict[str, Cluster]:
    snap = compile_snapshot(view(services), rset(*resources), proxy("web-1", "web", ["api"]))
    return {c.name: c for c in snap.clusters}


def test_sidecar_endpoints_get_the_service_identity() -> None:
    cluster = _clusters({"api": API}, mesh(trust_domain="corp.example"))["api"]
    assert cluster.tls is not None
    assert cluster.tls.spiffe_id == "spiffe://corp.example/ns/default/svc/api"


def test_disabled_mode_means_no_tls() -> None:
    assert _clusters({"api": API}, mesh(mtls="disabled"))["api"].tls is None
    assert _clusters({"api": API}, defaults("api", mtls="disabled"))["api"].tls is None
    # The service's own setting wins over the mesh's.
    strict = _clusters({"api": API}, mesh(mtls="disabled"), defaults("api", mtls="strict"))
    assert strict["api"].tls is not None


def test_only_plain_endpoints_mean_no_tls() -> None:
    plain = [ep("10.0.0.1", sidecar=False), ep("10.0.0.2", sidecar=False)]
    cluster = _clusters({"api": plain})["api"]
    assert cluster.tls is None
    assert [(e.host, e.plaintext) for e in cluster.endpoints] == [
        ("10.0.0.1", False),
        ("10.0.0.2", False),
    ]
    assert _clusters({"api": []})["api"].tls is None


def _by_host(cluster: Cluster) -> dict[str, tuple[bool, str | None]]:
    return {e.host: (e.plaintext, e.spiffe_id) for e in cluster.endpoints}


def test_mixed_endpoints_under_permissive_keep_mtls_to_the_sidecars() -> None:
    mixed = [ep("10.0.0.1"), ep("10.0.0.9", sidecar=False), ep("10.0.0.2")]
    cluster = _clusters({"api": mixed}, mesh(mtls="permissive"))["api"]
    # One plain registration does not downgrade the sidecar endpoints.
    assert cluster.tls is not None
    assert cluster.tls.spiffe_id == "spiffe://mesh.local/ns/default/svc/api"
    assert _by_host(cluster) == {
        "10.0.0.1": (False, None),
        "10.0.0.2": (False, None),
        "10.0.0.9": (True, None),
    }


def test_mixed_endpoints_under_strict_exclude_the_plain_ones() -> None:
    mixed = [ep("10.0.0.1"), ep("10.0.0.9", sidecar=False)]
    for resources in ((mesh(mtls="strict"),), (defaults("api", mtls="strict"),)):
        cluster = _clusters({"api": mixed}, *resources)["api"]
        assert cluster.tls is not None
        assert _by_host(cluster) == {"10.0.0.1": (False, None)}
    # Only plain endpoints under STRICT: nothing to send to (503), never plaintext.
    only_plain = [ep("10.0.0.9", sidecar=False)]
    cluster = _clusters({"api": only_plain}, mesh(mtls="strict"))["api"]
    assert cluster.endpoints == ()
    assert cluster.tls is None


def test_disabled_mode_sends_plaintext_to_every_endpoint() -> None:
    mixed = [ep("10.0.0.1"), ep("10.0.0.9", sidecar=False)]
    cluster = _clusters({"api": mixed}, defaults("api", mtls="disabled"))["api"]
    assert cluster.tls is None
    assert _by_host(cluster) == {"10.0.0.1": (False, None), "10.0.0.9": (False, None)}


def test_failover_to_another_service_expects_its_identity() -> None:
    services = {"api": API, "api-dr": [ep("10.0.2.1")]}
    clusters = _clusters(services, resolver("api", failover=[{"service": "api-dr"}]))
    cluster = clusters["api"]
    assert cluster.tls is not None
    assert cluster.tls.spiffe_id == "spiffe://mesh.local/ns/default/svc/api"
    by_host = {e.host: (e.priority, e.spiffe_id) for e in cluster.endpoints}
    assert by_host == {
        "10.0.0.1": (0, None),
        "10.0.0.2": (0, None),
        "10.0.2.1": (1, "spiffe://mesh.local/ns/default/svc/api-dr"),
    }


def test_failover_to_a_service_without_mtls_is_plaintext_to_that_tier_only() -> None:
    services = {"api": API, "api-dr": [ep("10.0.2.1")]}
    clusters = _clusters(
        services,
        resolver("api", failover=[{"service": "api-dr"}]),
        defaults("api-dr", mtls="disabled"),
    )
    cluster = clusters["api"]
    assert cluster.tls is not None
    assert _by_host(cluster) == {
        "10.0.0.1": (False, None),
        "10.0.0.2": (False, None),
        "10.0.2.1": (True, None),
    }
