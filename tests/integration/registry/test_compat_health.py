"""Health endpoints: service (``passing``, repeated ``tag``), checks, state, node, connect.

Consul docs followed: api-docs/health (list nodes for service: ``passing`` = all checks
passing, ``tag`` may be repeated and all must match; list checks for service; list checks in
state ``any|passing|warning|critical``; list checks for node; list service instances for
Connect-enabled service). A Consul server node carries the ``serfHealth`` node check, which
every entry of ``/health/service`` includes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import consul
import httpx
import pytest

from .compat_support import CheckTarget, wait_until, x_index

Check = consul.Check


@pytest.fixture
def target() -> Iterator[CheckTarget]:
    server = CheckTarget()
    try:
        yield server
    finally:
        server.close()


def _ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["Service"]["ID"] for e in entries]


def test_health_service_passing_filter(consul_client: Any) -> None:
    """The sequence of py-consul's test_health_service, with bounded waits instead of sleeps."""
    c = consul_client
    _, nodes = c.health.service("foo")
    assert nodes == []

    c.agent.service.register("foo", service_id="foo:1", check=Check.ttl("60s"), tags=["tag:foo:1"])
    c.agent.service.register("foo", service_id="foo:2", check=Check.ttl("2s"))
    _, nodes = c.health.service("foo")
    assert _ids(nodes) == ["foo:1", "foo:2"]
    _, nodes = c.health.service("foo", passing=True)
    assert nodes == []

    c.agent.check.ttl_pass("service:foo:1")
    c.agent.check.ttl_pass("service:foo:2")
    _, nodes = c.health.service("foo", passing=True)
    assert _ids(nodes) == ["foo:1", "foo:2"]

    wait_until(
        lambda: _ids(c.health.service("foo", passing=True)[1]) == ["foo:1"],
        what="the 2s TTL check to expire",
    )
    c.agent.check.ttl_pass("service:foo:2")
    _, nodes = c.health.service("foo", passing=True)
    assert _ids(nodes) == ["foo:1", "foo:2"]

    _, nodes = c.health.service("foo", tag="tag:foo:1")
    assert _ids(nodes) == ["foo:1"]

    c.agent.service.deregister("foo:1")
    c.agent.service.deregister("foo:2")
    _, nodes = c.health.service("foo")
    assert nodes == []


def test_health_service_warning_is_not_passing(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("w", check=Check.ttl("60s"))
    c.agent.check.ttl_warn("service:w")
    _, nodes = c.health.service("w", passing=True)
    assert nodes == []
    _, nodes = c.health.service("w")
    assert [ch["Status"] for ch in nodes[0]["Checks"] if ch["ServiceID"] == "w"] == ["warning"]


def test_health_service_entry_shape(consul_client: Any) -> None:
    c = consul_client
    node = c.agent.self()["Config"]["NodeName"]
    c.agent.service.register("web", service_id="web-1", address="127.0.0.9", port=81, tags=["t"])
    _, entries = c.health.service("web")
    assert len(entries) == 1
    entry = entries[0]
    assert entry["Node"]["Node"] == node
    assert entry["Node"]["Datacenter"] == "dc1"
    assert entry["Node"]["Address"]
    assert entry["Service"]["ID"] == "web-1"
    assert entry["Service"]["Service"] == "web"
    assert entry["Service"]["Address"] == "127.0.0.9"
    assert entry["Service"]["Port"] == 81
    assert entry["Service"]["Tags"] == ["t"]
    # A service without checks still lists the node's serfHealth check.
    assert [(ch["CheckID"], ch["ServiceID"]) for ch in entry["Checks"]] == [("serfHealth", "")]
    assert entry["Checks"][0]["Status"] == "passing"


def test_health_service_repeated_tag(consul_client: Any, http: httpx.Client) -> None:
    c = consul_client
    c.agent.service.register("api", service_id="api-1", tags=["a", "b"])
    c.agent.service.register("api", service_id="api-2", tags=["a"])
    c.agent.service.register("api", service_id="api-3", tags=["b"])
    _, nodes = c.health.service("api", tag=["a", "b"])
    assert _ids(nodes) == ["api-1"]
    _, nodes = c.health.service("api", tag="a")
    assert _ids(nodes) == ["api-1", "api-2"]
    resp = http.get("/v1/health/service/api", params=[("tag", "b"), ("tag", "a")])
    assert _ids(resp.json()) == ["api-1"]
    _, nodes = c.catalog.service("api", tag="b")
    assert sorted(n["ServiceID"] for n in nodes) == ["api-1", "api-3"]


def test_multi_check_service(consul_client: Any, target: CheckTarget) -> None:
    """py-consul test_service_multi_check: 3 HTTP checks + serfHealth in every entry."""
    c = consul_client
    c.agent.service.register(
        "foo1",
        check=Check.http(target.url, "1s"),
        extra_checks=[Check.http(target.url, "1s"), Check.http(target.url, "1s")],
    )
    _, nodes = c.health.service("foo1")
    assert {ch["ServiceID"] for n in nodes for ch in n["Checks"]} == {"foo1", ""}
    assert {ch["CheckID"] for n in nodes for ch in n["Checks"]} == {
        "service:foo1:1",
        "service:foo1:2",
        "service:foo1:3",
        "serfHealth",
    }

    def all_passing() -> list[dict[str, Any]] | None:
        _, checks = c.health.checks(service="foo1")
        return checks if {ch["Status"] for ch in checks} == {"passing"} else None

    checks = wait_until(all_passing, what="the three HTTP checks to pass")
    assert [ch["CheckID"] for ch in checks] == [
        "service:foo1:1",
        "service:foo1:2",
        "service:foo1:3",
    ]


def test_health_checks(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("foobar", service_id="foobar", check=Check.ttl("10s"))
    _, checks = c.health.checks("foobar")
    assert [ch["ServiceID"] for ch in checks] == ["foobar"]
    assert [ch["CheckID"] for ch in checks] == ["service:foobar"]
    assert checks[0]["ServiceName"] == "foobar"
    c.agent.service.deregister("foobar")
    _, checks = c.health.checks("foobar")
    assert checks == []


def test_health_state(consul_client: Any, http: httpx.Client) -> None:
    """py-consul test_health_state, with bounded waits."""
    c = consul_client
    _, nodes = c.health.state("any")
    assert [n["ServiceID"] for n in nodes] == [""]
    assert nodes[0]["CheckID"] == "serfHealth"

    c.agent.service.register("foo", service_id="foo:1", check=Check.ttl("60s"))
    c.agent.service.register("foo", service_id="foo:2", check=Check.ttl("2s"))
    _, nodes = c.health.state("any")
    assert {n["ServiceID"] for n in nodes} == {"", "foo:1", "foo:2"}
    _, nodes = c.health.state("passing")
    assert {n["ServiceID"] for n in nodes} == {""}
    _, nodes = c.health.state("critical")
    assert {n["ServiceID"] for n in nodes} == {"foo:1", "foo:2"}

    c.agent.check.ttl_pass("service:foo:1")
    c.agent.check.ttl_pass("service:foo:2")
    _, nodes = c.health.state("passing")
    assert {n["ServiceID"] for n in nodes} == {"", "foo:1", "foo:2"}
    wait_until(
        lambda: {n["ServiceID"] for n in c.health.state("passing")[1]} == {"", "foo:1"},
        what="the 2s TTL check to expire",
    )
    c.agent.check.ttl_warn("service:foo:2")
    _, nodes = c.health.state("warning")
    assert [n["ServiceID"] for n in nodes] == ["foo:2"]

    c.agent.service.deregister("foo:1")
    c.agent.service.deregister("foo:2")
    _, nodes = c.health.state("any")
    assert [n["ServiceID"] for n in nodes] == [""]
    assert http.get("/v1/health/state/bogus").status_code == 400


def test_health_node(consul_client: Any) -> None:
    c = consul_client
    node = c.agent.self()["Config"]["NodeName"]
    c.agent.service.register("web", check=Check.ttl("10s"))
    _, checks = c.health.node(node)
    assert {ch["Node"] for ch in checks} == {node}
    assert {ch["CheckID"] for ch in checks} == {"serfHealth", "service:web"}
    _, checks = c.health.node("no-such-node")
    assert checks == []


def test_health_connect(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("plain", service_id="plain:1", check=Check.ttl("10s"))
    # py-consul test_health_connect: a plain service has no Connect-capable instances.
    _, nodes = c.health.connect("plain")
    assert nodes == []
    c.agent.service.register("web", port=8080, connect={"sidecar_service": {}})
    _, nodes = c.health.connect("web")
    assert [n["Service"]["ID"] for n in nodes] == ["web-sidecar-proxy"]
    assert nodes[0]["Service"]["Kind"] == "connect-proxy"
    assert nodes[0]["Service"]["Proxy"]["DestinationServiceName"] == "web"


def test_health_reads_carry_consul_headers(http: httpx.Client) -> None:
    for path in (
        "/v1/health/service/nope",
        "/v1/health/checks/nope",
        "/v1/health/state/any",
        "/v1/health/node/nope",
    ):
        resp = http.get(path)
        assert resp.status_code == 200, path
        x_index(resp)
        assert resp.headers.get("X-Consul-KnownLeader") == "true", path
        assert resp.headers.get("X-Consul-LastContact") == "0", path
        assert resp.headers["Content-Type"].startswith("application/json"), path
    assert http.get("/v1/health/service/nope").text.strip() == "[]"
