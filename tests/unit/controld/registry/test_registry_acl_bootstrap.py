"""ACLs on without a management token: bootstrap once, as Consul's ``acl bootstrap``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from controld.registry import RegistryConfig, RegistryServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def api(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = RegistryConfig(data_dir=tmp_path, port=0, node_name="node1", acl_enabled=True)
    server = RegistryServer(config)
    port = await nursery.start(server.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.shutdown_nowait()


async def test_bootstrap_once_then_default_deny(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/kv/k", content=b"v")).status_code == 403
    bad = await api.put("/v1/acl/bootstrap", json={"BootstrapSecret": "not-a-uuid"})
    assert bad.status_code == 400
    made = await api.put("/v1/acl/bootstrap")
    assert made.status_code == 200, made.text
    token = made.json()
    assert [p["Name"] for p in token["Policies"]] == ["global-management"]
    again = await api.put("/v1/acl/bootstrap")
    assert again.status_code == 403
    assert "no longer allowed" in again.text
    headers = {"X-Consul-Token": token["SecretID"]}
    assert (await api.put("/v1/kv/k", content=b"v", headers=headers)).json() is True
    tokens = await api.get("/v1/acl/tokens", headers=headers)
    assert {t["Description"] for t in tokens.json()} == {
        "Anonymous Token",
        "Bootstrap Token (Global Management)",
    }
    assert (
        await api.delete(f"/v1/acl/token/{token['AccessorID']}", headers=headers)
    ).status_code == 400
