"""Auth on every route, probes, metrics, OpenAPI, schema, status, explain, tokens."""

from __future__ import annotations

import json
import logging
from types import MappingProxyType

import httpx
import pytest
import trio
from api_support import serving_api
from structlog.testing import capture_logs

from controld.compiler import explain
from controld.discovery.view import DiscoveryView, ServiceEndpoint
from meshcore.model.resources import json_schemas
from meshcore.model.snapshot import Snapshot
from meshcore.runtime.asgi import AsgiServer

PROTECTED = [
    ("GET", "/v1/resources"),
    ("PUT", "/v1/resources"),
    ("GET", "/v1/resources/Mesh/default"),
    ("DELETE", "/v1/resources/Mesh/default"),
    ("GET", "/v1/revisions"),
    ("POST", "/v1/proxies/web-1"),
    ("GET", "/v1/proxies"),
    ("GET", "/v1/snapshots/web-1"),
    ("POST", "/v1/snapshots/web-1/nack"),
    ("POST", "/v1/explain"),
    ("GET", "/v1/schema"),
    ("GET", "/v1/status"),
    ("POST", "/v1/tokens/sidecar"),
]
ADMIN_ONLY = [
    ("GET", "/v1/resources"),
    ("PUT", "/v1/resources"),
    ("GET", "/v1/resources/Mesh/default"),
    ("DELETE", "/v1/resources/Mesh/default"),
    ("GET", "/v1/revisions"),
    ("GET", "/v1/proxies"),
    ("POST", "/v1/explain"),
    ("GET", "/v1/status"),
    ("POST", "/v1/tokens/sidecar"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("token", [None, "wrong-token", "sidecar.web." + "0" * 64])
async def test_missing_or_bad_token_is_401(method: str, path: str, token: str | None) -> None:
    async with serving_api() as api:
        async with api.as_token(token) as client:
            resp = await client.request(method, path, json={})
        assert resp.status_code == 401, resp.text
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["error"]


@pytest.mark.parametrize(("method", "path"), ADMIN_ONLY)
async def test_sidecar_token_on_admin_routes_is_403(method: str, path: str) -> None:
    async with serving_api() as api:
        async with api.as_token(await api.sidecar_token("web")) as client:
            resp = await client.request(method, path, json={"resources": [], "service": "web"})
        assert resp.status_code == 403, resp.text
        assert "sidecar:web" in resp.json()["error"]


async def test_refused_mutations_are_audited() -> None:
    async with serving_api() as api:
        with capture_logs() as logs:
            async with api.as_token(None) as client:
                await client.put("/v1/resources", json={"resources": []})
            async with api.as_token(await api.sidecar_token("web")) as client:
                await client.delete("/v1/resources/Mesh/default")
            await api.client.get("/v1/resources")  # reads aren't audited
        events = [e for e in logs if e["event"] == "audit"]
        assert [(e["principal"], e["method"], e["outcome"]) for e in events] == [
            ("anonymous", "PUT", "unauthenticated"),
            ("sidecar:web", "DELETE", "forbidden"),
        ]


async def test_probes_and_metrics_need_no_token() -> None:
    async with serving_api() as api, api.as_token(None) as client:
        resp = await client.get("/live")
        assert (resp.status_code, resp.json()) == (200, {"live": True})
        resp = await client.get("/ready")
        assert (resp.status_code, resp.json()) == (200, {"ready": True})
        api.ready[0] = False
        resp = await client.get("/ready")
        assert (resp.status_code, resp.json()) == (503, {"ready": False})
        resp = await client.get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        assert "controld_test_events_total 1.0" in resp.text
        assert "controld_connected_sidecars" in resp.text


async def test_openapi_lists_the_routes_without_token() -> None:
    async with serving_api() as api:
        async with api.as_token(None) as client:
            resp = await client.get("/openapi.json")
        assert resp.status_code == 200
        doc = resp.json()
        paths = doc["paths"]
        for path, method in [
            ("/v1/resources", "put"),
            ("/v1/resources", "get"),
            ("/v1/resources/{kind}/{name}", "get"),
            ("/v1/resources/{kind}/{name}", "delete"),
            ("/v1/revisions", "get"),
            ("/v1/proxies/{proxy_id}", "post"),
            ("/v1/proxies", "get"),
            ("/v1/snapshots/{proxy_id}", "get"),
            ("/v1/snapshots/{proxy_id}/nack", "post"),
            ("/v1/explain", "post"),
            ("/v1/schema", "get"),
            ("/v1/status", "get"),
            ("/v1/tokens/sidecar", "post"),
            ("/metrics", "get"),
            ("/ready", "get"),
            ("/live", "get"),
        ]:
            assert method in paths[path], (method, path)
        poll = paths["/v1/snapshots/{proxy_id}"]["get"]
        assert {p["name"] for p in poll["parameters"]} == {
            "proxy_id",
            "version",
            "hash",
            "wait",
            "x-meshd-features",
        }
        assert {"200", "304", "404"} <= set(poll["responses"])
        assert "HTTPBearer" in doc["components"]["securitySchemes"]
        assert poll["security"] == [{"HTTPBearer": []}]
        assert "security" not in paths["/live"]["get"]


async def test_no_interactive_docs() -> None:
    async with serving_api() as api:
        for path in ("/docs", "/redoc"):
            resp = await api.client.get(path)
            assert resp.status_code == 404
            assert resp.json() == {"error": "not found", "problems": []}


async def test_unknown_path_and_method_are_json() -> None:
    async with serving_api() as api, api.as_token(None) as client:
        resp = await client.get("/v2/nothing")
        assert (resp.status_code, resp.json()["error"]) == (404, "not found")
        resp = await client.post("/live")
        assert (resp.status_code, resp.json()["error"]) == (405, "method not allowed")
        resp = await client.put("/v1/snapshots/web-1")
        assert (resp.status_code, resp.json()["error"]) == (405, "method not allowed")


async def test_schema() -> None:
    async with serving_api() as api:
        resp = await api.client.get("/v1/schema")
        assert resp.status_code == 200
        assert resp.json() == json_schemas()
        async with api.as_token(await api.sidecar_token("web")) as client:
            assert (await client.get("/v1/schema")).status_code == 200


async def test_status() -> None:
    async with serving_api() as api:
        resp = await api.client.get("/v1/status")
        assert resp.status_code == 200
        body = resp.json()
        assert body["push"]["proxies"] == 0
        assert body["store"] == {"revision": 0}


async def test_explain_passes_through() -> None:
    async with serving_api() as api:
        request = {"source": "web", "destination": "api", "method": "POST", "path": "/v2/x"}
        resp = await api.client.post("/v1/explain", json={**request, "headers": {"x-user": "a"}})
        assert resp.status_code == 200, resp.text
        expected = explain(
            api.plane.view(),
            api.plane.resources(),
            source="web",
            destination="api",
            method="POST",
            path="/v2/x",
            headers={"x-user": "a"},
        ).model_dump(mode="json")
        # No sidecar registered: nothing to say about enforcement. The bytes are those of the
        # compiler's fields in order, then ``sidecars`` (what meshctl -o json prints back).
        doc = {**expected, "sidecars": []}
        assert resp.content == json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


async def test_explain_rejects_bad_input() -> None:
    async with serving_api() as api:
        resp = await api.client.post(
            "/v1/explain", json={"source": "web", "destination": "Not A Svc"}
        )
        assert resp.status_code == 422
        assert resp.json()["problems"][0]["path"] == "body.destination"
        resp = await api.client.post("/v1/explain", json={"source": "web"})
        assert resp.status_code == 422
        resp = await api.client.post(
            "/v1/explain", json={"source": "web", "destination": "api", "path": "/a%zz"}
        )
        assert resp.status_code == 422
        assert "malformed percent-encoding" in resp.text


async def test_mint_sidecar_token() -> None:
    async with serving_api() as api:
        with capture_logs() as logs:
            resp = await api.client.post("/v1/tokens/sidecar", json={"service": "web"})
        assert resp.status_code == 200
        token = resp.json()["token"]
        assert (await api.auth.verify(token)).name == "sidecar:web"
        [event] = [e for e in logs if e["event"] == "audit"]
        assert event["principal"] == "admin"
        assert event["path"] == "/v1/tokens/sidecar"
        assert event["outcome"] == "minted"
        assert event["service"] == "web"
        assert "token" not in event
        resp = await api.client.post("/v1/tokens/sidecar", json={"service": "Bad Name"})
        assert resp.status_code == 422


async def test_served_by_hypercorn_on_a_real_socket() -> None:
    async with serving_api() as api, trio.open_nursery() as nursery:
        shutdown = trio.Event()
        server = AsgiServer(
            api.app, "127.0.0.1", 0, error_logger=logging.getLogger("test"), shutdown=shutdown
        )
        port = await nursery.start(server.run)
        headers = {"Authorization": f"Bearer {await api.sidecar_token('web')}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers
        ) as client:
            assert (await client.get("/live")).json() == {"live": True}
            resp = await client.post(
                "/v1/proxies/web-1", json={"proxy_id": "web-1", "service": "web"}
            )
            assert resp.status_code == 200
            api.plane.hub.publish({"web-1": (Snapshot(version=0), "h1")}, revision=1, changed_at=0)
            resp = await client.get("/v1/snapshots/web-1", params={"wait": 5})
            assert resp.status_code == 200
            version = resp.json()["version"]
            resp = await client.get(
                "/v1/snapshots/web-1", params={"version": version, "hash": "h1", "wait": 0}
            )
            assert resp.status_code == 304
        shutdown.set()


async def test_internal_errors_are_json_500() -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("boom")

    async with serving_api() as api:
        api.plane.status = broken  # type: ignore[method-assign]
        transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://controld", headers=api.client.headers
        ) as client:
            resp = await client.get("/v1/status")
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal error", "problems": []}


async def test_status_shows_services_with_plain_endpoints() -> None:
    sidecar = ServiceEndpoint("10.0.0.1", 21000, "api-1", "n1", sidecar=True)
    plain = ServiceEndpoint("10.0.0.9", 8080, "api-2", "n2", sidecar=False)
    async with serving_api() as api:
        api.plane.discovery = DiscoveryView(
            services=MappingProxyType({"api": (sidecar, plain), "web": (sidecar,)}), version=1
        )
        doc = (await api.client.get("/v1/status")).json()
        # Only the mixed service; under the default (PERMISSIVE) the plain one is plaintext.
        assert doc["endpoint_mix"] == {
            "api": {
                "mtls_mode": "permissive",
                "sidecar": 1,
                "plain": 1,
                "mtls": 1,
                "plaintext": 1,
                "excluded": [],
            }
        }
