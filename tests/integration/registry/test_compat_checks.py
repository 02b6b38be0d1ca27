"""Agent checks (TTL, HTTP, TCP), their notes/output, and DeregisterCriticalServiceAfter.

Consul docs followed: api-docs/agent/check (register, deregister, pass/warn/fail with
``note``, update), docs/services/usage/checks (TTL, HTTP 2xx passing / 429 warning / other
critical, TCP, initial status critical, DeregisterCriticalServiceAfter minimum 1m reaped
every 30s).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import consul
import httpx
import pytest

from .compat_support import CheckTarget, tcp_listener, wait_until

Check = consul.Check


@pytest.fixture
def target() -> Iterator[CheckTarget]:
    server = CheckTarget()
    try:
        yield server
    finally:
        server.close()


def _status(c: Any, check_id: str) -> str | None:
    check = c.agent.checks().get(check_id)
    return None if check is None else str(check["Status"])


def _wait_status(c: Any, check_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        check: dict[str, Any] | None = c.agent.checks().get(check_id)
        return check if check is not None and check["Status"] == status else None

    return wait_until(probe, timeout=timeout, what=f"check {check_id} to become {status}")


def test_ttl_check_pass_warn_fail_with_notes(consul_client: Any) -> None:
    """The sequence of py-consul's test_agent_checks, on a TTL check."""
    c = consul_client
    assert c.agent.check.register("ttl_check", Check.ttl("30s")) is True
    assert _status(c, "ttl_check") == "critical"

    assert c.agent.check.ttl_warn("ttl_check") is True
    assert _status(c, "ttl_check") == "warning"
    assert c.agent.check.ttl_warn("ttl_check", notes="its not quite right") is True
    check = c.agent.checks()["ttl_check"]
    assert (check["Status"], check["Output"]) == ("warning", "its not quite right")

    assert c.agent.check.ttl_fail("ttl_check", notes="something went boink!") is True
    check = c.agent.checks()["ttl_check"]
    assert (check["Status"], check["Output"]) == ("critical", "something went boink!")

    assert c.agent.check.ttl_pass("ttl_check", notes="all hunky dory!") is True
    check = c.agent.checks()["ttl_check"]
    assert (check["Status"], check["Output"]) == ("passing", "all hunky dory!")
    assert check["Type"] == "ttl"
    assert check["Name"] == "ttl_check"
    assert check["CheckID"] == "ttl_check"

    assert c.agent.check.deregister("ttl_check") is True
    assert c.agent.checks() == {}


def test_ttl_expiry_turns_critical(consul_client: Any) -> None:
    c = consul_client
    c.agent.check.register("short", Check.ttl("1s"))
    c.agent.check.ttl_pass("short")
    assert _status(c, "short") == "passing"
    check = _wait_status(c, "short", "critical")
    assert "TTL expired" in check["Output"]
    # A pass after expiry brings it back and re-arms the timer.
    c.agent.check.ttl_pass("short")
    assert _status(c, "short") == "passing"


def test_check_register_fields(consul_client: Any) -> None:
    c = consul_client
    c.agent.service.register("svc")
    assert c.agent.check.register(
        "check name", Check.ttl("30s"), check_id="check_id", notes="foo", service_id="svc"
    )
    check = c.agent.checks()["check_id"]
    assert check["Name"] == "check name"
    assert check["Notes"] == "foo"
    assert check["ServiceID"] == "svc"
    assert check["ServiceName"] == "svc"
    assert check["Status"] == "critical"


def test_check_update_endpoint(consul_client: Any, http: httpx.Client) -> None:
    c = consul_client
    c.agent.check.register("upd", Check.ttl("30s"))
    resp = http.put("/v1/agent/check/update/upd", json={"Status": "warning", "Output": "meh"})
    assert resp.status_code == 200, resp.text
    check = c.agent.checks()["upd"]
    assert (check["Status"], check["Output"]) == ("warning", "meh")
    bad = http.put("/v1/agent/check/update/upd", json={"Status": "fine"})
    assert bad.status_code == 400, bad.text


def test_initial_status_honoured(http: httpx.Client, consul_client: Any) -> None:
    resp = http.put(
        "/v1/agent/check/register", json={"Name": "up", "TTL": "30s", "Status": "passing"}
    )
    assert resp.status_code == 200, resp.text
    assert _status(consul_client, "up") == "passing"


def test_check_for_unknown_service_is_rejected(consul_client: Any, http: httpx.Client) -> None:
    # py-consul test_agent_register_check_no_service_id: for Consul > 1.11 register() returns
    # False, i.e. 404 'ServiceID "foo1" does not exist' (agent_endpoint.go).
    c = consul_client
    assert c.agent.check.register("foo", Check.ttl("100ms"), service_id="foo1") is False
    resp = http.put(
        "/v1/agent/check/register", json={"Name": "x", "TTL": "10s", "ServiceID": "nope"}
    )
    assert resp.status_code == 404, resp.text
    assert c.agent.checks() == {}


def test_unknown_check_ids(consul_client: Any, http: httpx.Client) -> None:
    # Deregistering an unknown check: 404 since Consul 1.11 (hashicorp/consul#11950).
    assert http.put("/v1/agent/check/deregister/nope").status_code == 404
    assert consul_client.agent.check.deregister("nope") is False
    assert http.put("/v1/agent/check/pass/nope").status_code in (404, 500)


def test_ttl_update_on_non_ttl_check_is_an_error(
    consul_client: Any, http: httpx.Client, target: CheckTarget
) -> None:
    consul_client.agent.check.register("web", Check.http(target.url, "1s"))
    assert http.put("/v1/agent/check/pass/web").status_code >= 400


def test_http_check_follows_target_status(consul_client: Any, target: CheckTarget) -> None:
    c = consul_client
    check = Check.http(target.url, "1s", timeout="2s", header={"x-probe": ["meshd"]})
    assert c.agent.check.register("http_check", check) is True
    passing = _wait_status(c, "http_check", "passing")
    assert passing["Type"] == "http"
    assert "200" in passing["Output"]
    assert target.hits >= 1
    assert target.last_headers.get("x-probe") == "meshd"

    target.status = 429  # Consul: 429 Too Many Requests -> warning
    _wait_status(c, "http_check", "warning")
    target.status = 503
    _wait_status(c, "http_check", "critical")
    target.status = 204
    _wait_status(c, "http_check", "passing")
    target.close()  # connection refused -> critical
    _wait_status(c, "http_check", "critical")


def test_http_check_on_service(consul_client: Any, target: CheckTarget) -> None:
    c = consul_client
    c.agent.service.register("web", port=target.port, check=Check.http(target.url, "1s"))
    _wait_status(c, "service:web", "passing")
    _, nodes = c.health.service("web", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["web"]


def test_tcp_check(consul_client: Any) -> None:
    c = consul_client
    with tcp_listener() as port:
        c.agent.check.register("tcp_check", Check.tcp("127.0.0.1", port, "1s", timeout="1s"))
        check = _wait_status(c, "tcp_check", "passing")
        assert check["Type"] == "tcp"
    _wait_status(c, "tcp_check", "critical")


@pytest.mark.slow
def test_deregister_critical_service_after(consul_client: Any) -> None:
    """Consul's minimum is 1m and the reaper runs every 30s: gone within ~90s, never early."""
    c = consul_client
    c.agent.service.register(
        "doomed", check=Check.ttl("2s") | {"DeregisterCriticalServiceAfter": "1m"}
    )
    c.agent.service.register(
        "kept", check=Check.ttl("10m") | {"DeregisterCriticalServiceAfter": "1m"}
    )
    c.agent.check.ttl_pass("service:kept")
    _wait_status(c, "service:doomed", "critical")
    wait_until(
        lambda: "doomed" not in c.agent.services(),
        timeout=120.0,
        interval=1.0,
        what="the critical service to be reaped",
    )
    assert "service:doomed" not in c.agent.checks()
    _, nodes = c.catalog.service("doomed")
    assert nodes == []
    assert "kept" in c.agent.services()
