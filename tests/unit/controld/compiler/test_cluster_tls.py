"""Cluster.tls: set when the endpoints are sidecars of the service and mTLS isn't disabled."""

from __future__ import annotations

import dataclasses

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


def test_plain_endpoints_mean_no_tls() -> None:
    plain = dataclasses.replace(API[0], sidecar=False)
    assert _clusters({"api": [plain, API[1]]})["api"].tls is None
    assert _clusters({"api": []})["api"].tls is None


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


def test_failover_to_a_service_without_mtls_means_no_tls() -> None:
    services = {"api": API, "api-dr": [ep("10.0.2.1")]}
    clusters = _clusters(
        services,
        resolver("api", failover=[{"service": "api-dr"}]),
        defaults("api-dr", mtls="disabled"),
    )
    assert clusters["api"].tls is None
    assert all(e.spiffe_id is None for e in clusters["api"].endpoints)
