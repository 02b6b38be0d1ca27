"""``/v1/tokens/sidecar``: mint with a TTL, list without secrets, revoke one by one."""

from __future__ import annotations

import pytest
from api_support import serving_api
from structlog.testing import capture_logs

pytestmark = pytest.mark.timeout(30)


async def test_mint_list_and_revoke() -> None:
    async with serving_api() as api:
        answers = []
        for _ in range(2):
            resp = await api.client.post(
                "/v1/tokens/sidecar", json={"service": "web", "ttl_s": 3600}
            )
            assert resp.status_code == 200
            answers.append(resp.json())
        first, second = answers
        assert first["token"].startswith(f"sidecar.{first['id']}.")
        listed = (await api.client.get("/v1/tokens/sidecar")).json()["tokens"]
        assert sorted(t["id"] for t in listed) == sorted([first["id"], second["id"]])
        assert all(t["service"] == "web" and t["identity"] is None for t in listed)
        assert first["token"].rpartition(".")[2] not in str(listed)
        with capture_logs() as logs:
            resp = await api.client.delete(f"/v1/tokens/sidecar/{first['id']}")
        assert resp.status_code == 200
        [event] = [e for e in logs if e["event"] == "audit"]
        assert (event["outcome"], event["token_id"]) == ("revoked", first["id"])
        proxy = {"proxy_id": "web-1", "service": "web"}
        async with api.as_token(first["token"]) as client:
            assert (await client.post("/v1/proxies/web-1", json=proxy)).status_code == 401
        async with api.as_token(second["token"]) as client:
            assert (await client.post("/v1/proxies/web-1", json=proxy)).status_code == 200
        resp = await api.client.delete(f"/v1/tokens/sidecar/{first['id']}")
        assert resp.status_code == 404


@pytest.mark.parametrize("body", [{"service": "web", "ttl_s": 0}, {"service": "Web"}])
async def test_mint_refuses_bad_bodies(body: dict[str, object]) -> None:
    async with serving_api() as api:
        assert (await api.client.post("/v1/tokens/sidecar", json=body)).status_code == 422


async def test_sidecar_tokens_may_not_manage_tokens() -> None:
    async with serving_api() as api, api.as_token(await api.sidecar_token("web")) as client:
        assert (await client.get("/v1/tokens/sidecar")).status_code == 403
        resp = await client.delete("/v1/tokens/sidecar/" + "0" * 32)
        assert resp.status_code == 403
