"""Sessions: create/destroy/renew/info/list/node, TTL, behavior release/delete, lock-delay.

Consul docs followed: api-docs/session (create: Node defaults to the agent's, Checks default
to ``serfHealth``, LockDelay default 15s, Behavior ``release``|``delete``, TTL 10s..86400s;
destroy; info/list/node; renew 404 for unknown sessions), docs/dynamic-app-config/sessions
(invalidation releases or deletes held locks; lock-delay blocks re-acquisition after an
invalidation, not after a release; TTL invalidation may take up to 2x the TTL).
"""

from __future__ import annotations

import time
from typing import Any

import consul
import httpx
import pytest

from .compat_support import wait_until

Check = consul.Check


def test_session_lifecycle(consul_client: Any) -> None:
    """The sequence of py-consul's test_session."""
    c = consul_client
    with pytest.raises(consul.ConsulException):
        c.session.create(node="n2")
    with pytest.raises(consul.ConsulException):
        c.session.create(dc="dc2")
    session_id = c.session.create("my-session")

    with pytest.raises(consul.ConsulException):
        c.session.list(dc="dc2")
    _, sessions = c.session.list()
    assert [x["Name"] for x in sessions] == ["my-session"]

    with pytest.raises(consul.ConsulException):
        c.session.info(session_id, dc="dc2")
    _, session = c.session.info("1" * 36)
    assert session is None
    _, session = c.session.info(session_id)
    assert session["Name"] == "my-session"

    node = session["Node"]
    with pytest.raises(consul.ConsulException):
        c.session.node(node, dc="dc2")
    _, sessions = c.session.node(node)
    assert [x["Name"] for x in sessions] == ["my-session"]

    with pytest.raises(consul.ConsulException):
        c.session.destroy(session_id, dc="dc2")
    assert c.session.destroy(session_id) is True
    _, sessions = c.session.list()
    assert sessions == []


def test_session_defaults(consul_client: Any) -> None:
    c = consul_client
    me = c.agent.self()["Config"]["NodeName"]
    sid = c.session.create()
    assert len(sid) == 36
    _, session = c.session.info(sid)
    assert session["ID"] == sid
    assert session["Node"] == me
    assert session["LockDelay"] == 15_000_000_000  # nanoseconds, as Consul encodes durations
    assert session["Behavior"] == "release"
    assert session["TTL"] == ""
    assert "serfHealth" in (session.get("NodeChecks") or session.get("Checks") or [])
    assert session["CreateIndex"] > 0
    _, others = c.session.node("some-other-node")
    assert others == []


def test_renew_and_delete_behavior(consul_client: Any) -> None:
    """py-consul test_session_delete_ttl_renew."""
    c = consul_client
    s = c.session.create(behavior="delete", ttl=20)
    with pytest.raises(consul.NotFound):
        c.session.renew("1" * 36)
    session = c.session.renew(s)
    assert session["Behavior"] == "delete"
    assert session["TTL"] == "20s"
    assert session["ID"] == s

    assert c.kv.put("foo", "1", acquire=s) is True
    _, data = c.kv.get("foo")
    assert data["Value"] == b"1"
    c.session.destroy(s)
    _, data = c.kv.get("foo")
    assert data is None


def test_release_behavior_keeps_the_key(consul_client: Any) -> None:
    c = consul_client
    s = c.session.create(lock_delay=0)
    assert c.kv.put("lock", "held", acquire=s) is True
    c.session.destroy(s)
    _, data = c.kv.get("lock")
    assert data["Value"] == b"held"
    assert not data.get("Session")


def test_lock_delay_after_invalidation(consul_client: Any) -> None:
    c = consul_client
    s1 = c.session.create(lock_delay=2)
    _, info = c.session.info(s1)
    assert info["LockDelay"] == 2_000_000_000
    assert c.kv.put("lk", "a", acquire=s1) is True
    c.session.destroy(s1)
    s2 = c.session.create(lock_delay=0)
    # Within the lock-delay window the key cannot be acquired...
    assert c.kv.put("lk", "b", acquire=s2) is False
    # ...and once it has passed, it can.
    wait_until(lambda: c.kv.put("lk", "b", acquire=s2), timeout=10.0, what="lock-delay to end")
    _, data = c.kv.get("lk")
    assert data["Session"] == s2


def test_no_lock_delay_after_explicit_release(consul_client: Any) -> None:
    c = consul_client
    s1 = c.session.create(lock_delay=10)
    s2 = c.session.create()
    assert c.kv.put("lk", "a", acquire=s1) is True
    assert c.kv.put("lk", "a", release=s1) is True
    assert c.kv.put("lk", "b", acquire=s2) is True


@pytest.mark.parametrize(
    "body",
    [{"TTL": "5s"}, {"TTL": "86401s"}, {"TTL": "soon"}, {"Behavior": "explode"}],
    ids=["ttl-too-short", "ttl-too-long", "ttl-garbage", "bad-behavior"],
)
def test_create_validation_is_rejected(http: httpx.Client, body: dict[str, Any]) -> None:
    # Consul's Session.Apply returns a plain error for these, which its HTTP layer maps to
    # 500 ("Invalid Session TTL ...", "Invalid Behavior setting ..."); 400 is as good.
    resp = http.put("/v1/session/create", json=body)
    assert resp.status_code in (400, 500), resp.text
    assert http.get("/v1/session/list").json() == []


def test_session_create_raw_shape(http: httpx.Client) -> None:
    resp = http.put("/v1/session/create", json={"Name": "x", "TTL": "15s", "LockDelay": "1s"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"ID"}
    info = http.get(f"/v1/session/info/{body['ID']}")
    assert info.status_code == 200
    [session] = info.json()
    assert (session["TTL"], session["LockDelay"]) == ("15s", 1_000_000_000)
    renew = http.put(f"/v1/session/renew/{body['ID']}")
    assert renew.status_code == 200
    assert [s["ID"] for s in renew.json()] == [body["ID"]]
    missing = http.get("/v1/session/info/00000000-0000-0000-0000-000000000000")
    assert (missing.status_code, missing.text.strip()) == (200, "[]")


def test_session_invalidated_by_critical_check(consul_client: Any, http: httpx.Client) -> None:
    c = consul_client
    c.agent.check.register("guard", Check.ttl("60s"))
    # A session cannot be tied to a check that is critical right now.
    bad = http.put("/v1/session/create", json={"Checks": ["serfHealth", "guard"]})
    assert bad.status_code >= 400
    c.agent.check.ttl_pass("guard")
    sid = c.session.create(checks=["serfHealth", "guard"], lock_delay=0)
    assert c.kv.put("held", "x", acquire=sid) is True
    c.agent.check.ttl_fail("guard")
    wait_until(lambda: c.session.info(sid)[1] is None, what="session to be invalidated")
    _, data = c.kv.get("held")
    assert not data.get("Session")


@pytest.mark.slow
def test_ttl_expiry_and_renewal(consul_client: Any) -> None:
    """TTL 10s: invalidated after at least 10s and at most ~2x TTL; renewals keep one alive."""
    c = consul_client
    started = time.monotonic()
    expiring = c.session.create(ttl=10, behavior="delete", lock_delay=0)
    renewed = c.session.create(ttl=10)
    assert c.kv.put("ephemeral", "x", acquire=expiring) is True

    def expired() -> bool:
        c.session.renew(renewed)
        return c.session.info(expiring)[1] is None

    wait_until(expired, timeout=40.0, interval=1.0, what="the TTL session to expire")
    assert time.monotonic() - started >= 9.5  # never before its TTL
    _, data = c.kv.get("ephemeral")
    assert data is None  # behavior=delete
    _, session = c.session.info(renewed)
    assert session is not None
