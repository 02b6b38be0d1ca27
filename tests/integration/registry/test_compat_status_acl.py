"""Status leader/peers, ``dc`` handling, and ACLs (management token; 403 without).

Consul docs followed: api-docs/status (leader: a JSON string ``"host:port"``, peers: a list
of them; not ACL-protected), api-docs/api-structure (``dc`` query parameter; authentication
with ``X-Consul-Token``, ``Authorization: Bearer`` or the deprecated ``?token=``; an unknown
datacenter is "No path to datacenter"), docs/security/acl (403 "Permission denied" for
anonymous requests when ACLs enforce; list reads are filtered rather than denied).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import consul
import httpx
import pytest

from .compat_support import MGMT_TOKEN, RegistryProcess


def test_status_leader_and_peers(consul_client: Any, http: httpx.Client) -> None:
    c = consul_client
    leader = c.status.leader()
    assert isinstance(leader, str)
    host, _, port = leader.rpartition(":")
    assert host and port.isdigit()
    assert leader == c.agent.self()["Stats"]["consul"]["leader_addr"]
    assert leader in c.status.peers()
    resp = http.get("/v1/status/leader")
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == leader


READS = [
    "/v1/kv/foo",
    "/v1/catalog/services",
    "/v1/catalog/nodes",
    "/v1/catalog/service/web",
    "/v1/health/service/web",
    "/v1/health/state/any",
    "/v1/session/list",
]


@pytest.mark.parametrize("path", READS)
def test_dc_handling_on_reads(http: httpx.Client, path: str) -> None:
    ok = http.get(path, params={"dc": "dc1"})
    assert ok.status_code in (200, 404), ok.text
    bad = http.get(path, params={"dc": "dc2"})
    assert bad.status_code == 500, bad.text
    assert "No path to datacenter" in bad.text


def test_dc_handling_on_writes(http: httpx.Client, consul_client: Any) -> None:
    c = consul_client
    assert c.kv.put("k", "v", dc="dc1") is True
    with pytest.raises(consul.ConsulException):
        c.kv.put("k", "v", dc="dc2")
    with pytest.raises(consul.ConsulException):
        c.kv.delete("k", dc="dc2")
    _, data = c.kv.get("k")
    assert data["Value"] == b"v"
    bad = http.put("/v1/catalog/register", json={"Datacenter": "dc2", "Node": "n", "Address": "a"})
    assert bad.status_code == 500
    assert "No path to datacenter" in bad.text


# -- ACLs ----------------------------------------------------------------------------------


@pytest.fixture
def anon(acl_registry: RegistryProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=acl_registry.url, timeout=30.0) as client:
        yield client


@pytest.fixture
def admin(acl_registry: RegistryProcess, make_client: Callable[..., Any]) -> Any:
    """py-consul with the management token as its default token."""
    return make_client(acl_registry, token=MGMT_TOKEN)


def test_status_needs_no_token(anon: httpx.Client) -> None:
    assert anon.get("/v1/status/leader").status_code == 200
    assert anon.get("/v1/status/peers").status_code == 200


WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", "/v1/kv/secret", None),
    ("DELETE", "/v1/kv/secret", None),
    ("PUT", "/v1/agent/service/register", {"Name": "web"}),
    ("PUT", "/v1/agent/service/deregister/web", None),
    ("PUT", "/v1/agent/check/register", {"Name": "c", "TTL": "10s"}),
    ("PUT", "/v1/agent/check/pass/c", None),
    ("PUT", "/v1/agent/maintenance?enable=true", None),
    ("PUT", "/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.1"}),
    ("PUT", "/v1/catalog/deregister", {"Node": "n1"}),
    ("PUT", "/v1/session/create", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_writes_without_token_are_403(
    anon: httpx.Client, method: str, path: str, body: dict[str, Any] | None
) -> None:
    resp = anon.request(method, path, json=body)
    assert resp.status_code == 403, resp.text
    assert "permission denied" in resp.text.lower()


def test_token_transports(anon: httpx.Client) -> None:
    """X-Consul-Token, Authorization: Bearer and ?token= all carry the token."""
    header = anon.put("/v1/kv/a", content=b"1", headers={"X-Consul-Token": MGMT_TOKEN})
    assert (header.status_code, header.json()) == (200, True)
    bearer = anon.put("/v1/kv/b", content=b"2", headers={"Authorization": f"Bearer {MGMT_TOKEN}"})
    assert (bearer.status_code, bearer.json()) == (200, True)
    query = anon.put("/v1/kv/c", params={"token": MGMT_TOKEN}, content=b"3")
    assert (query.status_code, query.json()) == (200, True)
    got = anon.get("/v1/kv/", params={"recurse": "", "token": MGMT_TOKEN})
    assert [e["Key"] for e in got.json()] == ["a", "b", "c"]


def test_wrong_token_is_403(anon: httpx.Client) -> None:
    resp = anon.put("/v1/kv/a", content=b"1", headers={"X-Consul-Token": "not-the-token"})
    assert resp.status_code == 403


def test_reads_without_token_leak_nothing(admin: Any, anon: httpx.Client) -> None:
    admin.kv.put("secret", "s3cr3t")
    admin.agent.service.register("hidden-svc", check=consul.Check.ttl("60s"))
    admin.session.create("locker")
    kv = anon.get("/v1/kv/secret")
    assert kv.status_code == 403
    assert "s3cr3t" not in kv.text
    for path in (
        "/v1/kv/?recurse",
        "/v1/catalog/services",
        "/v1/catalog/service/hidden-svc",
        "/v1/health/service/hidden-svc",
        "/v1/health/checks/hidden-svc",
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/session/list",
    ):
        resp = anon.get(path)
        # Consul denies (403) or filters (200/404 without the data); either way nothing leaks.
        assert resp.status_code in (200, 403, 404), (path, resp.status_code)
        assert "hidden-svc" not in resp.text, (path, resp.text)
        assert "locker" not in resp.text, (path, resp.text)
        assert "s3cr3t" not in resp.text and "czNjcjN0" not in resp.text, (path, resp.text)


def test_management_token_can_do_everything(admin: Any) -> None:
    c = admin
    assert c.kv.put("k", "v") is True
    assert c.kv.get("k")[1]["Value"] == b"v"
    assert c.agent.service.register("web", check=consul.Check.ttl("60s")) is True
    assert c.agent.check.ttl_pass("service:web") is True
    _, nodes = c.health.service("web", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["web"]
    sid = c.session.create()
    assert c.kv.put("lock", "x", acquire=sid) is True
    assert c.catalog.register("n1", "10.0.0.1", service={"service": "s1"}) is True
    _, services = c.catalog.services()
    assert {"web", "s1"} <= set(services)
    assert c.agent.service.deregister("web") is True


def test_per_call_token_overrides(
    acl_registry: RegistryProcess, make_client: Callable[..., Any]
) -> None:
    c = make_client(acl_registry)
    with pytest.raises(consul.ACLPermissionDenied):
        c.kv.put("k", "v")
    assert c.kv.put("k", "v", token=MGMT_TOKEN) is True
    with pytest.raises(consul.ACLPermissionDenied):
        c.kv.get("k")
    assert c.kv.get("k", token=MGMT_TOKEN)[1]["Value"] == b"v"
    with pytest.raises(consul.ACLPermissionDenied):
        c.agent.service.register("web")
    assert c.agent.service.register("web", token=MGMT_TOKEN) is True
