"""Active health checks of sidecar endpoints go over the cluster's mTLS, like requests.

Outbound sidecar ``web`` (cluster ``api`` with ``tls`` and ``health_check``) -> inbound
sidecar ``api`` (STRICT) -> app. Certificates from a test CA (bootstrap ``identity.static``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from helpers import (
    TIMEOUT,
    TestApp,
    closed_port,
    port_of,
    start_sidecar,
    write_sidecar_config,
)
from mtls_ca import TRUST_DOMAIN, MiniCA, make_ca, spiffe

from meshd.sidecar import Sidecar

pytestmark = pytest.mark.timeout(60)

IDENTITY = {
    "state_dir": "state",
    "static": {"cert_file": "cert.pem", "key_file": "key.pem", "bundle_file": "bundle.pem"},
}
CHECK = {"path": "/health", "interval_s": 0.05, "timeout_s": 2, "unhealthy_threshold": 1}


def _identity(directory: Path, ca: MiniCA, service: str) -> None:
    leaf = ca.service(service)
    (directory / "cert.pem").write_bytes(leaf.cert_pem)
    (directory / "key.pem").write_bytes(leaf.key_pem)
    (directory / "bundle.pem").write_bytes(ca.root_pem)
    path = directory / "snapshot.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(mtls="strict", identity={"service": service, "trust_domain": TRUST_DOMAIN})
    path.write_text(yaml.safe_dump(doc))


async def _start(
    nursery: trio.Nursery,
    directory: Path,
    ca: MiniCA,
    service: str,
    app_port: int,
    listener: dict[str, Any],
    clusters: list[dict[str, Any]] | None = None,
) -> Sidecar:
    path = write_sidecar_config(
        directory,
        service=service,
        app_port=app_port,
        listeners=[{"address": "127.0.0.1:0", **listener}],
        clusters=clusters,
        extra={"identity": IDENTITY},
    )
    _identity(directory, ca, service)
    return await start_sidecar(nursery, path)


async def _web(
    nursery: trio.Nursery, directory: Path, ca: MiniCA, api_port: int, expect: str
) -> Sidecar:
    cluster = {
        "name": "api",
        "service": "api",
        "endpoints": [{"host": "127.0.0.1", "port": api_port}],
        "tls": {"spiffe_id": spiffe(expect)},
        "health_check": CHECK,
    }
    listener = {"name": "out", "direction": "outbound", "cluster": "api"}
    return await _start(nursery, directory, ca, "web", closed_port(), listener, [cluster])


async def _until_checked(web: Sidecar, ok: bool) -> None:
    state = web.cluster_states.get("api")
    with trio.fail_after(TIMEOUT):
        while True:
            health = next(iter(state.health.values()))
            if health.checks and (health.last_result == "success") == ok:
                return
            await trio.sleep(0.02)


async def test_health_check_over_mtls_reaches_the_app_as_the_caller(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    inbound = {"name": "inbound", "direction": "inbound"}
    api = await _start(nursery, tmp_path / "api", ca, "api", app.port, inbound)
    web = await _web(nursery, tmp_path / "web", ca, port_of(api, "inbound"), "api")
    await _until_checked(web, ok=True)
    # The check went through api's STRICT listener: mTLS with web's certificate.
    assert "/health" in app.paths
    assert not web.cluster_states.get("api").unavailable


async def test_health_check_fails_on_the_wrong_peer_identity(
    nursery: trio.Nursery, tmp_path: Path, app: TestApp
) -> None:
    ca = make_ca()
    inbound = {"name": "inbound", "direction": "inbound"}
    api = await _start(nursery, tmp_path / "api", ca, "api", app.port, inbound)
    web = await _web(nursery, tmp_path / "web", ca, port_of(api, "inbound"), "db")
    await _until_checked(web, ok=False)
    assert web.cluster_states.get("api").unavailable == {("127.0.0.1", port_of(api, "inbound"))}
    assert "/health" not in app.paths
