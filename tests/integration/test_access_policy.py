"""Access policies enforced by the inbound sidecar, over real mTLS (issue 5).

Clients -> outbound sidecars ``web`` and ``batch`` (each with its own certificate) ->
inbound sidecar ``api`` (STRICT or PERMISSIVE) -> app. The inbound policy is compiled by
controld's compiler from AccessPolicy resources, so sources written as service names and as
SPIFFE IDs both go through the real resolution, and STRICT's default deny is the compiler's.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from helpers import (
    TIMEOUT,
    RawClient,
    RawServer,
    TestApp,
    admin_get,
    closed_port,
    cluster,
    echo_until_eof,
    port_of,
    request,
    start_sidecar,
    write_sidecar_config,
)
from mtls_ca import TRUST_DOMAIN, MiniCA, make_ca, spiffe
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from controld.compiler import compile_snapshot
from controld.discovery.view import DiscoveryView
from meshcore.model.proxy import ProxyDescriptor
from meshcore.model.resources import ResourceSet, parse_resource
from meshd.sidecar import Sidecar

IDENTITY = {
    "state_dir": "state",
    "static": {"cert_file": "cert.pem", "key_file": "key.pem", "bundle_file": "bundle.pem"},
}


def compiled_policy(mode: str, *rules: Mapping[str, Any]) -> dict[str, Any]:
    """``api``'s inbound policy as controld compiles it in mesh mTLS ``mode``."""
    resources = ResourceSet.of(
        [
            parse_resource(
                {
                    "kind": "Mesh",
                    "metadata": {"name": "default"},
                    "spec": {"trust_domain": TRUST_DOMAIN, "mtls": mode},
                }
            ),
            parse_resource(
                {
                    "kind": "AccessPolicy",
                    "metadata": {"name": "api-access"},
                    "spec": {"destination": "api", "rules": list(rules)},
                }
            ),
        ],
        revision=1,
    )
    descriptor = ProxyDescriptor.model_validate(
        {"proxy_id": "api-1", "service": "api", "inbound": "127.0.0.1:15006"}
    )
    snapshot = compile_snapshot(DiscoveryView(services={}, version=1), resources, descriptor)
    assert snapshot.inbound_policy is not None and snapshot.mtls == mode
    return snapshot.inbound_policy.model_dump(mode="json")


def write_identity(directory: Path, ca: MiniCA, service: str) -> None:
    leaf = ca.service(service)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(leaf.cert_pem)
    (directory / "key.pem").write_bytes(leaf.key_pem)
    (directory / "bundle.pem").write_bytes(ca.root_pem)


def set_snapshot(directory: Path, **fields: Any) -> None:
    path = directory / "snapshot.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(fields)
    path.write_text(yaml.safe_dump(doc))


async def start_api(
    nursery: trio.Nursery,
    directory: Path,
    ca: MiniCA,
    app_port: int,
    mode: str,
    policy: dict[str, Any],
    protocol: str = "http",
) -> Sidecar:
    path = write_sidecar_config(
        directory,
        service="api",
        app_port=app_port,
        listeners=[
            {
                "name": "inbound",
                "direction": "inbound",
                "address": "127.0.0.1:0",
                "protocol": protocol,
            }
        ],
        extra={"identity": IDENTITY},
    )
    write_identity(directory, ca, "api")
    set_snapshot(
        directory,
        mtls=mode,
        identity={"service": "api", "trust_domain": TRUST_DOMAIN},
        inbound_policy=policy,
    )
    return await start_sidecar(nursery, path)


async def start_client(
    nursery: trio.Nursery,
    directory: Path,
    ca: MiniCA,
    service: str,
    api_port: int,
    protocol: str = "http",
) -> Sidecar:
    """Sidecar ``service`` with an outbound listener ``out`` to ``api`` over mTLS."""
    path = write_sidecar_config(
        directory,
        service=service,
        app_port=closed_port(),
        listeners=[
            {
                "name": "out",
                "direction": "outbound",
                "address": "127.0.0.1:0",
                "cluster": "api",
                "protocol": protocol,
            }
        ],
        clusters=[cluster("api", api_port, tls={"spiffe_id": spiffe("api")})],
        extra={"identity": IDENTITY},
    )
    write_identity(directory, ca, service)
    set_snapshot(
        directory, mtls="strict", identity={"service": service, "trust_domain": TRUST_DOMAIN}
    )
    return await start_sidecar(nursery, path)


async def call(port: int, method: str, path: str, headers: list[tuple[str, str]]) -> Any:
    body = b"x" if method == "POST" else None
    async with RawClient.connect(port) as client:
        await client.send(request(method, path, headers=headers, body=body))
        return await client.read_response()


async def decisions(sidecar: Sidecar) -> dict[str, float]:
    text = (await admin_get(sidecar, "/metrics")).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "meshd_authz_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["listener"] == "inbound":
                    out[sample.labels["action"]] = sample.value
    return out


MATRIX_RULES: tuple[dict[str, Any], ...] = (
    # 0: deny by service name, on a path prefix
    {"sources": ["batch"], "action": "deny", "permissions": [{"path": {"prefix": "/admin"}}]},
    # 1: audit by SPIFFE ID, on method and path
    {
        "sources": [spiffe("batch")],
        "action": "audit",
        "permissions": [{"methods": ["POST"], "path": {"prefix": "/jobs"}}],
    },
    # 2: allow by service name: GET under /api, or anything with x-env: prod
    {
        "sources": ["web"],
        "action": "allow",
        "permissions": [
            {"methods": ["GET"], "path": {"prefix": "/api"}},
            {"headers": [{"name": "x-env", "exact": "prod"}]},
        ],
    },
    # 3: anyone, authenticated or not, may read /public
    {"sources": ["*"], "action": "allow", "permissions": [{"path": {"prefix": "/public"}}]},
)
DEFAULT_DENY = "no rule matched (default deny)"
# (client, method, path, headers, status, denied reason or audited rule)
MATRIX: list[tuple[str, str, str, list[tuple[str, str]], int, str | int | None]] = [
    ("web", "GET", "/api/x?q=1", [], 200, None),
    ("web", "POST", "/api/x", [], 403, DEFAULT_DENY),
    ("web", "POST", "/api/x", [("X-Env", "prod")], 200, None),
    ("web", "GET", "/admin", [], 403, DEFAULT_DENY),
    (
        "batch",
        "GET",
        "/admin/x",
        [],
        403,
        f"rule 0 (deny) matches {spiffe('batch')} and a permission",
    ),
    ("batch", "POST", "/jobs/1", [], 200, 1),
    ("batch", "GET", "/jobs/1", [], 403, DEFAULT_DENY),
    ("batch", "GET", "/api/x", [("X-Env", "prod")], 403, DEFAULT_DENY),
    ("batch", "GET", "/public/a", [], 200, None),
    ("web", "GET", "/public/a", [], 200, None),
    ("plain", "GET", "/public/a", [], 200, None),
    ("plain", "GET", "/api/x", [], 403, DEFAULT_DENY),
]


@pytest.mark.parametrize("mode", ["strict", "permissive"])
async def test_policy_matrix(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, mode: str
) -> None:
    ca = make_ca()
    policy = compiled_policy(mode, *MATRIX_RULES)
    assert policy["default_action"] == "deny"
    api = await start_api(nursery, tmp_path / "api", ca, app.port, mode, policy)
    api_port = port_of(api, "inbound")
    clients = {
        name: port_of(await start_client(nursery, tmp_path / name, ca, name, api_port), "out")
        for name in ("web", "batch")
    }
    rows = [row for row in MATRIX if row[0] != "plain" or mode == "permissive"]
    with capture_logs() as logs:
        for who, method, path, headers, status, expected in rows:
            port = clients[who] if who != "plain" else api_port
            resp = await call(port, method, path, headers)
            row = (who, method, path, headers)
            assert resp.status == status, row
            if status == 403:
                assert resp.header("x-meshd-error") == "access_denied", row
                assert resp.header("x-meshd-denied-reason") == expected, row
            else:
                assert resp.header("x-meshd-denied-reason") is None, row
    passed = sum(1 for row in rows if row[4] == 200)
    audited = sum(1 for row in rows if isinstance(row[5], int))
    denied = len(rows) - passed
    assert app.requests == passed
    assert await decisions(api) == {"allow": passed - audited, "deny": denied, "audit": audited}
    stats = (await admin_get(api, "/stats")).json()
    assert stats["authz.inbound.deny"] == denied
    lines = [x for x in logs if x["event"] in ("access denied", "access audited")]
    assert len(lines) == denied + audited
    batch_admin = next(x for x in lines if x.get("path") == "/admin/x")
    assert batch_admin["event"] == "access denied"
    assert (batch_admin["source"], batch_admin["rule"]) == (spiffe("batch"), 0)
    assert (batch_admin["destination"], batch_admin["method"]) == ("api", "GET")
    audit = next(x for x in lines if x["event"] == "access audited")
    assert (audit["path"], audit["rule"], audit["source"]) == ("/jobs/1", 1, spiffe("batch"))


@pytest.mark.parametrize(("mode", "web_status"), [("strict", 403), ("permissive", 200)])
async def test_strict_default_denies_with_only_deny_rules(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp, mode: str, web_status: int
) -> None:
    ca = make_ca()
    policy = compiled_policy(mode, {"sources": ["batch"], "action": "deny"})
    assert policy["default_action"] == ("deny" if mode == "strict" else "allow")
    api = await start_api(nursery, tmp_path / "api", ca, app.port, mode, policy)
    for name, status in (("web", web_status), ("batch", 403)):
        sidecar = await start_client(nursery, tmp_path / name, ca, name, port_of(api, "inbound"))
        resp = await call(port_of(sidecar, "out"), "GET", "/anything", [])
        assert resp.status == status, name
    if mode == "strict":
        assert (
            resp.header("x-meshd-denied-reason")
            == f"rule 0 (deny) matches {spiffe('batch')} and any request"
        )


async def test_tcp_inbound_deny_closes_the_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    echo = RawServer(echo_until_eof)
    await nursery.start(echo.run)
    ca = make_ca()
    policy = compiled_policy(
        "strict",
        {"sources": ["web"], "action": "allow"},
        # L7 conditions never match at L4: this rule can't let batch in.
        {"sources": ["batch"], "action": "allow", "permissions": [{"methods": ["GET"]}]},
    )
    api = await start_api(nursery, tmp_path / "api", ca, echo.port, "strict", policy, "tcp")
    api_port = port_of(api, "inbound")
    results: dict[str, bytes] = {}
    with capture_logs() as logs:
        for name in ("web", "batch"):
            client = await start_client(nursery, tmp_path / name, ca, name, api_port, "tcp")
            with trio.fail_after(TIMEOUT):
                stream = await trio.open_tcp_stream("127.0.0.1", port_of(client, "out"))
                async with stream:
                    got = b""
                    with suppress(trio.BrokenResourceError):
                        await stream.send_all(b"hello")
                        await stream.send_eof()
                        while data := await stream.receive_some(65536):
                            got += data
            results[name] = got
    assert results == {"web": b"hello", "batch": b""}
    assert echo.connections == 1
    assert await decisions(api) == {"allow": 1, "deny": 1, "audit": 0}
    [denied] = [x for x in logs if x["event"] == "access denied"]
    assert (denied["source"], denied["rule"], denied["reason"]) == (
        spiffe("batch"),
        None,
        DEFAULT_DENY,
    )
