"""Least privilege in the registry of a default ``controld run``: ACLs on, default deny.

A real ``controld run`` process (embedded registry on a free port, its own data dir) is
attacked over HTTP the way a host on the same network would: with no token, and with a
sidecar's token (a service identity minted through controld's ``POST /v1/tokens/registry``).
controld's own KV prefix must stay controld's, a sidecar may register only its own service and
its proxy, and reads are filtered to what the token may see. Every check is against Consul's
documented answers (403 "Permission denied", 409 with per-operation errors for /v1/txn,
``X-Consul-Results-Filtered-By-ACLs``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .compat_support import MGMT_TOKEN, RegistryProcess, free_port
from .test_controld_daemon import ControldProcess

pytestmark = pytest.mark.timeout(120)

PREFIX = "meshd/"
FORGED_KEY = f"{PREFIX}join-tokens/forged"
FORGED = json.dumps(
    {"service": "payments", "namespace": "default", "expires": 4102444800, "sha256": "00" * 32}
).encode()


class Mesh:
    """The running daemon, its registry client and the tokens of the cast."""

    def __init__(self, daemon: ControldProcess, registry_port: int, data_dir: Path) -> None:
        self.daemon = daemon
        self.registry = httpx.Client(base_url=f"http://127.0.0.1:{registry_port}", timeout=10.0)
        self.controld = (data_dir / "registry-token").read_text().strip()
        self.web = daemon.registry_token("web")["secret_id"]

    def as_(self, token: str | None) -> dict[str, str]:
        """Headers carrying ``token`` (none: anonymous)."""
        return {} if token is None else {"X-Consul-Token": token}


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    port = free_port()
    data_dir = tmp_path / "data"
    daemon = ControldProcess(
        ["--registry-listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
        tmp_path / "controld.log",
    )
    try:
        daemon.wait_ready()
        m = Mesh(daemon, port, data_dir)
        try:
            yield m
        finally:
            m.registry.close()
    finally:
        daemon.stop()


def test_registry_token_file_is_private(mesh: Mesh, tmp_path: Path) -> None:
    path = tmp_path / "data" / "registry-token"
    assert path.stat().st_mode & 0o077 == 0
    self_ = mesh.registry.get("/v1/acl/token/self", headers=mesh.as_(mesh.controld))
    assert self_.status_code == 200, self_.text
    assert [p["Name"] for p in self_.json()["Policies"]] == ["global-management"]


@pytest.mark.parametrize("who", ["anonymous", "sidecar"])
def test_forged_join_token_is_refused_and_never_appears(mesh: Mesh, who: str) -> None:
    token = None if who == "anonymous" else mesh.web
    r = mesh.registry
    put = r.put(f"/v1/kv/{FORGED_KEY}", content=FORGED, headers=mesh.as_(token))
    assert put.status_code == 403, put.text
    assert put.text == "Permission denied"
    cas = r.put(
        f"/v1/kv/{FORGED_KEY}", params={"cas": "0"}, content=FORGED, headers=mesh.as_(token)
    )
    assert cas.status_code == 403
    ops = [{"KV": {"Verb": "set", "Key": FORGED_KEY, "Value": base64.b64encode(FORGED).decode()}}]
    txn = r.put("/v1/txn", json=ops, headers=mesh.as_(token))
    assert txn.status_code == 409, txn.text
    assert txn.json()["Errors"] == [{"OpIndex": 0, "What": "Permission denied"}]
    # controld's own view: nothing was written.
    seen = r.get(f"/v1/kv/{FORGED_KEY}", headers=mesh.as_(mesh.controld))
    assert seen.status_code == 404
    tree = r.get(f"/v1/kv/{PREFIX}", params={"keys": ""}, headers=mesh.as_(mesh.controld))
    assert FORGED_KEY not in (tree.json() if tree.status_code == 200 else [])


@pytest.mark.parametrize("who", ["anonymous", "sidecar"])
def test_kv_writes_and_deletes_under_controld_prefix_refused(mesh: Mesh, who: str) -> None:
    token = None if who == "anonymous" else mesh.web
    r = mesh.registry
    key = f"{PREFIX}revocations/payments"
    ok = r.put(f"/v1/kv/{key}", content=b"revoked", headers=mesh.as_(mesh.controld))
    assert (ok.status_code, ok.json()) == (200, True)
    for method, path, params in [
        ("PUT", f"/v1/kv/{key}", {}),
        ("DELETE", f"/v1/kv/{key}", {}),
        ("DELETE", f"/v1/kv/{PREFIX}", {"recurse": ""}),
        ("DELETE", "/v1/kv/", {"recurse": ""}),
    ]:
        resp = r.request(method, path, params=params, content=b"x", headers=mesh.as_(token))
        assert resp.status_code == 403, (method, path, resp.text)
    ops = [{"KV": {"Verb": "delete-tree", "Key": PREFIX}}]
    assert r.put("/v1/txn", json=ops, headers=mesh.as_(token)).status_code == 409
    kept = r.get(f"/v1/kv/{key}", params={"raw": ""}, headers=mesh.as_(mesh.controld))
    assert (kept.status_code, kept.content) == (200, b"revoked")
    # Nor can they read it.
    read = r.get(f"/v1/kv/{key}", headers=mesh.as_(token))
    assert read.status_code == 403
    assert b"revoked" not in read.content


def _service(name: str, **extra: Any) -> dict[str, Any]:
    return {"Name": name, "ID": f"{name}-1", "Address": "127.0.0.1", "Port": 9000, **extra}


def test_sidecar_token_registers_only_its_own_service(mesh: Mesh) -> None:
    r = mesh.registry
    web = mesh.as_(mesh.web)
    assert r.put("/v1/agent/service/register", json=_service("web"), headers=web).status_code == 200
    proxy = _service(
        "web-sidecar-proxy",
        Kind="connect-proxy",
        Proxy={"DestinationServiceName": "web", "LocalServicePort": 9000},
    )
    assert r.put("/v1/agent/service/register", json=proxy, headers=web).status_code == 200
    other = r.put("/v1/agent/service/register", json=_service("payments"), headers=web)
    assert (other.status_code, other.text) == (403, "Permission denied")
    # A proxy pretending to front another service, or taking over another's ID.
    fake_proxy = _service(
        "web-sidecar-proxy",
        ID="pay-proxy",
        Kind="connect-proxy",
        Proxy={"DestinationServiceName": "payments"},
    )
    assert r.put("/v1/agent/service/register", json=fake_proxy, headers=web).status_code == 403
    admin = mesh.as_(mesh.controld)
    assert r.put("/v1/agent/service/register", json=_service("payments"), headers=admin).is_success
    takeover = _service("web", ID="payments-1")
    assert r.put("/v1/agent/service/register", json=takeover, headers=web).status_code == 403
    dereg = r.put("/v1/agent/service/deregister/payments-1", headers=web)
    assert dereg.status_code == 403
    catalog = {"Node": "evil", "Address": "10.0.0.9", "Service": {"Service": "web"}}
    assert r.put("/v1/catalog/register", json=catalog, headers=web).status_code == 403
    # What it registered is there; the attempts left nothing behind.
    services = r.get("/v1/agent/services", headers=admin).json()
    assert sorted(services) == ["payments-1", "web-1", "web-sidecar-proxy-1"]
    assert services["payments-1"]["Service"] == "payments"
    anon = r.put("/v1/agent/service/register", json=_service("web"))
    assert anon.status_code == 403


def test_reads_are_filtered_to_the_token(mesh: Mesh) -> None:
    r = mesh.registry
    admin = mesh.as_(mesh.controld)
    for name in ("web", "payments"):
        r.put("/v1/agent/service/register", json=_service(name), headers=admin).raise_for_status()
    r.put(f"/v1/kv/{PREFIX}secret", content=b"s3cr3t", headers=admin).raise_for_status()
    # Anonymous: default deny, so lists come back empty and say they were filtered.
    anon = r.get("/v1/catalog/services")
    assert anon.status_code == 200
    assert anon.json() == {}
    assert anon.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    health = r.get("/v1/health/service/payments")
    assert (health.status_code, health.json()) == (200, [])
    assert health.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    # The sidecar reads the catalog and health (service_prefix "" and node_prefix "" read)...
    web = mesh.as_(mesh.web)
    seen = r.get("/v1/catalog/services", headers=web)
    assert {"web", "payments"} <= set(seen.json())
    assert "X-Consul-Results-Filtered-By-ACLs" not in seen.headers
    assert [
        e["Service"]["ID"] for e in r.get("/v1/health/service/payments", headers=web).json()
    ] == ["payments-1"]
    # ...but no KV: a single key is 403, a listing is filtered to nothing.
    assert r.get(f"/v1/kv/{PREFIX}secret", headers=web).status_code == 403
    listing = r.get(f"/v1/kv/{PREFIX}", params={"recurse": ""}, headers=web)
    assert listing.status_code == 404
    assert b"s3cr3t" not in listing.content and b"czNjcjN0" not in listing.content
    keys = r.get("/v1/kv/", params={"keys": ""}, headers=web)
    assert keys.status_code == 404
    assert keys.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"


def test_unknown_and_deleted_tokens_are_refused(mesh: Mesh) -> None:
    r = mesh.registry
    made = mesh.daemon.registry_token("web")
    assert r.get("/v1/catalog/services", headers=mesh.as_(made["secret_id"])).status_code == 200
    gone = r.delete(f"/v1/acl/token/{made['accessor_id']}", headers=mesh.as_(mesh.controld))
    assert gone.status_code == 200
    after = r.get("/v1/catalog/services", headers=mesh.as_(made["secret_id"]))
    assert (after.status_code, after.text) == (403, "ACL not found")
    assert r.get("/v1/catalog/services", headers=mesh.as_("made-up")).status_code == 403


def test_registry_tokens_are_admin_only(mesh: Mesh) -> None:
    http = mesh.daemon.http
    before = mesh.registry.get("/v1/acl/tokens", headers=mesh.as_(mesh.controld)).json()
    assert http.post("/v1/tokens/registry", json={"service": "web"}).status_code == 401
    admin = {"authorization": f"Bearer {mesh.daemon.token_file.read_text().strip()}"}
    sidecar = http.post("/v1/tokens/sidecar", json={"service": "web"}, headers=admin).json()
    as_sidecar = {"authorization": f"Bearer {sidecar['token']}"}
    refused = http.post("/v1/tokens/registry", json={"service": "web"}, headers=as_sidecar)
    assert refused.status_code == 403
    bad = http.post("/v1/tokens/registry", json={"service": "web", "ttl_s": 5}, headers=admin)
    assert bad.status_code == 422
    after = mesh.registry.get("/v1/acl/tokens", headers=mesh.as_(mesh.controld)).json()
    assert len(after) == len(before)


def test_unsafe_opt_out_is_explicit_and_logged(tmp_path: Path) -> None:
    port = free_port()
    daemon = ControldProcess(
        [
            "--registry-listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "data"),
            "--registry-acl-disabled",
        ],
        tmp_path / "controld.log",
    )
    try:
        daemon.wait_ready()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as registry:
            assert registry.put("/v1/kv/anything", content=b"x").status_code == 200
        assert "registry ACLs disabled" in daemon.log_path.read_text()
        assert not (tmp_path / "data" / "registry-token").exists()
    finally:
        assert daemon.stop() == 0


CONTROLD_POLICY = """
key_prefix "meshd/" {
  policy = "write"
}
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
acl = "write"
"""


def test_documented_consul_policies_give_the_same_split(
    acl_registry: RegistryProcess, tmp_path: Path
) -> None:
    """docs/security.md's policy for controld, on an external registry with ACLs: controld
    runs with it, mints the sidecars' tokens, and a sidecar token still can't touch meshd/."""
    admin = {"X-Consul-Token": MGMT_TOKEN}
    with httpx.Client(base_url=acl_registry.url, timeout=10.0) as r:
        made = r.put(
            "/v1/acl/policy", json={"Name": "controld", "Rules": CONTROLD_POLICY}, headers=admin
        )
        assert made.status_code == 200, made.text
        token = r.put("/v1/acl/token", json={"Policies": [{"Name": "controld"}]}, headers=admin)
        controld_token = token.json()["SecretID"]
        daemon = ControldProcess(
            [
                "--registry",
                acl_registry.url,
                "--registry-token",
                controld_token,
                "--data-dir",
                str(tmp_path / "state"),
            ],
            tmp_path / "controld.log",
        )
        try:
            daemon.wait_ready()
            assert daemon.status()["registry"]["connected"] is True
            web = daemon.registry_token("web")["secret_id"]
            as_web = {"X-Consul-Token": web}
            ok = r.put("/v1/agent/service/register", json=_service("web"), headers=as_web)
            assert ok.status_code == 200, ok.text
            assert r.put(f"/v1/kv/{FORGED_KEY}", content=FORGED, headers=as_web).status_code == 403
            assert r.put(f"/v1/kv/{FORGED_KEY}", content=FORGED).status_code == 403
            # controld's token writes its prefix, and nothing outside it.
            mine = {"X-Consul-Token": controld_token}
            assert r.put(f"/v1/kv/{PREFIX}probe", content=b"1", headers=mine).json() is True
            assert r.put("/v1/kv/elsewhere", content=b"1", headers=mine).status_code == 403
        finally:
            assert daemon.stop() == 0
