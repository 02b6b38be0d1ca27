"""python-consul 1.1.0 (the original client), std and asyncio, against the real registry.

It cannot share a venv with py-consul (both are ``import consul``), so each scenario is a
small script run by the ``pyconsul11`` venv's interpreter; the script prints one JSON line
that the test checks. python-consul 1.1.0 differs from py-consul on the wire: the token goes
in ``?token=``, a service's check in a singular lower-case ``check`` key, and its std client
sets no timeouts. One scenario per area: KV, agent service + TTL check, blocking health
query, session + lock, ACL token; plus the py-consul scenarios through ``consul.aio``.
"""

from __future__ import annotations

from typing import Any

from .compat_support import MGMT_TOKEN, RegistryProcess
from .compat_venv import CompatVenv

STD_KV = r"""
import json, sys, consul
c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
out = {}
out["missing"] = c.kv.get("pc11/k")[1]
out["put"] = c.kv.put("pc11/k", "v1", flags=3)
idx, data = c.kv.get("pc11/k")
out["value"] = data["Value"].decode()
out["flags"] = data["Flags"]
out["cas_bad"] = c.kv.put("pc11/k", "v2", cas=data["ModifyIndex"] + 1000)
out["cas_ok"] = c.kv.put("pc11/k", "v2", cas=data["ModifyIndex"])
out["cas0_existing"] = c.kv.put("pc11/k", "v3", cas=0)
c.kv.put("pc11/dir/a", "1")
c.kv.put("pc11/dir/b/c", "2")
out["keys"] = c.kv.get("pc11/dir/", keys=True, separator="/")[1]
out["recurse"] = [e["Key"] for e in c.kv.get("pc11/", recurse=True)[1]]
out["delete"] = c.kv.delete("pc11/", recurse=True)
out["after"] = c.kv.get("pc11/", recurse=True)[1]
out["index"] = int(idx)
print(json.dumps(out))
"""


def test_std_kv(pyconsul11: CompatVenv, registry: RegistryProcess) -> None:
    out = pyconsul11.run_script(STD_KV, str(registry.port))
    assert out == {
        "missing": None,
        "put": True,
        "value": "v1",
        "flags": 3,
        "cas_bad": False,
        "cas_ok": True,
        "cas0_existing": False,
        "keys": ["pc11/dir/a", "pc11/dir/b/"],
        "recurse": ["pc11/dir/a", "pc11/dir/b/c", "pc11/k"],
        "delete": True,
        "after": None,
        "index": out["index"],
    }
    assert out["index"] > 0


STD_AGENT = r"""
import json, sys, consul
c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
out = {}
out["register"] = c.agent.service.register(
    "web", service_id="web-1", address="127.0.0.1", port=8080, tags=["v1"],
    check=consul.Check.ttl("30s"))
svc = c.agent.services()["web-1"]
out["service"] = [svc["Service"], svc["Address"], svc["Port"], svc["Tags"]]
out["initial"] = c.agent.checks()["service:web-1"]["Status"]
out["pass"] = c.agent.check.ttl_pass("service:web-1", notes="ok now")
chk = c.agent.checks()["service:web-1"]
out["after_pass"] = [chk["Status"], chk["Output"]]
c.agent.check.ttl_warn("service:web-1", notes="meh")
out["after_warn"] = c.agent.checks()["service:web-1"]["Status"]
c.agent.check.ttl_fail("service:web-1", notes="bad")
out["after_fail"] = c.agent.checks()["service:web-1"]["Output"]
out["check_register"] = c.agent.check.register(
    "extra", check=consul.Check.ttl("30s"), check_id="extra-1", notes="n", service_id="web-1")
out["checks"] = sorted(c.agent.checks())
out["maint_on"] = c.agent.service.maintenance("web-1", "true", "why")
out["maint_check"] = c.agent.checks()["_service_maintenance:web-1"]["Notes"]
out["maint_off"] = c.agent.service.maintenance("web-1", "false")
out["catalog"] = [n["ServiceID"] for n in c.catalog.service("web")[1]]
out["deregister"] = c.agent.service.deregister("web-1")
out["left"] = [c.agent.services(), c.agent.checks()]
print(json.dumps(out))
"""


def test_std_agent_service_and_ttl_check(pyconsul11: CompatVenv, registry: RegistryProcess) -> None:
    out = pyconsul11.run_script(STD_AGENT, str(registry.port))
    assert out == {
        "register": True,
        "service": ["web", "127.0.0.1", 8080, ["v1"]],
        "initial": "critical",
        "pass": True,
        "after_pass": ["passing", "ok now"],
        "after_warn": "warning",
        "after_fail": "bad",
        "check_register": True,
        "checks": ["extra-1", "service:web-1"],
        "maint_on": True,
        "maint_check": "why",
        "maint_off": True,
        "catalog": ["web-1"],
        "deregister": True,
        "left": [{}, {}],
    }


STD_BLOCKING = r"""
import json, sys, threading, time, consul
c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
c.agent.service.register("web", check=consul.Check.ttl("60s"))
idx, nodes = c.health.service("web", passing=True)
result = {}
def watch():
    result["r"] = c.health.service("web", index=idx, passing=True, wait="30s")
t = threading.Thread(target=watch)
t.start()
time.sleep(0.5)
blocked = t.is_alive()
c.agent.check.ttl_pass("service:web")
t.join(20)
new_idx, new_nodes = result["r"]
same_idx, _ = c.health.service("web", index=new_idx, wait="100ms")
print(json.dumps({
    "before": nodes, "blocked": blocked, "grew": int(new_idx) > int(idx),
    "after": [n["Service"]["ID"] for n in new_nodes],
    "timeout_same_index": same_idx == new_idx,
}))
"""


def test_std_health_blocking(pyconsul11: CompatVenv, registry: RegistryProcess) -> None:
    out = pyconsul11.run_script(STD_BLOCKING, str(registry.port))
    assert out == {
        "before": [],
        "blocked": True,
        "grew": True,
        "after": ["web"],
        "timeout_same_index": True,
    }


STD_SESSION = r"""
import json, sys, consul
c = consul.Consul(host="127.0.0.1", port=int(sys.argv[1]))
out = {}
s1 = c.session.create(name="one", ttl=30, behavior="delete", lock_delay=0)
s2 = c.session.create(name="two")
out["info"] = [c.session.info(s1)[1][k] for k in ("Name", "TTL", "Behavior")]
out["list"] = sorted(s["Name"] for s in c.session.list()[1])
node = c.agent.self()["Config"]["NodeName"]
out["node"] = sorted(s["Name"] for s in c.session.node(node)[1])
out["renew"] = c.session.renew(s1)["ID"] == s1
out["acquire1"] = c.kv.put("lock", "me", acquire=s1)
out["acquire2"] = c.kv.put("lock", "you", acquire=s2)
out["holder"] = c.kv.get("lock")[1]["Session"] == s1
out["release_wrong"] = c.kv.put("lock", "x", release=s2)
out["destroy"] = c.session.destroy(s1)
out["deleted"] = c.kv.get("lock")[1]
out["gone"] = c.session.info(s1)[1]
c.session.destroy(s2)
print(json.dumps(out))
"""


def test_std_session_and_lock(pyconsul11: CompatVenv, registry: RegistryProcess) -> None:
    out = pyconsul11.run_script(STD_SESSION, str(registry.port))
    assert out == {
        "info": ["one", "30s", "delete"],
        "list": ["one", "two"],
        "node": ["one", "two"],
        "renew": True,
        "acquire1": True,
        "acquire2": False,
        "holder": True,
        "release_wrong": False,
        "destroy": True,
        "deleted": None,
        "gone": None,
    }


STD_ACL = r"""
import json, sys, consul
port, token = int(sys.argv[1]), sys.argv[2]
anon = consul.Consul(host="127.0.0.1", port=port)
admin = consul.Consul(host="127.0.0.1", port=port, token=token)
out = {}
try:
    anon.kv.put("k", "v")
    out["anon_put"] = "allowed"
except consul.ACLPermissionDenied:
    out["anon_put"] = "denied"
out["admin_put"] = admin.kv.put("k", "v")
out["admin_get"] = admin.kv.get("k")[1]["Value"].decode()
out["per_call"] = anon.kv.put("k2", "v", token=token)
out["register"] = admin.agent.service.register("web", token=token)
out["services"] = sorted(admin.catalog.services(token=token)[1])
print(json.dumps(out))
"""


def test_std_acl_token_in_query(pyconsul11: CompatVenv, acl_registry: RegistryProcess) -> None:
    out = pyconsul11.run_script(STD_ACL, str(acl_registry.port), MGMT_TOKEN)
    assert out["anon_put"] == "denied"
    assert out["admin_put"] is True
    assert out["admin_get"] == "v"
    assert out["per_call"] is True
    assert out["register"] is True
    assert "web" in out["services"]


AIO = r"""
import asyncio, json, sys, consul, consul.aio
port = int(sys.argv[1])

async def main():
    c = consul.aio.Consul(host="127.0.0.1", port=port)
    out = {}
    try:
        idx, data = await c.kv.get("aio/k")
        out["missing"] = data
        async def later_put():
            await asyncio.sleep(0.3)
            await c.kv.put("aio/k", "bar")
        task = asyncio.ensure_future(later_put())
        idx2, data = await c.kv.get("aio/k", index=idx, wait="30s")
        await task
        out["woke_with"] = data["Value"].decode()
        out["grew"] = int(idx2) > int(idx)
        out["register"] = await c.agent.service.register(
            "web", port=80, check=consul.Check.ttl("30s"))
        out["pass"] = await c.agent.check.ttl_pass("service:web", notes="fine")
        checks = await c.agent.checks()
        out["check"] = [checks["service:web"]["Status"], checks["service:web"]["Output"]]
        hidx, nodes = await c.health.service("web", passing=True)
        out["passing"] = [n["Service"]["ID"] for n in nodes]
        async def later_fail():
            await asyncio.sleep(0.3)
            await c.agent.check.ttl_fail("service:web")
        task = asyncio.ensure_future(later_fail())
        _, nodes = await c.health.service("web", index=hidx, passing=True, wait="30s")
        await task
        out["after_fail"] = nodes
        sid = await c.session.create(lock_delay=0)
        out["lock"] = await c.kv.put("aio/lock", "x", acquire=sid)
        out["destroy"] = await c.session.destroy(sid)
        _, lock = await c.kv.get("aio/lock")
        out["released"] = lock.get("Session") is None
        _, sessions = await c.session.list()
        out["sessions"] = sessions
        out["deregister"] = await c.agent.service.deregister("web")
    finally:
        await c.http._session.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _check_aio(out: dict[str, Any]) -> None:
    assert out == {
        "missing": None,
        "woke_with": "bar",
        "grew": True,
        "register": True,
        "pass": True,
        "check": ["passing", "fine"],
        "passing": ["web"],
        "after_fail": [],
        "lock": True,
        "destroy": True,
        "released": True,
        "sessions": [],
        "deregister": True,
    }


def test_aio_client(pyconsul11: CompatVenv, registry: RegistryProcess) -> None:
    _check_aio(pyconsul11.run_script(AIO, str(registry.port)))


def test_pyconsul_aio_client(pyconsul_aio: CompatVenv, registry: RegistryProcess) -> None:
    """The same scenario with py-consul's own ``consul.aio`` client (aiohttp)."""
    _check_aio(pyconsul_aio.run_script(AIO, str(registry.port)))
