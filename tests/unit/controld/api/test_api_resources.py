"""``/v1/resources`` and ``/v1/revisions``: validation, dry run, CRUD, audit."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import trio
import trio.testing
from api_support import serving_api
from structlog.testing import capture_logs

WEB_DEFAULTS: dict[str, Any] = {
    "kind": "ServiceDefaults",
    "metadata": {"name": "web"},
    "spec": {"protocol": "http"},
}
API_RESOLVER: dict[str, Any] = {
    "kind": "ServiceResolver",
    "metadata": {"name": "api"},
    "spec": {"subsets": {"v1": {"tags": ["v1"]}, "v2": {"tags": ["v2"]}}},
}


def route(subset: str = "v2", weight: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "meshd.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "api-split"},
        "spec": {
            "service": "api",
            "rules": [
                {
                    "match": {"path": {"prefix": "/v2"}},
                    "backends": [{"subset": subset, "weight": weight}],
                }
            ],
        },
    }


def audits(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "audit"]


async def test_apply_stores_one_revision_and_audits() -> None:
    async with serving_api() as api:
        with capture_logs() as logs:
            resp = await api.client.put(
                "/v1/resources", json={"resources": [WEB_DEFAULTS, API_RESOLVER, route()]}
            )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "revision": 1,
            "dry_run": False,
            "warnings": [],
            "changes": [
                {"kind": "ServiceDefaults", "name": "web", "action": "created"},
                {"kind": "ServiceResolver", "name": "api", "action": "created"},
                {"kind": "HTTPRoute", "name": "api-split", "action": "created"},
            ],
        }
        assert len(api.plane.store.current) == 3
        [event] = audits(logs)
        assert event["principal"] == "admin"
        assert event["method"] == "PUT"
        assert event["path"] == "/v1/resources"
        assert event["outcome"] == "applied"
        assert event["revision"] == 1
        assert api.plane.store.records[0].author == "admin"


async def test_reapplying_changes_nothing() -> None:
    async with serving_api() as api:
        body = {"resources": [WEB_DEFAULTS]}
        assert (await api.client.put("/v1/resources", json=body)).status_code == 200
        with capture_logs() as logs:
            resp = await api.client.put("/v1/resources", json=body)
        assert resp.json()["revision"] == 1
        assert resp.json()["changes"][0]["action"] == "unchanged"
        assert audits(logs)[0]["outcome"] == "unchanged"


async def test_document_errors_name_document_kind_name_and_field_path() -> None:
    async with serving_api() as api:
        bad_name = {"kind": "Mesh", "metadata": {"name": "Not_Valid"}, "spec": {}}
        with capture_logs() as logs:
            resp = await api.client.put(
                "/v1/resources",
                json={"resources": [WEB_DEFAULTS, route(weight=-1), {"kind": "Nope"}, bad_name]},
            )
        assert resp.status_code == 422
        body = resp.json()
        assert body["error"] == "invalid resources"
        problems = body["problems"]
        assert {
            "document": 1,
            "kind": "HTTPRoute",
            "name": "api-split",
            "path": "spec.rules.0.backends.0.weight",
            "message": "Input should be greater than or equal to 0",
        } in problems
        nope = next(p for p in problems if p["document"] == 2)
        assert nope["kind"] == "Nope"
        assert nope["name"] is None
        assert nope["path"] == "kind"
        assert any(p["document"] == 3 and p["path"] == "metadata.name" for p in problems)
        assert len(api.plane.store.current) == 0
        assert audits(logs)[0]["outcome"] == "invalid"


async def test_duplicate_documents_are_refused() -> None:
    async with serving_api() as api:
        resp = await api.client.put(
            "/v1/resources", json={"resources": [WEB_DEFAULTS, WEB_DEFAULTS]}
        )
        assert resp.status_code == 422
        [problem] = resp.json()["problems"]
        assert problem["document"] == 1
        assert "duplicate of document 0" in problem["message"]


async def test_cross_resource_problems_refuse_the_whole_apply() -> None:
    async with serving_api() as api:
        resp = await api.client.put(
            "/v1/resources", json={"resources": [WEB_DEFAULTS, route(subset="v3"), API_RESOLVER]}
        )
        assert resp.status_code == 422, resp.text
        problems = resp.json()["problems"]
        assert problems
        assert all(p["kind"] == "HTTPRoute" and p["name"] == "api-split" for p in problems)
        assert problems[0]["document"] == 1
        assert "v3" in problems[0]["message"]
        assert len(api.plane.store.current) == 0


async def test_cross_check_sees_already_stored_resources() -> None:
    async with serving_api() as api:
        await api.client.put("/v1/resources", json={"resources": [API_RESOLVER]})
        resp = await api.client.put("/v1/resources", json={"resources": [route(subset="v1")]})
        assert resp.status_code == 200, resp.text


async def test_dry_run_reports_without_storing() -> None:
    async with serving_api() as api:
        await api.client.put("/v1/resources", json={"resources": [WEB_DEFAULTS]})
        changed = dict(WEB_DEFAULTS, spec={"protocol": "tcp"})
        with capture_logs() as logs:
            resp = await api.client.put(
                "/v1/resources", json={"resources": [changed, API_RESOLVER], "dry_run": True}
            )
        assert resp.status_code == 200
        assert resp.json() == {
            "revision": 1,
            "dry_run": True,
            "warnings": [],
            "changes": [
                {"kind": "ServiceDefaults", "name": "web", "action": "updated"},
                {"kind": "ServiceResolver", "name": "api", "action": "created"},
            ],
        }
        assert api.plane.store.current.revision == 1
        assert len(api.plane.store.current) == 1
        assert audits(logs)[0]["outcome"] == "dry_run"


async def test_dry_run_still_validates() -> None:
    async with serving_api() as api:
        resp = await api.client.put(
            "/v1/resources", json={"resources": [route(subset="v9")], "dry_run": True}
        )
        assert resp.status_code == 422


async def test_malformed_body_is_a_json_422() -> None:
    async with serving_api() as api:
        resp = await api.client.put("/v1/resources", json={"resource": []})
        assert resp.status_code == 422
        body = resp.json()
        assert body["error"] == "invalid request"
        assert {p["path"] for p in body["problems"]} >= {"body.resources"}
        resp = await api.client.put(
            "/v1/resources", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert resp.status_code == 422


async def test_list_and_get() -> None:
    async with serving_api() as api:
        await api.client.put("/v1/resources", json={"resources": [WEB_DEFAULTS, API_RESOLVER]})
        resp = await api.client.get("/v1/resources")
        assert resp.status_code == 200
        body = resp.json()
        assert body["revision"] == 1
        assert [(r["kind"], r["metadata"]["name"]) for r in body["resources"]] == [
            ("ServiceDefaults", "web"),
            ("ServiceResolver", "api"),
        ]
        assert body["resources"][0]["apiVersion"] == "meshd.io/v1"
        resp = await api.client.get("/v1/resources", params={"kind": "ServiceResolver"})
        assert [r["metadata"]["name"] for r in resp.json()["resources"]] == ["api"]
        resp = await api.client.get("/v1/resources/ServiceDefaults/web")
        assert resp.status_code == 200
        doc = resp.json()
        assert doc["spec"]["protocol"] == "http"
        assert doc["meta"] == {"revision": 1, "author": "admin", "time": "2026-11-22T05:30:40.000Z"}


async def test_get_missing_and_unknown_kind() -> None:
    async with serving_api() as api:
        resp = await api.client.get("/v1/resources/ServiceDefaults/nope")
        assert resp.status_code == 404
        assert resp.json()["error"] == "ServiceDefaults/nope not found"
        resp = await api.client.get("/v1/resources/Gadget/x")
        assert resp.status_code == 404
        assert "unknown kind" in resp.json()["error"]
        assert (await api.client.get("/v1/resources", params={"kind": "Gadget"})).status_code == 404


async def test_delete() -> None:
    async with serving_api() as api:
        await api.client.put("/v1/resources", json={"resources": [WEB_DEFAULTS]})
        with capture_logs() as logs:
            resp = await api.client.delete("/v1/resources/ServiceDefaults/web")
        assert resp.status_code == 200
        assert resp.json() == {
            "revision": 2,
            "dry_run": False,
            "warnings": [],
            "changes": [{"kind": "ServiceDefaults", "name": "web", "action": "deleted"}],
        }
        assert len(api.plane.store.current) == 0
        [event] = audits(logs)
        assert (event["method"], event["outcome"], event["revision"]) == ("DELETE", "deleted", 2)
        with capture_logs() as logs:
            resp = await api.client.delete("/v1/resources/ServiceDefaults/web")
        assert resp.status_code == 404
        assert audits(logs)[0]["outcome"] == "not_found"


async def test_delete_that_breaks_other_resources_is_refused() -> None:
    async with serving_api() as api:
        resp = await api.client.put("/v1/resources", json={"resources": [API_RESOLVER, route()]})
        assert resp.status_code == 200
        resp = await api.client.delete("/v1/resources/ServiceResolver/api")
        assert resp.status_code == 422
        assert resp.json()["problems"][0]["kind"] == "HTTPRoute"
        assert len(api.plane.store.current) == 2


async def test_revisions() -> None:
    async with serving_api() as api:
        await api.client.put("/v1/resources", json={"resources": [WEB_DEFAULTS]})
        await api.client.delete("/v1/resources/ServiceDefaults/web")
        resp = await api.client.get("/v1/revisions", params={"limit": 1})
        assert resp.status_code == 200
        [record] = resp.json()["revisions"]
        assert record["revision"] == 2
        assert record["action"] == "delete"
        assert record["author"] == "admin"
        assert (await api.client.get("/v1/revisions", params={"limit": 0})).status_code == 422


async def test_store_unavailable_is_503() -> None:
    async with serving_api() as api:
        api.plane.store.unavailable = True
        with capture_logs() as logs:
            resp = await api.client.put("/v1/resources", json={"resources": [WEB_DEFAULTS]})
        assert resp.status_code == 503
        assert resp.json()["error"].startswith("store unavailable")
        assert audits(logs)[0]["outcome"] == "error"
        assert (await api.client.get("/v1/revisions")).status_code == 503


async def test_writes_wait_for_the_watch_to_show_them() -> None:
    async with serving_api() as api, trio.open_nursery() as nursery:
        store = api.plane.store
        store.frozen = store.current
        answers: list[int] = []

        async def put() -> None:
            resp = await api.client.put("/v1/resources", json={"resources": [WEB_DEFAULTS]})
            answers.append(resp.json()["revision"])

        nursery.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # written, but the followed set doesn't show it yet
        store.catch_up()
        await trio.testing.wait_all_tasks_blocked()
        assert answers == [1]
        resp = await api.client.get("/v1/resources")
        assert resp.json()["revision"] == 1


async def test_a_lagging_watch_delays_writes_only_briefly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving_api() as api:
        api.plane.store.frozen = api.plane.store.current
        resp = await api.client.put("/v1/resources", json={"resources": [WEB_DEFAULTS]})
        assert resp.status_code == 200
        assert trio.current_time() >= 2.0
        # The store, not the lagging followed set, decides whether a resource exists.
        resp = await api.client.delete("/v1/resources/ServiceDefaults/web")
        assert resp.status_code == 200
        assert resp.json()["revision"] == 2
