"""HttpSource: controld's API through httpx (an in-process transport), errors mapped."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from meshcore.api.proxies import ProxyState
from meshcore.api.telemetry import TapFilter, TapRequest
from tui.dashboard.http import HttpSource
from tui.dashboard.source import SourceRefused, SourceUnreachable

pytestmark = pytest.mark.timeout(30)

SEEN: list[httpx.Request] = []


def handler(request: httpx.Request) -> httpx.Response:
    SEEN.append(request)
    path = request.url.path
    if path == "/v1/telemetry/services":
        return httpx.Response(
            200,
            json={
                "generated_at": 1.0,
                "window_s": 60,
                "services": [{"service": "api", "rps": 2.5, "new": 1}],
            },
        )
    if path == "/v1/telemetry/edges":
        return httpx.Response(404, json={"error": "Not Found"})
    if path == "/v1/resources" and request.method == "PUT":
        return httpx.Response(200, json={"revision": 9, "changes": [], "dry_run": False})
    if path == "/v1/proxies":
        return httpx.Response(200, json={"proxies": [{"proxy_id": "p", "service": "web"}]})
    if path == "/v1/ca":
        return httpx.Response(200, json={"phase": "stable", "roots": ["junk"]})
    if path == "/v1/proxies/p/drain":
        return httpx.Response(202, json={"proxy_id": "p", "drain_requested": 3.0})
    if path == "/v1/taps":
        return httpx.Response(200, json={"id": "t1", "expires_at": 9.0})
    if path == "/v1/taps/t1/events":
        return httpx.Response(200, json={"events": [], "next": 4, "done": True})
    if path == "/v1/audit":
        return httpx.Response(401, text="no token")
    return httpx.Response(500, text="")


def test_calls_and_answers() -> None:
    async def scenario() -> None:
        source = HttpSource("http://controld/", "tok", transport=httpx.MockTransport(handler))
        services = await source.services(30)
        assert services.services[0].rps == 2.5
        assert SEEN[-1].url.params["window_s"] == "30"
        assert SEEN[-1].headers["authorization"] == "Bearer tok"
        with pytest.raises(SourceRefused) as refused:
            await source.edges(60)
        assert (refused.value.status, refused.value.message) == (404, "Not Found")
        assert await source.proxies() == [ProxyState(proxy_id="p", service="web")]
        assert (await source.apply({"kind": "HTTPRoute"})).revision == 9
        assert json.loads(SEEN[-1].content) == {"resources": [{"kind": "HTTPRoute"}]}
        assert (await source.drain("p")).drain_requested == 3.0
        # An answer without the promised shape is refused with where it is wrong.
        with pytest.raises(SourceRefused, match=r"unexpected answer from controld to /v1/ca: "):
            await source.ca_status()
        created = await source.start_tap(TapRequest(filter=TapFilter(destination="api")))
        assert json.loads(SEEN[-1].content)["filter"]["destination"] == "api"
        events = await source.tap_events(created.id, 0, 1.0)
        assert events.done and events.next == 4
        with pytest.raises(SourceRefused, match="401: no token"):
            await source.audit(10)
        await source.aclose()

    asyncio.run(scenario())


def test_no_answer_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def scenario() -> None:
        source = HttpSource("http://controld", None, transport=httpx.MockTransport(refuse))
        with pytest.raises(SourceUnreachable, match="connection refused"):
            await source.resources()
        await source.aclose()

    asyncio.run(scenario())
