"""A plain registration of a service never downgrades its sidecar endpoints (real daemon,
real registry, two enrolled in-process sidecars in controld mode, mTLS between them).

``api`` has a sidecar (STRICT or PERMISSIVE inbound in front of the echo app) and, registered
by hand through py-consul, a plain instance of the same name (a canned HTTP server, no
sidecar). ``web`` calls ``api`` through its outbound listener. Under PERMISSIVE both are used:
the sidecar endpoint over mTLS (the app behind it sees web's SPIFFE ID, which the callee's
sidecar sets only for a verified client certificate) and the plain one in plaintext. Under
STRICT the plain one is left out, and ``/v1/status`` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import consul
import httpx
import pytest
import trio
import yaml
from daemon_support import TIMEOUT, running_daemon, tls_url
from helpers import (
    RawServer,
    TestApp,
    app_headers,
    canned,
    closed_port,
    start_sidecar,
)

from controld.daemon import ControlDaemon
from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(120)

WEB_ID = "spiffe://mesh.local/ns/default/svc/web"
PLAIN = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain"


async def join_token(http: httpx.AsyncClient, service: str) -> str:
    resp = await http.post("/v1/tokens/join", json={"service": service, "ttl_s": 600})
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["token"]
    return token


async def bootstrap(
    directory: Path, http: httpx.AsyncClient, daemon: ControlDaemon, service: str, **more: Any
) -> Path:
    directory.mkdir()
    (directory / "join").write_text(await join_token(http, service))
    doc = {
        "service": service,
        "admin": "127.0.0.1:0",
        "snapshot": {"controld": {"url": tls_url(daemon), "retry_max_s": 1}},
        "identity": {
            "state_dir": "identity",
            "join_token_file": "join",
            "controld_url": tls_url(daemon),
        },
        "drain_timeout_s": 1,
        "drain_delay_s": 0,
        **more,
    }
    path = directory / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def registry_token(http: httpx.AsyncClient, service: str) -> str:
    """A registry ACL token with ``service``'s identity (the registry enforces ACLs)."""
    resp = await http.post("/v1/tokens/registry", json={"service": service})
    assert resp.status_code == 200, resp.text
    secret: str = resp.json()["secret_id"]
    return secret


def endpoints(web: Sidecar) -> list[tuple[int, bool]]:
    """``(port, plaintext)`` of web's cluster ``api`` in the snapshot it runs."""
    assert web.runtime is not None
    cluster = web.runtime.snapshot.cluster("api")
    return [] if cluster is None else sorted((e.port, e.plaintext) for e in cluster.endpoints)


async def until(predicate: Any, what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not predicate():
            await trio.sleep(0.05)
    del what


async def call(port: int, count: int) -> tuple[list[dict[str, list[str]]], int]:
    """``count`` requests through web's outbound listener: the headers the app behind api's
    sidecar saw for each that reached it, and how many the plain instance answered."""
    seen: list[dict[str, list[str]]] = []
    plain = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as client:
        for _ in range(count):
            resp = await client.get("/echo")
            assert resp.status_code == 200, resp.text
            if resp.content == b"plain":
                plain += 1
            else:
                seen.append(app_headers(resp.json()))
    return seen, plain


async def test_plain_registration_does_not_downgrade_the_sidecar_endpoint(
    tmp_path: Path, app: TestApp
) -> None:
    async with running_daemon(tmp_path / "data", push=False) as (daemon, http):
        assert daemon.ports is not None
        inbound, outbound = closed_port(), closed_port()
        api_boot = await bootstrap(
            tmp_path / "api",
            http,
            daemon,
            "api",
            app=f"127.0.0.1:{app.port}",
            inbound=f"127.0.0.1:{inbound}",
            registry={
                "address": daemon.ports.registry_url,
                "service_id": "api-1",
                "token": await registry_token(http, "api"),
            },
        )
        web_boot = await bootstrap(
            tmp_path / "web",
            http,
            daemon,
            "web",
            app=f"127.0.0.1:{closed_port()}",
            upstreams=[{"service": "api", "port": outbound}],
        )
        async with trio.open_nursery() as nursery:
            plain = RawServer(canned(PLAIN))
            await nursery.start(plain.run)
            with trio.fail_after(TIMEOUT):
                await start_sidecar(nursery, api_boot)
                web = await start_sidecar(nursery, web_boot)
            await until(lambda: endpoints(web) == [(inbound, False)], "the sidecar endpoint")

            # Someone registers a plain instance under the same name (no sidecar).
            host, port = daemon.ports.registry_url.rsplit("//", 1)[1].rsplit(":", 1)
            acl = daemon.config.registry.acl_management_token if daemon.config.registry else None
            registry = consul.Consul(host=host, port=int(port), token=acl)
            await trio.to_thread.run_sync(
                lambda: registry.agent.service.register(
                    "api", service_id="api-plain", address="127.0.0.1", port=plain.port
                )
            )
            await until(lambda: len(endpoints(web)) == 2, "the mixed endpoints")

            # PERMISSIVE (the default): both used; the sidecar endpoint still over mTLS.
            seen, answered_plain = await call(outbound, 40)
            assert answered_plain > 0 and seen
            for headers in seen:
                assert headers.get("x-meshd-peer-identity") == [WEB_ID]
            assert endpoints(web) == sorted([(inbound, False), (plain.port, True)])
            status = (await http.get("/v1/status")).json()
            assert status["endpoint_mix"]["api"]["mtls"] == 1
            assert status["endpoint_mix"]["api"]["plaintext"] == 1

            # STRICT: the plain instance is left out (never plaintext), and status says why.
            doc = {
                "kind": "ServiceDefaults",
                "metadata": {"name": "api"},
                "spec": {"mtls": "strict"},
            }
            applied = await http.put("/v1/resources", json={"resources": [doc]})
            assert applied.status_code == 200, applied.text
            await until(lambda: endpoints(web) == [(inbound, False)], "the plain one excluded")
            connections = plain.connections
            seen, answered_plain = await call(outbound, 10)
            assert answered_plain == 0 and len(seen) == 10
            assert all(h.get("x-meshd-peer-identity") == [WEB_ID] for h in seen)
            assert plain.connections == connections
            [excluded] = (await http.get("/v1/status")).json()["endpoint_mix"]["api"]["excluded"]
            assert excluded["port"] == plain.port
            assert "STRICT" in excluded["reason"]
            nursery.cancel_scope.cancel()
