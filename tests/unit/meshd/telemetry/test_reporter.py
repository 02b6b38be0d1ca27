"""The telemetry reporter: a report per call, taps from the answer installed and removed."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from meshd.accesslog import AccessLog
from meshd.context import ProxyShared
from meshd.control.client import ControlClient, ControlResponse, ControlUnavailable
from meshd.stats import Stats
from meshd.telemetry.delta import ClusterFacts, ReportBuilder
from meshd.telemetry.reporter import TelemetryReporter

pytestmark = pytest.mark.timeout(30)

TAP = {"id": "t1", "filter": {}, "max_events_per_s": 5, "remaining_s": 30}


class FakeClient:
    """Answers each POST with the next of ``answers`` (an exception is raised)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.sent: list[tuple[str, Any]] = []

    async def request(self, method: str, path: str, body: bytes | None = None) -> ControlResponse:
        assert method == "POST" and body is not None
        self.sent.append((path, json.loads(body)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return ControlResponse(200, {}, json.dumps(answer).encode())


def installed(shared: ProxyShared) -> object:
    """The tap on the request path (a call: attribute narrowing would confuse mypy)."""
    return shared.tap


def reporter(client: FakeClient | None) -> tuple[TelemetryReporter, ProxyShared, Stats]:
    stats = Stats()
    shared = ProxyShared(stats=stats, access_log=AccessLog(enabled=False, sample_rate=1.0))
    rep = TelemetryReporter(
        builder=ReportBuilder(stats, "web"),
        proxy_id="web/1",
        shared=shared,
        client=lambda: cast(ControlClient, client),
        facts=ClusterFacts,
        cert_not_after=lambda: 123.0,
        ejected=list,
        policy=stats.policy,
    )
    return rep, shared, stats


async def test_reports_and_taps() -> None:
    client = FakeClient([{"taps": [TAP]}, {"taps": []}, ControlUnavailable("down")])
    rep, shared, stats = reporter(client)
    stats.http_request("outbound", "web", "api", "r", "GET", 200, 0.01)
    assert await rep.report_once()
    path, doc = client.sent[0]
    assert path == "/v1/telemetry/web%2F1"
    assert doc["service"] == "web" and doc["cert_not_after"] == 123.0
    assert doc["http"][0]["requests"] == 1
    # The tap is active: the sampler sits on the request path.
    assert installed(shared) is rep.sampler
    assert await rep.report_once()
    assert installed(shared) is None
    assert not await rep.report_once()
    assert stats.policy.value("meshd_telemetry_reports", "sent") == 2
    assert stats.policy.value("meshd_telemetry_reports", "failed") == 1


async def test_no_client_yet() -> None:
    rep, shared, _stats = reporter(None)
    assert not await rep.report_once()
    assert shared.tap is None
