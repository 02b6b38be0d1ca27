"""``PUT /v1/resources`` refuses a RateLimit ``match`` on a tcp destination, naming the field,
whether the RateLimit or the protocol change comes second."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import serving_api

pytestmark = pytest.mark.timeout(60)

DB_TCP: dict[str, Any] = {
    "kind": "ServiceDefaults",
    "metadata": {"name": "db"},
    "spec": {"protocol": "tcp"},
}


def limit(match: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"destination": "db", "requests_per_second": 10, "burst": 5}
    if match is not None:
        spec["match"] = match
    return {"kind": "RateLimit", "metadata": {"name": "db-limit"}, "spec": spec}


async def test_match_on_a_tcp_destination_is_refused_at_apply() -> None:
    async with serving_api() as api:
        resp = await api.client.put(
            "/v1/resources", json={"resources": [DB_TCP, limit({"methods": ["POST"]})]}
        )
        assert resp.status_code == 422, resp.text
        (problem,) = resp.json()["problems"]
        assert (problem["kind"], problem["name"], problem["path"]) == (
            "RateLimit",
            "db-limit",
            "spec.match",
        )
        assert problem["message"] == "tcp services are limited per connection; match is for http"
        assert len(api.plane.store.current) == 0
        # Without a match, the connection-rate limit is accepted.
        resp = await api.client.put("/v1/resources", json={"resources": [DB_TCP, limit(None)]})
        assert resp.status_code == 200, resp.text


async def test_switching_a_limited_service_to_tcp_is_refused() -> None:
    async with serving_api() as api:
        resp = await api.client.put(
            "/v1/resources", json={"resources": [limit({"path": {"prefix": "/"}})]}
        )
        assert resp.status_code == 200, resp.text
        resp = await api.client.put("/v1/resources", json={"resources": [DB_TCP]})
        assert resp.status_code == 422, resp.text
        (problem,) = resp.json()["problems"]
        assert (problem["kind"], problem["path"], problem["document"]) == (
            "RateLimit",
            "spec.match",
            None,
        )
