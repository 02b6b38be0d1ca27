"""Sidecar API tokens against a real daemon: expiry, single revocation, one service's token
can't reach another's snapshot, enrollment tokens bound to the leaf and replaced on renewal,
client certificates on the TLS listener, and records forged in the registry refused."""

from __future__ import annotations

from typing import Any

import consul
import httpx
import pytest
import trio
from cryptography import x509
from daemon_support import TIMEOUT, running_daemon, tls_url
from test_enroll import WEB, Sidecar, bundle, join_token, tls_context

pytestmark = pytest.mark.timeout(120)


async def mint(http: httpx.AsyncClient, service: str, ttl_s: int = 3600) -> dict[str, Any]:
    resp = await http.post("/v1/tokens/sidecar", json={"service": service, "ttl_s": ttl_s})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(anon: httpx.AsyncClient, token: str, proxy: str, service: str) -> int:
    body = {"proxy_id": proxy, "service": service}
    resp = await anon.post(f"/v1/proxies/{proxy}", json=body, headers=bearer(token))
    return resp.status_code


async def test_expiry_and_single_revocation(tmp_path: Any) -> None:
    async with (
        running_daemon(tmp_path / "data") as (_daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        first, second = await mint(http, "web"), await mint(http, "web")
        short = await mint(http, "web", ttl_s=1)
        assert await register(anon, first["token"], "web-1", "web") == 200
        # Expired: refused, saying so (bounded wait for the clock to pass the expiry).
        with trio.fail_after(TIMEOUT):
            while True:
                resp = await anon.post(
                    "/v1/proxies/web-1",
                    json={"proxy_id": "web-1", "service": "web"},
                    headers=bearer(short["token"]),
                )
                if resp.status_code != 200:
                    break
                await trio.sleep(0.2)
        assert resp.status_code == 401
        assert resp.json()["error"] == "sidecar token expired"
        # Revoking one token refuses it; the other token of the same service keeps working.
        assert (await http.delete(f"/v1/tokens/sidecar/{first['id']}")).status_code == 200
        assert await register(anon, first["token"], "web-1", "web") == 401
        assert await register(anon, second["token"], "web-1", "web") == 200
        listed = (await http.get("/v1/tokens/sidecar")).json()["tokens"]
        assert [t["id"] for t in listed] == [second["id"]]
        # An old-format token is refused with a clear message.
        resp = await anon.get("/v1/schema", headers=bearer("sidecar.web." + "0" * 64))
        assert resp.status_code == 401
        assert "old-format sidecar token" in resp.json()["error"]


async def test_token_of_one_service_cannot_fetch_anothers_snapshot(tmp_path: Any) -> None:
    async with (
        running_daemon(tmp_path / "data") as (_daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        web, api = (await mint(http, "web"))["token"], (await mint(http, "api"))["token"]
        assert await register(anon, web, "web-1", "web") == 200
        first = await anon.get("/v1/snapshots/web-1", params={"wait": 10}, headers=bearer(web))
        assert first.status_code == 200, first.text
        stolen = await anon.get("/v1/snapshots/web-1", params={"wait": 0}, headers=bearer(api))
        assert stolen.status_code == 403
        assert "sidecar:api may not act for service 'web'" in stolen.json()["error"]
        nack = {"version": 1, "hash": "h", "error": "x"}
        resp = await anon.post("/v1/snapshots/web-1/nack", json=nack, headers=bearer(api))
        assert resp.status_code == 403
        # Nor take over its proxy id, nor register as the other service.
        assert await register(anon, api, "web-1", "api") == 403
        assert await register(anon, api, "web-2", "web") == 403


async def test_enrollment_token_is_bound_and_replaced_on_renewal(tmp_path: Any) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        roots = (await bundle(anon))["roots"]
        web = Sidecar(anon, tls_url(daemon))
        assert (await web.enroll(await join_token(http))).status_code == 200
        enrolled = web.answer["sidecar_token"]
        [record] = (await http.get("/v1/tokens/sidecar")).json()["tokens"]
        assert record["identity"] == WEB
        assert record["id"] == enrolled.split(".")[1]
        # It expires with the leaf.
        assert record["expires"] == web.answer["not_after"]
        assert await register(anon, enrolled, "web-1", "web") == 200

        # On the TLS listener the client certificate is the credential ...
        assert web.key is not None
        ctx = tls_context(roots, web.answer["certificate"], web.key)
        api = (await mint(http, "api"))["token"]
        async with httpx.AsyncClient(base_url=tls_url(daemon), verify=ctx, timeout=TIMEOUT) as mtls:
            polled = await mtls.get("/v1/snapshots/web-1", params={"wait": 10})
            assert polled.status_code == 200, polled.text
            # ... and a bearer token of another service than the certificate's is refused.
            resp = await mtls.get("/v1/snapshots/web-1", params={"wait": 0}, headers=bearer(api))
            assert resp.status_code == 403
            assert "does not belong" in resp.json()["error"]
            resp = await mtls.post(
                "/v1/proxies/api-1",
                json={"proxy_id": "api-1", "service": "api"},
                headers=bearer(api),
            )
            assert resp.status_code == 403

        # Renewal hands out a fresh token bound to the new leaf; the old one is revoked.
        assert (await web.renew(roots)).status_code == 200
        renewed = web.answer["sidecar_token"]
        assert renewed != enrolled
        assert await register(anon, enrolled, "web-1", "web") == 401
        assert await register(anon, renewed, "web-1", "web") == 200
        listed = (await http.get("/v1/tokens/sidecar")).json()["tokens"]
        assert [t["id"] for t in listed if t["identity"] == WEB] == [renewed.split(".")[1]]


async def test_records_forged_in_the_registry_are_refused(tmp_path: Any) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        good = (await mint(http, "web"))["token"]
        assert daemon.ports is not None
        host, port = daemon.ports.registry_url.rsplit("//", 1)[1].rsplit(":", 1)
        acl = daemon.config.registry.acl_management_token if daemon.config.registry else None
        registry = consul.Consul(host=host, port=int(port), token=acl)
        # A registry writer copies the good record to a made-up id and writes a deep value.
        _, entry = await trio.to_thread.run_sync(
            lambda: registry.kv.get(f"meshd/sidecar-tokens/{good.split('.')[1]}")
        )
        forged_id = "f" * 32
        await trio.to_thread.run_sync(
            lambda: registry.kv.put(f"meshd/sidecar-tokens/{forged_id}", entry["Value"])
        )
        await trio.to_thread.run_sync(
            lambda: registry.kv.put("meshd/sidecar-tokens/" + "e" * 32, "[" * 50_000)
        )
        forged = f"sidecar.{forged_id}.{good.split('.')[2]}"
        assert await register(anon, forged, "web-1", "web") == 401
        listed = await http.get("/v1/tokens/sidecar")
        assert listed.status_code == 200
        assert [t["id"] for t in listed.json()["tokens"]] == [good.split(".")[1]]
        assert await register(anon, good, "web-1", "web") == 200
        metrics = (await anon.get("/metrics")).text
        assert "controld_sidecar_token_invalid_records_total 3.0" in metrics


async def test_revoking_the_instance_refuses_its_bound_token(tmp_path: Any) -> None:
    async with (
        running_daemon(tmp_path / "data") as (daemon, http),
        httpx.AsyncClient(base_url=str(http.base_url), timeout=TIMEOUT) as anon,
    ):
        web = Sidecar(anon, tls_url(daemon))
        assert (await web.enroll(await join_token(http))).status_code == 200
        bound = web.answer["sidecar_token"]
        operator = (await mint(http, "web"))["token"]
        assert await register(anon, bound, "web-1", "web") == 200
        serial = (
            f"{x509.load_pem_x509_certificate(web.answer['certificate'].encode()).serial_number:x}"
        )
        resp = await http.post("/v1/revocations", json={"serial": serial})
        assert resp.status_code == 200, resp.text
        resp = await anon.post(
            "/v1/proxies/web-1", json={"proxy_id": "web-1", "service": "web"}, headers=bearer(bound)
        )
        assert resp.status_code == 401
        assert "revoked certificate" in resp.json()["error"]
        assert await register(anon, operator, "web-1", "web") == 200
